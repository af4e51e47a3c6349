"""``extmsg contacts forget`` beside a running ``extmsg serve`` (SQLite in WAL): a contact who
wrote and was answered is erased from the store the server is using, another contact is not,
and the server goes on serving both — the erased one's next message opens a new
conversation."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .e2e import CUSTOMER, World, at_least, eventually, serving
from .helpers import ROOT

OTHER = "+41790000002"


@pytest.fixture
async def v4(tmp_path: Path, unblu_sandbox: Any, aiohttp_server: Any) -> AsyncIterator[World]:
    async with serving("v4", tmp_path, unblu_sandbox, aiohttp_server) as world:
        yield world


async def forget(world: World, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "extmsg", "contacts", "forget", "-c", str(world.proc.config), *args,
        cwd=ROOT,
        env=world.proc.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def rows(store: Path, needle: str) -> list[str]:
    """Every row of every table of the store that contains ``needle`` (bytes as text)."""
    db = sqlite3.connect(store)
    try:
        found = []
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in db.execute(f"SELECT * FROM {table}"):  # noqa: S608
                text = repr([v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                             for v in row])  # fmt: skip
                if needle in text:
                    found.append(f"{table}: {text}")
        return found
    finally:
        db.close()


async def test_forget_while_the_server_runs(v4: World) -> None:
    world = v4
    store = world.proc.config.parent / "store.sqlite3"
    assert await world.say("c1", "my card number is 4111") == 200
    assert await world.say("o1", "other contact here", sender=OTHER) == 200
    convs = await eventually(lambda: at_least_conversations(world, 2))
    mine = next(c for c in convs if c["sourceId"] == CUSTOMER)
    await world.agent(f"conversations/{mine['id']}/messages", "POST", text="Thanks, noted")
    await eventually(lambda: at_least(world.provider.sends, 1))

    async def settled() -> bool | None:  # nothing of the contact still to run
        code, out = await forget(world, "loop", CUSTOMER, "--dry-run")
        return True if code == 0 and "still to run" not in out and "running" not in out else None

    await eventually(settled, timeout=20)
    assert await asyncio.to_thread(rows, store, "4111")  # the text is in the store
    code, out = await forget(world, "loop", CUSTOMER)
    assert code == 0, out
    assert f"removed what is stored of {CUSTOMER} on channel loop" in out
    assert mine["id"] in out  # the Unblu ids to erase there too

    for needle in (CUSTOMER, "4111", "Thanks, noted", mine["id"]):
        assert await asyncio.to_thread(rows, store, needle) == [], needle
    assert await asyncio.to_thread(rows, store, OTHER)
    assert await asyncio.to_thread(rows, store, "other contact here")

    # The server goes on: both contacts write again and reach Unblu.
    assert await world.say("c2", "hello again") == 200
    assert await world.say("o2", "me too", sender=OTHER) == 200

    async def arrived() -> list[str] | None:
        texts = []
        for conv in await world.conversations():
            texts += [m["text"] for m in await world.messages(conv["id"])]
        return texts if {"hello again", "me too"} <= set(texts) else None

    await eventually(arrived, timeout=20)


async def at_least_conversations(world: World, n: int) -> list[dict[str, Any]] | None:
    return await at_least(await world.conversations(), n)
