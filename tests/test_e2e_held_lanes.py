"""Dead letters retried by hand keep their conversation's order: a job that ran out of retries
during an outage holds its lane, later messages wait behind it, and a retry delivers all of
them in the order the contact wrote them."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .e2e import World, eventually, serving
from .helpers import ROOT


@pytest.fixture(params=["v4"])
async def short_retries(
    request: pytest.FixtureRequest, tmp_path: Path, unblu_sandbox: Any, aiohttp_server: Any
) -> AsyncIterator[World]:
    async with serving(
        request.param, tmp_path, unblu_sandbox, aiohttp_server, max_attempts=3
    ) as world:
        yield world


async def outbox(world: World, *args: str) -> str:
    """``extmsg outbox ARGS`` as an operator runs it beside the server."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "extmsg",
        "outbox",
        *args,
        "--config",
        str(world.proc.config),
        cwd=ROOT,
        env=world.proc.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_retried_dead_letters_land_in_the_order_the_contact_wrote(
    short_retries: World,
) -> None:
    world = short_retries
    await world.agent("outage", "POST")  # Unblu's REST API answers 503
    for n in (1, 2, 3):
        assert await world.say(f"p{n}", f"message {n}") == 200

    async def held() -> list[dict[str, Any]] | None:
        jobs = json.loads(await outbox(world, "list", "--json"))
        return jobs if any(j["holds_lane"] for j in jobs) else None

    jobs = await eventually(held, timeout=20)
    # The first ran out of its 3 attempts and holds the lane; the others were never tried.
    assert [(j["state"], j["holds_lane"]) for j in jobs] == [
        ("dead", True),
        ("ready", False),
        ("ready", False),
    ]
    assert "lane(s) held by a dead letter" in await outbox(world, "list")

    await world.agent("outage", "DELETE")  # Unblu is back; the contact goes on writing
    for n in (4, 5):
        assert await world.say(f"p{n}", f"message {n}") == 200
    await asyncio.sleep(1.0)
    assert await world.conversations() == []  # nothing jumps the queue

    assert "1 job(s) will run again" in await outbox(world, "retry", "--all-dead")

    async def all_five() -> list[dict[str, Any]] | None:
        convs = await world.conversations()
        if len(convs) == 1:
            msgs = await world.messages(convs[0]["id"])
            return msgs if len(msgs) >= 5 else None
        return None

    msgs = await eventually(all_five, timeout=20)
    assert [m["text"] for m in msgs] == [f"message {n}" for n in range(1, 6)]
    assert await outbox(world, "list") == "no ready or running or dead jobs\n"
