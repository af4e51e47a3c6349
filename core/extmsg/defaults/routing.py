"""Default routing: the channel's configured engagement type and recipient."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..models import Channel, Contact, InboundMessage, Routing


@hookimpl(trylast=True)
def extmsg_route_conversation(
    channel: Channel, contact: Contact, message: InboundMessage
) -> Routing:
    """No recipient means the conversation waits in the queue for any agent."""
    topic = channel.topic.format(contact=contact.name or contact.address) if channel.topic else None
    return Routing(
        engagement_type=channel.engagement_type, recipient=channel.recipient, topic=topic
    )
