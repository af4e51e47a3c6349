"""``X-Hub-Signature-256``: Meta signs each webhook body with the app secret.

The value is ``sha256=`` followed by the hex HMAC-SHA256 of the raw body (never re-encoded
JSON: Meta escapes non-ASCII characters, a re-serialisation would not match). Several apps may
share the webhook route, so a request is matched against every distinct app secret and the
channels of the app that signed it are the only ones its events may speak for.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from extmsg.errors import SignatureError
from extmsg.models import Channel, InboundRequest

from .settings import WhatsAppSettings

__all__ = ["HEADER", "matching_channels", "sign", "verify"]

HEADER = "x-hub-signature-256"
_PREFIX = "sha256="


def sign(body: bytes, app_secret: str) -> str:
    """The header value Meta sends for ``body``."""
    digest = hmac.new(app_secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return _PREFIX + digest


def _received_digest(request: InboundRequest) -> bytes | None:
    value = (request.header(HEADER) or "").strip()
    if not value.lower().startswith(_PREFIX):
        return None
    digest = value[len(_PREFIX) :].strip().lower()
    if len(digest) != 64:
        return None
    return digest.encode("ascii", "replace")


def matching_channels(request: InboundRequest, channels: Sequence[Channel]) -> list[Channel]:
    """The channels whose app secret produced the request's signature (each secret hashed once)."""
    received = _received_digest(request)
    if received is None:
        return []
    verdicts: dict[str, bool] = {}
    matched: list[Channel] = []
    for channel in channels:
        settings = channel.settings
        if not isinstance(settings, WhatsAppSettings) or not settings.app_secret:
            continue
        secret = settings.app_secret
        if secret not in verdicts:
            expected = sign(request.body, secret)[len(_PREFIX) :].encode("ascii")
            verdicts[secret] = hmac.compare_digest(expected, received)
        if verdicts[secret]:
            matched.append(channel)
    return matched


def verify(request: InboundRequest, channels: Sequence[Channel]) -> bool:
    """``True`` when some channel's app secret signed the request; else :class:`SignatureError`."""
    if not request.header(HEADER):
        raise SignatureError("missing X-Hub-Signature-256 header")
    if _received_digest(request) is None:
        raise SignatureError("malformed X-Hub-Signature-256 header")
    if not matching_channels(request, channels):
        raise SignatureError("X-Hub-Signature-256 does not match any WhatsApp app secret")
    return True
