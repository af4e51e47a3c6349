"""A send held, then frozen past its lease, does not go out after another instance sent it.

Two ``extmsg serve`` share a PostgreSQL schema. The first stops itself (SIGSTOP) right after
``Engine.hold`` for a message's send — before the request is written. Its lease runs out,
the second instance claims the job in doubt, looks (Unblu's message log, Twilio's Messages
list), finds nothing and sends. Then the first is woken: the request it was about to write is
refused, as its hold is older than half a lease, so the message arrives once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from crash_harness import running_sandbox, serve_config
from twilio_testkit import ACCOUNT_SID, FROM_NUMBER

from extmsg.testing.helpers import ServeProcess, free_port
from extmsg.testing.tally import (
    agent_writes,
    inbound_by_contact,
    metric_total,
    sandbox_conversations,
    sandbox_drain,
)
from extmsg_sms_twilio.fake import FakeTwilio, inbound_params

pytestmark = pytest.mark.slow

LEASE = 1.0
CONTACT = "+41790000042"
WRAPPER = Path(__file__).with_name("freeze_after_hold.py")


class FreezingServe(ServeProcess):
    """``extmsg serve`` that stops itself right after its first hold of the given job kind."""

    def start(self) -> None:
        self.started_at = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(WRAPPER), "serve", "--config", str(self.config), *self.args],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stopped(self) -> bool:
        assert self.proc is not None
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] == "T"


async def _until(what: str, ready: Callable[[], Awaitable[bool]], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not await ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {limit:g}s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    import asyncpg

    dsn = os.environ.get("EXTMSG_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        admin = await asyncpg.connect(dsn, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL server at {dsn.rsplit('@', 1)[-1]} ({exc})")
    schema = f"stale_{os.urandom(5).hex()}"
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{dsn}?search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


@pytest.fixture
async def sandbox() -> AsyncIterator[Any]:
    """The sandbox with its default delivery retries (conftest's retries until delivered)."""
    async with running_sandbox() as server:
        yield server


@pytest.mark.parametrize("kind", ["to_unblu.message", "to_messenger.message"])
async def test_a_send_frozen_after_its_hold_goes_out_once(
    kind: str, tmp_path: Path, pg_dsn: str, sandbox: Any, twilio: tuple[str, FakeTwilio]
) -> None:
    fake_url, fake = twilio
    servers: list[ServeProcess] = []
    bases: list[str] = []
    for n in range(2):
        port = free_port()
        bases.append(f"http://127.0.0.1:{port}")
        config = serve_config(
            tmp_path / f"extmsg-{n}.toml",
            port=port,
            public=bases[0],
            unblu=sandbox.base_url,
            fake=fake_url,
            store=f'backend = "postgres"\ndsn = "{pg_dsn}"',
            workers=2,
            lease=LEASE,
        )
        servers.append(
            FreezingServe(config, env={"EXTMSG_TEST_FREEZE_KINDS": kind})
            if n == 0
            else ServeProcess(config)
        )
    frozen, other = servers
    assert isinstance(frozen, FreezingServe)
    frozen.start()
    try:
        async with aiohttp.ClientSession() as session:
            await frozen.wait_ready(bases[0], limit=60)
            inbound = inbound_params(
                from_=CONTACT,
                to=FROM_NUMBER,
                body="hello",
                account_sid=ACCOUNT_SID,
                message_sid="SM" + "4" * 32,
            )
            result = await fake.send_inbound(f"{bases[0]}/channels/sms/inbound", inbound)
            assert result.status == 200

            async def arrived_in_unblu() -> int:
                return len(
                    [s for s in (await inbound_by_contact(session, sandbox.url))[CONTACT] if s]
                )

            async def sent_by_twilio() -> int:
                return sum(1 for m in fake.messages if m["body"] == "goodbye")

            count = arrived_in_unblu
            if kind == "to_messenger.message":
                count = sent_by_twilio

                async def conversation() -> bool:
                    return bool(await sandbox_conversations(session, sandbox.url))

                await _until("the conversation opened", conversation)
                (conv,) = await sandbox_conversations(session, sandbox.url)
                await agent_writes(session, sandbox.url, conv["id"], ["goodbye"])

            async def stopped() -> bool:
                return frozen.stopped()

            await _until("the first instance stopped right after its hold", stopped)
            assert await count() == 0
            # The second instance claims the job once the frozen one's lease ran out, in doubt:
            # it looks, finds nothing, and sends.
            other.start()
            await other.wait_ready(bases[1], limit=60)

            async def sent_once() -> bool:
                return await count() >= 1

            await _until("the second instance sent the message", sent_once)
            assert frozen.proc is not None
            frozen.proc.send_signal(signal.SIGCONT)

            async def frozen_one_gave_up() -> bool:
                async with session.get(f"{frozen.admin_url}/metrics") as resp:
                    return metric_total(await resp.text(), "extmsg_fenced_total") >= 1

            await _until("the woken instance gave the job up", frozen_one_gave_up)
            await asyncio.sleep(0.5)
            await sandbox_drain(session, sandbox.url)
            assert await count() == 1, f"{kind}: sent {await count()} times\n{frozen.log()}"
            assert "would have gone out" in frozen.log()
    finally:
        for server in servers:
            server.kill()
