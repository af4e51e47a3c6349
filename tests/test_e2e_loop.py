"""Loop prevention that does not rely on Unblu's: a contact's message that Unblu hands back to
the channel it came through is never sent to the contact again.

Unblu promises not to deliver a messenger's own messages back to its channel, and the sandbox
keeps that promise unless its echo switch is on. With it on, the echo even arrives before
extmsg learns the message's Unblu id, so only extmsg's own guard stands between the contact
and their words coming back.
"""

from __future__ import annotations

from typing import Any

from .e2e import World, eventually, world

__all__ = ["world"]  # the fixture


async def test_a_contacts_message_echoed_by_unblu_is_not_sent_back(world: World) -> None:
    assert await world.agent("echo", "POST") == {"echo": True}
    assert await world.say("p1", "My card was swallowed") == 200

    async def posted() -> tuple[dict[str, Any], dict[str, Any]] | None:
        convs = await world.conversations()
        msgs = await world.messages(convs[0]["id"]) if convs else []
        return (convs[0], msgs[0]) if msgs else None

    conv, contact_message = await eventually(posted)
    assert contact_message["fromMessenger"] is True

    # The echo really reached extmsg (and was answered), so the guard had something to stop.
    async def echo_delivered() -> list[dict[str, Any]] | None:
        found = [
            d
            for d in await world.agent(f"deliveries?channelId={world.channel_id}")
            if d["messageId"] == contact_message["id"] and d["state"] == "delivered"
        ]
        return found or None

    await eventually(echo_delivered)

    # An agent's reply travels the same lane behind anything the echo could have queued.
    await world.agent(f"conversations/{conv['id']}/messages", "POST", text="Which branch?")

    async def reply_sent() -> list[dict[str, Any]] | None:
        return list(world.provider.sends) if world.provider.sends else None

    await eventually(reply_sent)
    await world.agent("drain", "POST")
    assert [s["text"] for s in world.provider.sends] == ["Sandbox Agent: Which branch?"]
