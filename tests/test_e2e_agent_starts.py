"""An agent starts a conversation with someone who never wrote: the agent's message reaches
them, and their answer lands in that same conversation as theirs (v3 and v4)."""

from __future__ import annotations

from typing import Any

from extmsg.testing.helpers import eventually

from .e2e import World, world
from .test_e2e_held_lanes import outbox

__all__ = ["world"]  # the fixture

NEWCOMER = "+41790000077"


async def test_the_contact_answers_in_the_conversation_the_agent_started(world: World) -> None:
    started = await world.agent(
        "conversations/start",
        "POST",
        channelId=world.channel_id,
        contactIdentifier=NEWCOMER,
        name="Nora Newcomer",
    )
    [visitor] = [p for p in started["participants"] if p["viaMessenger"]]
    await world.agent(
        f"conversations/{started['id']}/messages", "POST", text="Your card has arrived."
    )

    async def sent() -> list[dict[str, Any]] | None:
        return [s for s in world.provider.sends if s["to"] == NEWCOMER] or None

    [first] = await eventually(sent)
    assert "Your card has arrived." in first["text"]

    assert await world.say("n1", "Thanks, I will pick it up", sender=NEWCOMER) == 200

    async def answered() -> list[dict[str, Any]] | None:
        found = [
            m
            for m in await world.messages(started["id"])
            if m.get("text") == "Thanks, I will pick it up"
        ]
        return found or None

    [answer] = await eventually(answered)
    assert answer["sender"]["personId"] == visitor["personId"]
    assert answer["fromMessenger"] is True
    assert [c["id"] for c in await world.conversations()] == [started["id"]]
    assert await outbox(world, "list", "--state", "dead") == "no dead jobs\n"
