"""Downloading inbound MMS media from Twilio.

A ``MediaUrl`` looks like ``https://api.twilio.com/2010-04-01/Accounts/AC…/Messages/MM…/Media/ME…``.
With the account setting "Enforce HTTP Auth on Media URLs" that GET needs the account SID and
auth token; Twilio answers it with a redirect to a short-lived, pre-signed storage URL on another
host, which is fetched without them (the signature in its query is the authorization).

So the credentials go only to the exact origin (scheme, host, port) of the channel's
``api_base_url``, and are dropped at the first redirect away from it. A URL anywhere else is
fetched without credentials. Every hop goes through :func:`extmsg.fetch.fetch`: public addresses
only, a few redirects, ``max_media_bytes`` and a time limit.
"""

from __future__ import annotations

import logging

import msgspec

from extmsg.errors import FetchTooLarge, PermanentError, RetryableError
from extmsg.fetch import fetch, origin_of
from extmsg.models import Attachment, Channel

from .session import USER_AGENT, basic_auth
from .settings import TwilioSettings

__all__ = ["fetch_media", "sends_credentials"]

log = logging.getLogger("extmsg.sms_twilio")


def sends_credentials(url: str, settings: TwilioSettings) -> bool:
    """Whether ``url`` is on the origin of the channel's ``api_base_url`` (scheme, host, port)."""
    return origin_of(url) == origin_of(settings.api_base_url)


def _too_large(attachment: Attachment, limit: int, size: int) -> FetchTooLarge:
    megabytes = limit / (1024 * 1024)
    shown = f"{megabytes:.0f} MB" if megabytes >= 1 else f"{limit // 1024} KB"
    return FetchTooLarge(
        f"The customer's file {attachment.file_name!r} is larger than the {shown} this channel "
        "accepts, so it was not transferred. Ask the customer to send a smaller file.",
        limit=limit,
        size=size,
    )


async def fetch_media(channel: Channel, attachment: Attachment) -> Attachment:
    """``attachment`` with its bytes, read from its Twilio media URL.

    :raises FetchRefused: the URL or a redirect breaks :mod:`extmsg.fetch`'s rules.
    :raises PermanentError: too large, gone (404/410) or access refused.
    :raises RetryableError: 429, 5xx, network trouble or a timeout.
    """
    settings: TwilioSettings = channel.settings
    url = attachment.url
    if not url:
        raise PermanentError(f"The file {attachment.file_name!r} has no download URL.")
    limit = settings.max_media_bytes
    try:
        fetched = await fetch(
            url,
            max_bytes=limit,
            time_limit=max(settings.timeout, 30.0),
            credentials={"Authorization": basic_auth(settings.account_sid, settings.auth_token)},
            credential_origins=[settings.api_base_url],
            allowed_networks=channel.fetch_allowed_networks,
            headers={"User-Agent": USER_AGENT},
        )
    except FetchTooLarge as exc:
        raise _too_large(attachment, limit, exc.size) from None
    status = fetched.status
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
    if not fetched.ok:
        raise PermanentError(
            f"Twilio refused to hand out the customer's file (HTTP {status}). Check the "
            "channel's account SID and auth token.",
            status=status,
        )
    mime = attachment.mime_type
    if mime == "application/octet-stream" and fetched.content_type:
        mime = fetched.content_type
    log.debug("twilio media %s fetched (%d bytes)", attachment.file_name, len(fetched.data))
    return msgspec.structs.replace(attachment, data=fetched.data, mime_type=mime)
