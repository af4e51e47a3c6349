"""Exactly once across crashes: nothing lost, nothing doubled, order kept — with Twilio and Unblu.

``extmsg serve`` runs as a real process between the Unblu sandbox and the Twilio fake. While
5,000 messages flow each way it is killed with SIGKILL at random moments and started again on
the same store. A job cut off mid-call is in doubt when it runs again, and extmsg asks the
remote (Unblu's message log, Twilio's message list) before sending it a second time, so the
counts where messages arrive must be exact.

On PostgreSQL three instances share the work behind a balancer; they are started together
(provisioning the channel once between them), and one of them is frozen (SIGSTOP) for longer
than its leases and then woken: the others take its jobs over, its late completions are
refused, and the acknowledgements keep flowing meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from crash_harness import (
    Balancer,
    Traffic,
    metric_total,
    serve_config,
)

from extmsg.sandbox import run_sandbox
from extmsg.testing.helpers import ServeProcess, free_port
from extmsg_sms_twilio.fake import FakeTwilio

pytestmark = pytest.mark.slow

CONTACTS = 50
PER_CONTACT = 100  # 5,000 messages each way
KILLS = 5


async def test_kill_9_five_times_nothing_lost_nothing_doubled(
    tmp_path: Path, sandbox: Any, twilio: tuple[str, FakeTwilio]
) -> None:
    fake_url, fake = twilio
    rng = random.Random(20261206)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = serve_config(
        tmp_path / "extmsg.toml",
        port=port,
        public=base,
        unblu=sandbox.base_url,
        fake=fake_url,
        store=f'path = "{tmp_path / "store.sqlite3"}"',
    )
    proc = ServeProcess(config)
    proc.start()
    try:
        async with aiohttp.ClientSession() as session:
            await proc.wait_ready(base, limit=30)
            traffic = Traffic(
                inbound_url=f"{base}/channels/sms/inbound",
                sandbox_url=sandbox.url,
                fake=fake,
                session=session,
                contacts=CONTACTS,
                per_contact=PER_CONTACT,
            )
            await traffic.open_conversations()
            flowing = asyncio.get_running_loop().create_task(traffic.everyone())
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(0.5, 2.5))
                proc.kill()
                proc.start()
                await proc.wait_ready(base, limit=30)
            started = time.monotonic()
            await flowing
            result = await traffic.settle()
            elapsed = time.monotonic() - started
    finally:
        proc.kill()
    print(f"\n{KILLS} kill -9 ({elapsed:.1f}s to settle after the last): {result.line()}")
    assert not result.problems(), result.line()


INSTANCES = 3
STARTS = 6
# The sandbox delivers a channel's agent messages one at a time, as in order as Unblu: through a
# balancer to three instances on a 2-core machine that caps how many a test can wait for.
CLUSTER_CONTACTS = 20  # 2,000 messages each way


async def _postgres_dsn() -> str:
    import asyncpg

    dsn = os.environ.get("EXTMSG_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL server at {dsn.rsplit('@', 1)[-1]} ({exc})")
    await conn.close()
    return dsn


class Cluster:
    """Three ``extmsg serve`` on one PostgreSQL schema behind a balancer."""

    def __init__(
        self, tmp: Path, dsn: str, schema: str, unblu: str, fake: str, attempts: int = 200
    ) -> None:
        self.balancer = Balancer([])
        self.procs: list[ServeProcess] = []
        self.bases: list[str] = []
        for n in range(INSTANCES):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            config = serve_config(
                tmp / f"extmsg-{n}.toml",
                port=port,
                public=self.balancer.url,
                unblu=unblu,
                fake=fake,
                store=f'backend = "postgres"\ndsn = "{dsn}?search_path={schema}"',
                attempts=attempts,
            )
            self.procs.append(ServeProcess(config))
            self.bases.append(base)
        self.balancer.backends = list(self.bases)

    async def start(self, *, wait: bool = True) -> None:
        await self.balancer.start()
        for proc in self.procs:
            proc.start()
        if wait:
            await self.ready()

    async def ready(self) -> None:
        await asyncio.gather(
            *(p.wait_ready(b, limit=60) for p, b in zip(self.procs, self.bases, strict=True))
        )

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGCONT)
            proc.kill()
        await self.balancer.close()


@pytest.fixture
async def pg_schema() -> AsyncIterator[tuple[str, str]]:
    import asyncpg

    dsn = await _postgres_dsn()
    names: list[str] = []
    admin = await asyncpg.connect(dsn)

    async def new() -> str:
        name = f"crash_{os.urandom(5).hex()}"
        await admin.execute(f"CREATE SCHEMA {name}")
        names.append(name)
        return name

    try:
        yield dsn, await new()
    finally:
        for name in names:
            await admin.execute(f"DROP SCHEMA {name} CASCADE")
        await admin.close()


async def test_three_instances_start_together_provision_once(
    tmp_path: Path, pg_schema: tuple[str, str], twilio: tuple[str, FakeTwilio]
) -> None:
    """Started at the same moment, again and again: one Unblu channel, no message lost to a
    loser's unreadiness."""
    import asyncpg

    dsn, _ = pg_schema
    fake_url, fake = twilio
    admin = await asyncpg.connect(dsn)
    try:
        for attempt in range(STARTS):
            schema = f"start_{os.urandom(5).hex()}"
            await admin.execute(f"CREATE SCHEMA {schema}")
            sandbox = await run_sandbox(
                "127.0.0.1", 0, delivery_retries=1000, retry_backoff=0.05, retry_backoff_max=0.3
            )
            (tmp_path / str(attempt)).mkdir()
            # Few attempts, as an operator might set: a job failed for the instance's own
            # unreadiness would soon be a dead letter.
            cluster = Cluster(
                tmp_path / str(attempt), dsn, schema, sandbox.base_url, fake_url, attempts=3
            )
            try:
                # Customers write from the first moment: the balancer skips what is not up.
                await cluster.start(wait=False)
                async with aiohttp.ClientSession() as session:
                    traffic = Traffic(
                        inbound_url=f"{cluster.balancer.url}/channels/sms/inbound",
                        sandbox_url=sandbox.url,
                        fake=fake,
                        session=session,
                        contacts=12,
                        per_contact=1,
                    )
                    await traffic.open_conversations()
                    await cluster.ready()
                    async with session.get(f"{sandbox.url}/sandbox/api/channels") as resp:
                        channels = await resp.json()
                listed = channels["channels"] if isinstance(channels, dict) else channels
                assert len(listed) == 1, f"start {attempt}: {len(listed)} channels in Unblu"
                failed = await admin.fetch(
                    f"SELECT state, last_error FROM {schema}.jobs"  # noqa: S608
                    " WHERE state = 'dead' OR last_error LIKE '%not provisioned%'"
                )
                assert not failed, f"start {attempt}: {[tuple(r) for r in failed]}"
            finally:
                await cluster.stop()
                await sandbox.close()
                await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await admin.close()


