"""An opt-out outlives ``extmsg contacts forget``: over real HTTP, ``extmsg serve`` between the
Unblu sandbox and the loopback messenger. A contact who texted the opt-out word and was then
erased cannot be reached by an agent who starts a new conversation with their address (the
message fails for good, saying why), though the store keeps no trace of the address; when
they text the opt-in word, agents reach them again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from extmsg.testing.helpers import eventually

from .e2e import CUSTOMER, serving
from .test_e2e_forget import forget, rows
from .test_e2e_opt_out import IN_REPLY, OUT_REPLY, SETTINGS, arrived, message, sent


async def test_an_erased_contact_stays_opted_out_until_it_opts_in(
    tmp_path: Path, unblu_sandbox: Any, aiohttp_server: Any
) -> None:
    async with serving(
        "v4", tmp_path, unblu_sandbox, aiohttp_server, channel_settings=SETTINGS
    ) as world:
        store = world.proc.config.parent / "store.sqlite3"
        assert await world.say("p1", "Hello") == 200
        assert await world.say("p2", "STOP") == 200
        await arrived(world, OUT_REPLY)
        [conv] = await world.conversations()
        await world.agent(f"conversations/{conv['id']}/end", "POST")

        async def erased() -> str | None:
            code, out = await forget(world, "loop", CUSTOMER)
            return out if code == 0 else None

        out = await eventually(erased, timeout=20)
        assert f"removed what is stored of {CUSTOMER} on channel loop" in out
        assert "opt-out:            kept" in out
        assert await asyncio.to_thread(rows, store, CUSTOMER) == []
        assert await asyncio.to_thread(rows, store, CUSTOMER.lstrip("+")) == []

        # An agent starts anew with the address (create_contact, create_conversation).
        started = await world.agent(
            "conversations/start", "POST", channelId=world.channel_id, contactIdentifier=CUSTOMER
        )
        await world.agent(f"conversations/{started['id']}/messages", "POST", text="Any news?")
        failed = await message(world, started["id"], "Any news?", "FAILED")
        assert "opted out" in failed["failureText"]
        assert "wrote STOP" in failed["failureText"]
        assert "reply JOIN" in failed["failureText"]
        await asyncio.sleep(0.3)
        assert [s for s in world.provider.sends if "Any news?" in s["text"]] == []

        # The contact opts in again: confirmed, and the agent reaches them.
        assert await world.say("p3", "join") == 200
        await arrived(world, IN_REPLY)
        await world.agent(f"conversations/{started['id']}/messages", "POST", text="Welcome!")
        [delivered] = await arrived(world, "Sandbox Agent: Welcome!")
        assert delivered["to"] == CUSTOMER
        assert len(sent(world, OUT_REPLY)) == 1
