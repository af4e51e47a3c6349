"""A second test messenger, written as a :class:`~extmsg.messenger.Messenger` unit.

Its webhook route is called ``inbound``, like the loopback plugin's: both messengers are served
side by side. It acknowledges with a body of its own, so a test can tell which plugin answered,
and logs the URL it would register with its provider once the server listens.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import msgspec

from extmsg.constant_time import equal
from extmsg.errors import BadInbound, SignatureError
from extmsg.messenger import Messenger, MessengerContext
from extmsg.models import (
    Channel,
    Contact,
    HttpReply,
    InboundEvent,
    InboundMessage,
    InboundRequest,
    OutboundMessage,
    Route,
    RouteUrls,
    Secret,
    SendResult,
)

log = logging.getLogger("extmsg.relay")

ACK = b"relay: stored"


class RelaySettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    token: Secret


class Relay(Messenger):
    name = "relay"
    settings = RelaySettings
    routes = (Route(name="inbound", path="inbound"),)

    def __init__(self) -> None:
        self.sent: list[tuple[str, OutboundMessage]] = []

    def verify_inbound(self, request: InboundRequest, channels: Sequence[Channel]) -> bool:
        given = request.header("x-relay-token") or ""
        if any(equal(given, ch.settings.token) for ch in channels):
            return True
        raise SignatureError("x-relay-token does not match")

    def parse_inbound(
        self, request: InboundRequest, channels: Sequence[Channel]
    ) -> list[InboundEvent]:
        try:
            item = json.loads(request.body)
            return [
                InboundMessage(
                    provider_message_id=item["id"],
                    contact=Contact(address=item["from"]),
                    text=item.get("text"),
                )
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise BadInbound(f"not a relay message: {exc}") from None

    def render_ack(self, request: InboundRequest, events: Sequence[InboundEvent]) -> HttpReply:
        return HttpReply(body=ACK, content_type="text/plain")

    async def send(self, channel: Channel, message: OutboundMessage) -> SendResult:
        self.sent.append((channel.name, message))
        return SendResult(provider_message_id=f"relay-{len(self.sent)}")

    async def listening(self, ctx: MessengerContext, urls: RouteUrls) -> None:
        for channel, routes in urls.channels.items():  # only the relay's own channels
            log.info("relay webhook of %s: %s", channel, routes["inbound"])
