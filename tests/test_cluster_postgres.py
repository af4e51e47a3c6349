"""Several instances on one PostgreSQL database, started together or one of them stalled:
channels are provisioned in Unblu once and no job uses up its attempts on an instance that is
not ready yet; an instance stopped in the middle of a transaction holds the others' intakes
only as long as the server's bound on idle transactions."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from extmsg.app import create_app
from extmsg.config import parse_config
from extmsg.plugins import build_hooks
from extmsg.runtime import RUNTIME
from extmsg.store import postgres as postgres_module
from extmsg.store.base import Intake, NewJob, NewMessage, Store
from extmsg.store.postgres import PostgresStore
from extmsg.testing.helpers import eventually, free_port
from extmsg.unblu.client import UnbluClient

from . import loopback_plugin, pg
from .loopback_fake import signed


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async with pg.fresh_schema() as name:
        yield name


# -- provisioning -----------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def instance(schema: str, sandbox: Any, channel: str) -> AsyncIterator[web.AppRunner]:
    """One ``extmsg serve`` on the shared schema, serving HTTP; few, fast attempts per job,
    so a job that failed for want of its channel would be a dead letter within the test."""
    hooks = build_hooks(entry_points=False, extra=[loopback_plugin], disabled=())
    port = free_port()
    raw = {
        "server": {"port": port, "public_url": f"http://127.0.0.1:{port}"},
        "unblu": {"base_url": sandbox.base_url, "username": "admin", "password": "admin"},
        "engine": {"max_attempts": 2, "backoff_initial": 0.05, "backoff_max": 0.1},
        "channels": [
            {
                "name": channel,
                "messenger": "loopback",
                "webhook_secret": "whsec-123",
                "settings": {"token": "tok"},
            }
        ],
    }
    config = parse_config(raw, hooks.messenger_types())
    runner = web.AppRunner(create_app(config, hooks, store=pg.store_in(schema)))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield runner
    finally:
        await runner.cleanup()


def url_of(runner: web.AppRunner) -> str:
    return runner.app[RUNTIME].config.server.base_url


async def settled(store: Store, n: int) -> dict[str, int] | None:
    """The job counts once ``n`` jobs are done or one is dead."""
    counts = await store.job_counts()
    return counts if counts["dead"] or counts["done"] == n else None


async def ready(session: aiohttp.ClientSession, base: str) -> bool:
    async with session.get(f"{base}/readyz") as resp:
        return resp.status == 200


async def test_instances_started_together_provision_once_and_lose_no_job(
    unblu_sandbox: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="extmsg.runtime")
    # Unblu as seen from a real network: time passes between looking a channel up and
    # creating it, time in which the other instance looks it up as well.
    look_up = UnbluClient.get_channel_by_name

    async def slow_look_up(self: UnbluClient, name: str) -> Any:
        found = await look_up(self, name)
        await asyncio.sleep(0.3)
        return found

    monkeypatch.setattr(UnbluClient, "get_channel_by_name", slow_look_up)
    # The race is a matter of timing: several start-ups, each with a channel new to Unblu.
    for round_ in range(4):
        channel = f"race{round_}"
        async with (
            pg.fresh_schema() as schema,
            contextlib.AsyncExitStack() as stack,
            aiohttp.ClientSession() as session,
        ):
            runners = await asyncio.gather(
                *(stack.enter_async_context(instance(schema, unblu_sandbox, channel)) for _ in "ab")
            )
            # Messages arrive at both at once, before either may have provisioned.
            statuses = []
            for i in range(10):
                body, headers = signed(
                    "tok", {"messages": [{"id": f"{channel}-{i}", "from": "+4179", "text": "hi"}]}
                )
                url = f"{url_of(runners[i % 2])}/channels/{channel}/inbound"
                async with session.post(url, data=body, headers=headers) as resp:
                    statuses.append(resp.status)
            assert statuses == [200] * 10

            store = runners[0].app[RUNTIME].store
            counts = await eventually(functools.partial(settled, store, 10), timeout=20)
            assert counts["dead"] == 0, await store.list_jobs(("dead",))
            for r in runners:
                await eventually(functools.partial(ready, session, url_of(r)))
            named = [
                ch for ch in unblu_sandbox.sandbox.state.channels.values() if ch.name == channel
            ]
            assert len(named) == 1
            ids = {r.app[RUNTIME].unblu_channel_ids[channel] for r in runners}
            assert ids == {named[0].id}
    # Neither ran into the other creating the channel ("name not unique").
    assert "provisioning channels in Unblu failed" not in caplog.text


async def test_the_exclusive_section_is_one_holder_at_a_time(schema: str) -> None:
    stores = [pg.store_in(schema), pg.store_in(schema)]
    for s in stores:
        await s.open()
    inside: list[int] = []
    most = 0

    async def hold(store: PostgresStore) -> None:
        nonlocal most
        async with store.exclusive("provision"):
            inside.append(1)
            most = max(most, len(inside))
            await asyncio.sleep(0.1)
            inside.pop()

    try:
        await asyncio.gather(*(hold(s) for s in stores * 3))
    finally:
        for s in stores:
            await s.close()
    assert most == 1


async def test_a_holder_that_stalls_in_the_section_delays_the_others_only_so_long(
    schema: str,
) -> None:
    stopped, waiting = pg.store_in(schema), PostgresStore(pg.DSN, schema=schema, exclusive_wait=0.5)
    for s in (stopped, waiting):
        await s.open()
    entered = asyncio.Event()

    async def stall() -> None:
        async with stopped.exclusive("provision"):
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(stall())
    try:
        await entered.wait()
        started = time.monotonic()
        async with waiting.exclusive("provision"):
            assert 0.4 < time.monotonic() - started < 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for s in (stopped, waiting):
            await s.close()


# -- a stalled instance -----------------------------------------------------------------------
def retried(n: int = 1) -> list[Intake]:
    """A webhook a provider sends again, to another instance, after the first got no answer."""
    return [
        Intake(
            message=NewMessage(
                id=f"m{n}-{time.monotonic_ns()}",
                channel="sms",
                direction="in",
                thread="+4179",
                provider_message_id=f"SM{n}",
            ),
            job=NewJob(kind="k", lane="sms:+4179", payload=b"{}"),
        )
    ]


@contextlib.asynccontextmanager
async def stalled_intake(store: PostgresStore, *, busy: bool = False) -> AsyncIterator[None]:
    """An instance stopped (SIGSTOP) after writing its intake, before committing it: its rows
    stay uncommitted, and its connection idle in its transaction (``busy``: a statement of it
    still runs instead)."""
    written = asyncio.Event()

    async def intake() -> None:
        async with store._p.acquire() as conn, conn.transaction():
            await postgres_module._intake(conn, retried(), time.time())
            written.set()
            if busy:
                await conn.execute("SELECT pg_sleep(30)")
            await asyncio.sleep(30)

    task = asyncio.create_task(intake())
    try:
        await asyncio.wait_for(written.wait(), 5)
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_stalled_instance_holds_a_healthy_intake_only_within_the_bound(
    schema: str,
) -> None:
    bound = 0.5
    healthy = PostgresStore(pg.DSN, schema=schema, idle_transaction_timeout=bound)
    stopped = PostgresStore(pg.DSN, schema=schema, idle_transaction_timeout=bound)
    for s in (healthy, stopped):
        await s.open()
    try:
        async with stalled_intake(stopped):
            started = time.monotonic()
            # Without the bound this waits as long as the stalled instance stays stopped.
            [result] = await asyncio.wait_for(healthy.intake(retried()), 10)
            waited = time.monotonic() - started
        # The stalled instance's write was rolled back, never acknowledged: this one is the
        # message's first and only copy.
        assert result.accepted
        assert waited < bound + 1.5
        assert (await healthy.job_counts())["ready"] == 1
    finally:
        for s in (healthy, stopped):
            await s.close()


async def test_a_lock_held_by_a_busy_transaction_is_waited_for_only_so_long(
    schema: str,
) -> None:
    healthy = PostgresStore(pg.DSN, schema=schema, lock_timeout=0.5)
    stopped = pg.store_in(schema)
    for s in (healthy, stopped):
        await s.open()
    try:
        async with stalled_intake(stopped, busy=True):
            started = time.monotonic()
            with pytest.raises(asyncpg.LockNotAvailableError):
                await asyncio.wait_for(healthy.intake(retried()), 10)
            assert time.monotonic() - started < 2.5
        assert (await healthy.job_counts())["ready"] == 0  # nothing half-written
    finally:
        for s in (healthy, stopped):
            await s.close()


async def test_the_bounds_are_set_on_every_connection(schema: str) -> None:
    store = pg.store_in(schema)
    await store.open()
    try:
        async with store._p.acquire() as conn:
            idle = await conn.fetchval("SHOW idle_in_transaction_session_timeout")
            lock = await conn.fetchval("SHOW lock_timeout")
    finally:
        await store.close()
    assert (idle, lock) == ("3s", "5s")
