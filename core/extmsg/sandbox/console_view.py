"""What the console shows, as entities under stable keys (see :mod:`extmsg.sandbox.live`)."""

from __future__ import annotations

import asyncio
from typing import Any

from .agent_api import conversation_view, delivery_view, message_view, outage_view
from .live import DELIVERIES_SHOWN
from .service import Sandbox

__all__ = ["CONVERSATIONS_SHOWN", "console_entities"]

#: Conversations the console lists (the newest ones), so that a sandbox under load stays cheap
#: to watch.
CONVERSATIONS_SHOWN = 200


async def console_entities(sandbox: Sandbox) -> dict[str, Any]:
    out: dict[str, Any] = {"outage": outage_view(sandbox)}
    state = sandbox.state
    by_name = {ch.name: ch for ch in state.channels.values()}
    for ch in state.channels.values():
        side = sandbox.customers.sides.get(ch.name)
        out[f"channel/{ch.id}"] = {
            "id": ch.id,
            "name": ch.name,
            "messenger": ch.metadata.get("extmsg.messenger") or (side.messenger if side else None),
            "webhookApiVersion": ch.webhook_api_version,
            "outboundSupported": ch.outbound_supported,
            "contactIdentifierFieldName": ch.contact_identifier_field_name,
            "customerSide": side is not None,
        }
    newest = sorted(state.conversations.values(), key=lambda c: c.creation_timestamp)
    for c in newest[-CONVERSATIONS_SHOWN:]:
        view = conversation_view(sandbox, c)
        messages = sandbox.messages_of(c)
        visible = [m for m in messages if not m.internal]
        last = visible[-1] if visible else None
        view["lastText"] = (
            (
                last.text
                if last.type == "TEXT"
                else (last.file.caption or last.file.name if last.file else None)
            )
            if last
            else None
        )
        out[f"conversation/{c.id}"] = view
        for m in messages:
            out[f"message/{m.id}"] = message_view(sandbox, m)
    for d in sandbox.deliverer.records[-DELIVERIES_SHOWN:]:
        out[f"delivery/{d.id}"] = delivery_view(d)
    sides = list(sandbox.customers.sides.values())
    threads = await asyncio.gather(*(sandbox.customers.thread(s.channel) for s in sides))
    for side, thread in zip(sides, threads, strict=True):
        known = by_name.get(side.channel)
        meta: dict[str, Any] = {**side.view(), "channelId": known.id if known else None}
        entries: list[dict[str, Any]] = []
        if thread is not None:
            entries = [e for e in thread.get("entries") or [] if isinstance(e, dict)]
            meta.update({k: v for k, v in thread.items() if k not in ("entries", "messenger")})
            meta["thread"] = True
        else:
            meta["thread"] = False
        out[f"customer/{side.channel}"] = meta
        for e in entries:
            out[f"entry/{side.channel}/{e.get('id')}"] = {**e, "channel": side.channel}
    return out
