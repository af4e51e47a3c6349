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


async def test_a_new_name_mid_conversation_keeps_the_person_the_agent_started_with(
    world: World,
) -> None:
    """The contact's provider sends a new display name while they write in the conversation
    an agent started: their messages stay those of the person connected through the
    messenger (v3: the person the agent picked; v4: the contact's person), each one lands."""
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
    await eventually(lambda: _sent_to(world, NEWCOMER))
    said = [("n1", "Thanks", "Nora"), ("n2", "Picking it up today", "Nora Newcomer-Smith")]
    for message_id, text, name in said:
        payload = {"id": message_id, "from": NEWCOMER, "text": text, "name": name}
        assert await world.inbound({"messages": [payload]}) == 200

        async def landed(text: str = text) -> list[dict[str, Any]] | None:
            found = [m for m in await world.messages(started["id"]) if m.get("text") == text]
            return found or None

        [answer] = await eventually(landed)
        assert answer["sender"]["personId"] == visitor["personId"], (text, answer["sender"])
        # That person's name is the one it has in Unblu, not the messenger's.
        assert answer["sender"]["displayName"] == "Nora Newcomer"
    assert [c["id"] for c in await world.conversations()] == [started["id"]]
    assert await outbox(world, "list", "--state", "dead") == "no dead jobs\n"


async def test_a_new_name_reaches_the_person_of_a_conversation_the_contact_opened(
    world: World,
) -> None:
    """Where extmsg's own person writes (the contact opened the conversation), a new display
    name from the provider is the name the agent sees from the next message on."""
    contact = "+41790000078"
    said = [("r1", "Hello", "Kim"), ("r2", "Still there?", "Kim Renamed")]
    for message_id, text, name in said:
        payload = {"id": message_id, "from": contact, "text": text, "name": name}
        assert await world.inbound({"messages": [payload]}) == 200

        async def landed(text: str = text) -> dict[str, Any] | None:
            for conv in await world.conversations():
                for m in await world.messages(conv["id"]):
                    if m.get("text") == text:
                        return dict(m)
            return None

        answer = await eventually(landed)
        assert answer["sender"]["displayName"] == name
    assert len(await world.conversations()) == 1


async def _sent_to(world: World, address: str) -> bool:
    return any(s["to"] == address for s in world.provider.sends)
