"""The webhook's GET verification: Meta proves it knows a verify token, we echo its challenge.

``GET …?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…`` is answered with the raw
challenge (200, text/plain) when the token is one of the channels' verify tokens, else 403.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from extmsg.constant_time import equal
from extmsg.models import Channel, HttpReply, InboundRequest

from .settings import WhatsAppSettings

__all__ = ["handle_verification"]

log = logging.getLogger("extmsg.whatsapp")


def _token_matches(token: str, channels: Sequence[Channel]) -> bool:
    found = False
    for channel in channels:
        settings = channel.settings
        if isinstance(settings, WhatsAppSettings) and settings.verify_token:
            # every token is compared, so the timing does not tell which one matched
            found |= equal(token, settings.verify_token)
    return found


async def handle_verification(request: InboundRequest, channels: Sequence[Channel]) -> HttpReply:
    """The answer to Meta's subscription handshake."""
    mode = request.query_value("hub.mode")
    token = request.query_value("hub.verify_token")
    challenge = request.query_value("hub.challenge")
    if mode != "subscribe" or not token or not _token_matches(token, channels):
        log.warning("whatsapp: refused a webhook verification (wrong mode or verify token)")
        return HttpReply(status=403, body=b"forbidden")
    if not challenge:
        return HttpReply(status=400, body=b"missing hub.challenge")
    log.info("whatsapp: answered Meta's webhook verification")
    return HttpReply(status=200, body=challenge.encode("utf-8"), content_type="text/plain")
