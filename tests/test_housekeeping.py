"""The running server keeps its store lean: finished jobs and expired media go away."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from extmsg.app import create_app
from extmsg.config import parse_config
from extmsg.plugins import build_hooks
from extmsg.store.base import PURGED_PREFIX, Intake, MediaRow, NewJob, purged_payload
from extmsg.store.sqlite import SqliteStore

from . import loopback_plugin


async def test_finished_jobs_and_expired_media_are_purged(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    path = tmp_path / "store.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.intake([Intake(job=NewJob(kind="k", lane=lane, payload=b"{}")) for lane in "ab"])
    [first, second] = await store.claim_jobs(10, 60)
    await store.complete_job(first.id)
    await store.bury_job(second.id, "a dead letter stays")
    now = time.time()
    for media_id, expires in (("gone", now - 1), ("kept", now + 3600)):
        await store.put_media(
            MediaRow(id=media_id, channel="loop", file_name="f", mime_type="text/plain",
                     data=b"x", expires_at=expires)
        )  # fmt: skip
    await store.close()

    hooks = build_hooks(entry_points=False, extra=[loopback_plugin], disabled=())
    config = parse_config(
        {"store": {"path": str(path)}, "engine": {"keep_done_hours": 0}},
        hooks.messenger_types(),
    )
    await aiohttp_client(create_app(config, hooks))
    check = SqliteStore(path)
    await check.open()
    try:
        for _ in range(100):
            if not await check.list_jobs(("done",)):
                break
            await asyncio.sleep(0.02)
        assert await check.list_jobs(("done",)) == []
        [dead] = await check.list_jobs(("ready", "running", "dead"))
        assert dead.id == second.id
        assert await check.get_media("kept") is not None
        assert await check.purge_media(now) == 0  # "gone" was purged already
    finally:
        await check.close()


async def test_retention_empties_finished_payloads_and_keeps_the_jobs(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    path = tmp_path / "store.sqlite3"
    store = SqliteStore(path)
    await store.open()
    text = b'{"kind":"to_unblu.message","channel":"loop","text":"my account number is 42"}'
    lanes = ("loop/+41790000001", "loop/+41790000002")
    await store.intake([Intake(job=NewJob(kind="k", lane=lane, payload=text)) for lane in lanes])
    [first, second] = await store.claim_jobs(10, 60)
    await store.bury_job(first.id, "a dead letter")
    await store.close()
    await asyncio.sleep(0.2)  # older than the retention below

    hooks = build_hooks(entry_points=False, extra=[loopback_plugin], disabled=())
    config = parse_config(
        {"store": {"path": str(path), "retention_days": 0.1 / 86400}}, hooks.messenger_types()
    )
    await aiohttp_client(create_app(config, hooks))
    check = SqliteStore(path)
    await check.open()
    try:
        for _ in range(100):
            dead = await check.get_job(first.id)
            if dead is not None and dead.payload.startswith(PURGED_PREFIX):
                break
            await asyncio.sleep(0.02)
        assert dead is not None
        assert dead.state == "dead"
        assert b"account number" not in dead.payload
        assert dead.payload == purged_payload("loop", "retention")
        unfinished = await check.get_job(second.id)  # released at shutdown, or still ready
        assert unfinished is not None
        assert unfinished.payload == text
    finally:
        await check.close()
