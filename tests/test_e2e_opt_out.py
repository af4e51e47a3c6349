"""Opt-out keywords are the core's, for every messenger: over real HTTP with the loopback
messenger (which has no keywords of its own), configured as channel settings.

A contact who writes the opt-out word gets the confirmation once, no agent reply and no ended
text until they write the opt-in word; the agent sees why a reply failed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from extmsg.testing.helpers import eventually

from .e2e import World, serving

OUT_REPLY = "You are unsubscribed. Reply JOIN to subscribe again."
IN_REPLY = "Welcome back."
ENDED = "Goodbye from support."
SETTINGS = f"""
opt_out_keywords = ["stop", "Unsubscribe"]
opt_in_keywords = ["join"]
opt_out_reply = "{OUT_REPLY}"
opt_in_reply = "{IN_REPLY}"
ended_text = "{ENDED}"
"""


def sent(world: World, text: str) -> list[dict[str, Any]]:
    return [s for s in world.provider.sends if s["text"] == text]


async def arrived(world: World, text: str) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        return sent(world, text) or None

    found: list[dict[str, Any]] = await eventually(check)
    return found


async def message(world: World, conv_id: str, text: str, state: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        return next(
            (m for m in await world.messages(conv_id) if m["text"] == text and m["state"] == state),
            None,
        )

    found: dict[str, Any] = await eventually(check)
    return found


async def test_keywords_set_per_channel_apply_to_any_messenger(
    tmp_path: Path, unblu_sandbox: Any, aiohttp_server: Any
) -> None:
    async with serving(
        "v4", tmp_path, unblu_sandbox, aiohttp_server, channel_settings=SETTINGS
    ) as world:
        assert await world.say("p1", "Hello") == 200

        async def conversation() -> dict[str, Any] | None:
            convs = await world.conversations()
            return convs[0] if convs and convs[0]["messageCount"] >= 1 else None

        conv = await eventually(conversation)

        # "Stop" (any case) opts out; the confirmation goes out once, even when the
        # provider delivers the webhook again.
        assert await world.say("p2", " Stop ") == 200
        assert await world.say("p2", " Stop ") == 200
        [confirmation] = await arrived(world, OUT_REPLY)
        assert confirmation["to"] == "+41790000001"
        await message(world, conv["id"], " Stop ", "SENT")  # the agent sees it

        await world.agent(f"conversations/{conv['id']}/messages", "POST", text="Still there?")
        failed = await message(world, conv["id"], "Still there?", "FAILED")
        assert "wrote STOP" in failed["failureText"]
        assert "reply JOIN" in failed["failureText"]

        await world.agent(f"conversations/{conv['id']}/end", "POST")
        await asyncio.sleep(0.5)
        assert sent(world, ENDED) == []  # opted out: no ended text either
        assert len(sent(world, OUT_REPLY)) == 1

        # "JOIN" opts back in: confirmed, and agent replies reach the contact again.
        assert await world.say("p3", "join") == 200
        await arrived(world, IN_REPLY)

        async def fresh() -> dict[str, Any] | None:
            convs = [c for c in await world.conversations() if c["id"] != conv["id"]]
            return convs[0] if convs and convs[0]["messageCount"] >= 1 else None

        second = await eventually(fresh)
        await world.agent(f"conversations/{second['id']}/messages", "POST", text="Hi again")
        await arrived(world, "Sandbox Agent: Hi again")
        assert [s["text"] for s in world.provider.sends] == [
            OUT_REPLY,
            IN_REPLY,
            "Sandbox Agent: Hi again",
        ]
