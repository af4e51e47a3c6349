"""Channel provisioning: each configured channel exists in Unblu as a custom channel.

Idempotent by name, so ``serve`` can run it at every start and ``extmsg channels sync`` by
hand. The Unblu channel id is kept in the store.

A channel with an ``ended_text`` also gets a webhook registration in Unblu (``WebhookRegistration``
via ``/webhookregistrations/create|update``, idempotent by name like the channel): Unblu POSTs
``conversation.ended`` to the channel's own endpoint, signed with the channel's webhook secret,
so the event is checked like every other call to it. Without an ``ended_text`` a registration
left from before is deleted.

Once per cluster: instances sharing a store provision in turn (:meth:`Store.exclusive`), so
two started together never both create a channel (Unblu refuses the second: "name not
unique"); the later one finds the channel by name, unchanged, and takes its id.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..models import Channel
from ..store.base import ChannelRow
from .calls import EVENT_CONVERSATION_ENDED
from .client import ChannelSpec, WebhookSpec

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = [
    "channel_spec",
    "ended_webhook_name",
    "ended_webhook_spec",
    "endpoint_url",
    "load_channel_ids",
    "provision_channels",
]

log = logging.getLogger("extmsg.unblu")


def endpoint_url(channel: Channel) -> str:
    """Where Unblu calls this channel: ``{public_url}/unblu/{channel}``."""
    return f"{channel.public_url.rstrip('/')}/unblu/{channel.name}"


def channel_spec(runtime: Runtime, channel: Channel) -> ChannelSpec:
    mtype = runtime.messengers[channel.messenger]
    return ChannelSpec(
        name=channel.name,
        description=f"extmsg {mtype.description or channel.messenger}".strip(),
        webhook_endpoint=endpoint_url(channel),
        webhook_secret=channel.webhook_secret,
        message_state_handled_externally=True,
        outbound_supported=True,
        outbound_timeout_millis=runtime.config.unblu.outbound_timeout_millis,
        contact_identifier_field_name=mtype.contact_identifier_name,
        contact_identifier_field_type=mtype.contact_identifier_type,
        metadata={"extmsg.messenger": channel.messenger},
    )


def ended_webhook_name(channel: Channel) -> str:
    """The name of the channel's ``conversation.ended`` registration (unique like the
    channel's own name)."""
    return f"{channel.name} {EVENT_CONVERSATION_ENDED}"


def ended_webhook_spec(channel: Channel) -> WebhookSpec:
    return WebhookSpec(
        name=ended_webhook_name(channel),
        endpoint=endpoint_url(channel),
        events=(EVENT_CONVERSATION_ENDED,),
        secret=channel.webhook_secret,
        description=f"extmsg: tells the customers of channel {channel.name} that their "
        "conversation ended",
    )


async def load_channel_ids(runtime: Runtime) -> None:
    """Take the Unblu ids the store holds for the configured channels (provisioned earlier,
    or by another instance)."""
    for row in await runtime.store.list_channels():
        if row.unblu_channel_id and row.name in runtime.channels:
            runtime.unblu_channel_ids[row.name] = row.unblu_channel_id


async def provision_channels(runtime: Runtime) -> dict[str, str]:
    """Create or update every configured channel in Unblu; return name → Unblu id."""
    runtime.unblu_client()  # no Unblu server configured: say so before waiting for the turn
    done: dict[str, str] = {}
    async with runtime.store.exclusive("provision"):
        # What an instance that held the section before us stored is usable right away.
        await load_channel_ids(runtime)
        for channel in runtime.channels.values():
            done[channel.name] = await _provision(runtime, channel)
        # After every channel: a registration Unblu refuses holds back no channel's traffic.
        for channel in runtime.channels.values():
            await _sync_ended_webhook(runtime, channel)
    return done


async def _provision(runtime: Runtime, channel: Channel) -> str:
    remote = await runtime.unblu_client().provision_channel(channel_spec(runtime, channel))
    await runtime.store.upsert_channel(
        ChannelRow(
            name=channel.name,
            messenger=channel.messenger,
            unblu_channel_id=remote.id,
            webhook_status=remote.webhook_status,
            provisioned_at=time.time(),
        )
    )
    runtime.unblu_channel_ids[channel.name] = remote.id
    log.info("channel %s is Unblu channel %s", channel.name, remote.id)
    return remote.id


async def _sync_ended_webhook(runtime: Runtime, channel: Channel) -> None:
    client = runtime.unblu_client()
    if channel.ended_text:
        registration = await client.provision_webhook(ended_webhook_spec(channel))
        runtime.ended_webhook_ids[channel.name] = registration.id
        log.info(
            "channel %s hears of ended conversations (webhook registration %s)",
            channel.name,
            registration.id,
        )
    else:
        runtime.ended_webhook_ids.pop(channel.name, None)
        await client.remove_webhook(ended_webhook_name(channel))
