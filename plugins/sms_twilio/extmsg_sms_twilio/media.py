"""Downloading inbound MMS media from Twilio.

Twilio's media URLs answer with a redirect to a short-lived storage URL; with HTTP Basic auth
on (the account's setting "Enforce HTTP Auth on Media URLs") the first request needs the
account SID and auth token. The credentials go only to Twilio's own hosts (aiohttp drops them
on a redirect to another host), so a forged URL cannot collect them.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import aiohttp
import msgspec

from extmsg.errors import PermanentError, RetryableError
from extmsg.models import Attachment, Channel

from .session import basic_auth
from .settings import TwilioSettings

__all__ = ["fetch_media", "sends_credentials"]

log = logging.getLogger("extmsg.sms_twilio")

_CHUNK = 64 * 1024


def sends_credentials(url: str, settings: TwilioSettings) -> bool:
    """Whether ``url`` is on Twilio's API host (or the configured one, e.g. a fake)."""
    host = (urlsplit(url).hostname or "").lower()
    api_host = (urlsplit(settings.api_base_url).hostname or "").lower()
    return host == api_host or host == "twilio.com" or host.endswith(".twilio.com")


def _too_large(attachment: Attachment, limit: int) -> PermanentError:
    megabytes = limit / (1024 * 1024)
    size = f"{megabytes:.0f} MB" if megabytes >= 1 else f"{limit // 1024} KB"
    return PermanentError(
        f"The customer's file {attachment.file_name!r} is larger than the {size} this channel "
        "accepts, so it was not transferred. Ask the customer to send a smaller file."
    )


async def fetch_media(
    session: aiohttp.ClientSession, channel: Channel, attachment: Attachment
) -> Attachment:
    """``attachment`` with its bytes, read from its Twilio media URL.

    :raises PermanentError: too large, gone (404/410) or access refused.
    :raises RetryableError: 429, 5xx, network trouble or a timeout.
    """
    settings: TwilioSettings = channel.settings
    url = attachment.url
    if not url:
        raise PermanentError(f"The file {attachment.file_name!r} has no download URL.")
    headers = (
        {"Authorization": basic_auth(settings.account_sid, settings.auth_token)}
        if sends_credentials(url, settings)
        else {}
    )
    limit = settings.max_media_bytes
    try:
        async with session.get(
            url,
            headers=headers,
            allow_redirects=True,
            timeout=aiohttp.ClientTimeout(total=max(settings.timeout, 30.0)),
        ) as response:
            status = response.status
            if status == 429 or status >= 500:
                raise RetryableError(
                    f"Twilio could not serve the customer's file right now (HTTP {status}); "
                    "it will be retried.",
                    status=status,
                )
            if status in (404, 410):
                raise PermanentError(
                    f"The customer's file {attachment.file_name!r} is no longer available at "
                    "Twilio (it may have been deleted).",
                    status=status,
                )
            if status >= 400:
                raise PermanentError(
                    f"Twilio refused to hand out the customer's file (HTTP {status}). Check the "
                    "channel's account SID and auth token.",
                    status=status,
                )
            if response.content_length is not None and response.content_length > limit:
                raise _too_large(attachment, limit)
            data = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK):
                data.extend(chunk)
                if len(data) > limit:
                    raise _too_large(attachment, limit)
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise RetryableError(
            f"Could not download the customer's file from Twilio ({type(exc).__name__}); it "
            "will be retried."
        ) from exc
    mime = attachment.mime_type
    if mime == "application/octet-stream" and content_type:
        mime = content_type
    log.debug("twilio media %s fetched (%d bytes)", attachment.file_name, len(data))
    return msgspec.structs.replace(attachment, data=bytes(data), mime_type=mime)
