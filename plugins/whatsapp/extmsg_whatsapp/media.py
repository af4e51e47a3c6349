"""Which WhatsApp media type a file travels as, and how big it may be.

WhatsApp shows JPEG/PNG as images, MP4/3GPP as videos and a handful of audio formats as voice
or audio; anything else goes as a document, which any file type may be. The limits are Meta's
per-type maximums; a larger file fails before it is uploaded, with a reason the agent can read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from extmsg.errors import FetchTooLarge, PermanentError
from extmsg.fetch import origin_of

from .content import base_mime
from .settings import WhatsAppSettings

__all__ = [
    "CAPTION_TYPES",
    "MAX_BYTES",
    "MediaKind",
    "check_outbound_size",
    "may_carry_token",
    "outbound_kind",
    "too_large_inbound",
]

MediaKind = Literal["image", "video", "audio", "document", "sticker"]

_IMAGE = frozenset({"image/jpeg", "image/png"})
_VIDEO = frozenset({"video/mp4", "video/3gpp"})
_AUDIO = frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"})

MAX_BYTES: Mapping[str, int] = {
    "image": 5 * 1024 * 1024,
    "video": 16 * 1024 * 1024,
    "audio": 16 * 1024 * 1024,
    "document": 100 * 1024 * 1024,
    "sticker": 500 * 1024,
}
#: Media types that carry a caption (audio and stickers do not).
CAPTION_TYPES = frozenset({"image", "video", "document"})


def outbound_kind(mime_type: str | None) -> MediaKind:
    mime = base_mime(mime_type)
    if mime in _IMAGE:
        return "image"
    if mime in _VIDEO:
        return "video"
    if mime in _AUDIO:
        return "audio"
    return "document"


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def check_outbound_size(kind: str, size: int) -> None:
    limit = MAX_BYTES[kind]
    if size > limit:
        raise PermanentError(
            f"The file is too large for WhatsApp ({_megabytes(size)}; a {kind} may have at "
            f"most {_megabytes(limit)})."
        )


def too_large_inbound(size: int, limit: int) -> FetchTooLarge:
    return FetchTooLarge(
        f"The contact's file is too large to pass on ({_megabytes(size)}; this channel "
        f"accepts at most {_megabytes(limit)}).",
        limit=limit,
        size=size,
    )


def may_carry_token(url: str, settings: WhatsAppSettings) -> bool:
    """Whether a media URL's origin (scheme, host and port, exactly) may receive the channel's
    access token: the API's or one of ``media_base_urls``."""
    target = origin_of(url)
    return any(
        target == origin_of(base) for base in (settings.api_base_url, *settings.media_base_urls)
    )