async def test_three_instances_one_frozen_past_its_leases(
    tmp_path: Path, pg_schema: tuple[str, str], sandbox: Any, twilio: tuple[str, FakeTwilio]
) -> None:
    dsn, schema = pg_schema
    fake_url, fake = twilio
    cluster = Cluster(tmp_path, dsn, schema, sandbox.base_url, fake_url)
    try:
        await cluster.start()
        async with aiohttp.ClientSession() as session:
            traffic = Traffic(
                inbound_url=f"{cluster.balancer.url}/channels/sms/inbound",
                sandbox_url=sandbox.url,
                fake=fake,
                session=session,
                contacts=CLUSTER_CONTACTS,
                per_contact=PER_CONTACT,
            )
            await traffic.open_conversations()
            flowing = asyncio.get_running_loop().create_task(traffic.everyone())
            await asyncio.sleep(2.0)
            frozen = cluster.procs[0]
            assert frozen.proc is not None
            acks_while_frozen: int | None = None
            # A freeze that happens to catch the instance between jobs leaves nothing late to
            # refuse: freeze it again (up to three times) while the traffic flows.
            for _ in range(3):
                frozen.proc.send_signal(signal.SIGSTOP)
                stopped_at = time.monotonic()
                await asyncio.sleep(6.0)  # three leases
                if acks_while_frozen is None:
                    acks_while_frozen = sum(1 for t in traffic.ack_times if t > stopped_at + 1.0)
                frozen.proc.send_signal(signal.SIGCONT)
                await asyncio.sleep(2.0)  # it wakes and tries its late writes
                async with session.get(f"{frozen.admin_url}/metrics") as resp:
                    if metric_total(await resp.text(), "extmsg_fenced_total") > 0:
                        break
            await flowing
            # One at a time through the balancer, the agents' messages take a while on a busy
            # machine: room to arrive, so that only a real loss fails the count.
            result = await traffic.settle(limit=300)
            await asyncio.sleep(1.0)
            async with session.get(f"{cluster.procs[0].admin_url}/metrics") as resp:
                metrics = await resp.text()
            if result.problems():
                print("\n" + await _diagnose(session, sandbox.url, dsn, schema))
    finally:
        await cluster.stop()
    fenced = metric_total(metrics, "extmsg_fenced_total")
    print(
        f"\n{INSTANCES} instances, one frozen 6 s: {result.line()}; "
        f"acks while frozen: {acks_while_frozen}; late writes refused: {fenced:g}"
    )
    assert acks_while_frozen, "acknowledgements stopped while one instance was frozen"
    assert not result.problems(), result.line()
    assert fenced > 0, "the frozen instance's late completions were not refused"


async def _diagnose(session: aiohttp.ClientSession, sandbox_url: str, dsn: str, schema: str) -> str:
    """Where work stopped: the jobs by kind and state, the sandbox's deliveries by state."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        jobs = await conn.fetch(
            "SELECT kind, state, count(*) AS n, max(attempts) AS attempts,"  # noqa: S608
            f" min(last_error) AS error FROM {schema}.jobs GROUP BY kind, state"
        )
    finally:
        await conn.close()
    async with session.get(f"{sandbox_url}/sandbox/api/deliveries") as resp:
        deliveries = await resp.json()
    states = Counter(f"{d.get('name')}: {d.get('state')}" for d in deliveries)
    waiting = [d for d in deliveries if d.get("state") != "delivered"][:2]
    return f"jobs: {[dict(r) for r in jobs]}\ndeliveries: {dict(states)}\nwaiting: {waiting}"
