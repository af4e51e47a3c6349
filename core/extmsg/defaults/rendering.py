"""Default rendering: the sender prefix outbound, an empty 200 as acknowledgement."""

from __future__ import annotations

from collections.abc import Sequence

from ..hookspecs import hookimpl
from ..models import Channel, HttpReply, InboundEvent, InboundRequest, OutboundMessage
from ..rendering import prefix_text


@hookimpl(trylast=True)
def extmsg_render_outbound(channel: Channel, message: OutboundMessage) -> list[OutboundMessage]:
    """One message, ``"{sender}: "`` (the channel's template) in front."""
    return [prefix_text(channel, message)]


@hookimpl(trylast=True)
def extmsg_render_ack(
    messenger: str, request: InboundRequest, events: Sequence[InboundEvent]
) -> HttpReply:
    """An empty ``200 OK``: what most providers expect."""
    return HttpReply()
