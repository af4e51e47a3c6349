"""A messenger that is not Twilio and also calls its webhook route ``inbound``: served beside
Twilio in ``test_twilio_beside.py``. Written as a unit, the way a third party would."""

from __future__ import annotations

import json
from collections.abc import Sequence

import msgspec

from extmsg.constant_time import equal
from extmsg.errors import SignatureError
from extmsg.messenger import Messenger
from extmsg.models import (
    Channel,
    Contact,
    HttpReply,
    InboundEvent,
    InboundMessage,
    InboundRequest,
    Route,
    Secret,
)

ACK = b"neighbour: stored"


class NeighbourSettings(msgspec.Struct, kw_only=True, frozen=True):
    token: Secret


class Neighbour(Messenger):
    name = "neighbour"
    settings = NeighbourSettings
    routes = (Route(name="inbound", path="inbound"),)

    def verify_inbound(self, request: InboundRequest, channels: Sequence[Channel]) -> bool:
        if any(equal(request.header("x-token") or "", ch.settings.token) for ch in channels):
            return True
        raise SignatureError("x-token does not match")

    def parse_inbound(
        self, request: InboundRequest, channels: Sequence[Channel]
    ) -> list[InboundEvent]:
        item = json.loads(request.body)
        contact = Contact(address=item["from"])
        return [InboundMessage(provider_message_id=item["id"], contact=contact, text=item["text"])]

    def render_ack(self, request: InboundRequest, events: Sequence[InboundEvent]) -> HttpReply:
        return HttpReply(body=ACK, content_type="text/plain")
