"""A real ``extmsg serve`` (or several) between the Unblu sandbox and the Twilio fake, driven the
way customers and agents would while processes are killed or frozen.

Customers text through the fake (signed webhooks, retried until acknowledged, as Twilio does);
agents write in the sandbox, which delivers to extmsg with retries, as Unblu does. What arrived
is counted where it arrives: the sandbox's conversations and the fake's sent messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from twilio_testkit import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER

from extmsg.sandbox import run_sandbox
from extmsg.testing.helpers import free_port
from extmsg.testing.tally import (
    agent_writes,
    inbound_by_contact,
    metric_total,
    out_of_order,
    sandbox_conversations,
    sandbox_drain,
)
from extmsg_sms_twilio.fake import (
    TWILIO_FAKE,
    FakeTwilio,
    create_twilio_fake,
    inbound_params,
    new_sid,
)

__all__ = ["Balancer", "Tally", "Traffic", "metric_total", "serve_config", "tally"]

CONFIG = """
[server]
port = {port}
public_url = "{public}"
shutdown_timeout = 2.0
# One process per instance: the tests kill and freeze instances as one process each.
workers = 1
event_loop = "{event_loop}"

[store]
{store}

[unblu]
base_url = "{unblu}"
api_version = "{version}"
username = "admin"
password = "admin"

[engine]
workers = {workers}
backoff_initial = 0.05
backoff_max = 0.5
lease_seconds = {lease}
max_attempts = {attempts}

[[channels]]
name = "sms"
messenger = "sms_twilio"
webhook_secret = "whsec-123"
sender_prefix = ""
[channels.settings]
account_sid = "{account}"
auth_token = "{token}"
from_number = "{number}"
api_base_url = "{fake}"
"""


@contextlib.asynccontextmanager
async def running_sandbox(**options: Any) -> AsyncIterator[Any]:
    """The Unblu sandbox on a free port, retrying its deliveries quickly."""
    server = await run_sandbox("127.0.0.1", 0, retry_backoff=0.05, retry_backoff_max=0.3, **options)
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def running_twilio() -> AsyncIterator[tuple[str, FakeTwilio]]:
    """The Twilio fake on a free port (its URL and the fake), status callbacks after 50 ms."""
    app = create_twilio_fake(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, callback_delay=0.05)
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), app[TWILIO_FAKE]
    finally:
        await server.close()


def serve_config(
    path: Path,
    *,
    port: int,
    public: str,
    unblu: str,
    fake: str,
    store: str,
    version: str = "v4",
    workers: int = 8,
    lease: float = 2.0,
    attempts: int = 200,
    event_loop: str = "auto",
) -> Path:
    path.write_text(
        CONFIG.format(
            port=port,
            public=public,
            store=store,
            unblu=unblu,
            version=version,
            workers=workers,
            lease=lease,
            attempts=attempts,
            event_loop=event_loop,
            account=ACCOUNT_SID,
            token=AUTH_TOKEN,
            number=FROM_NUMBER,
            fake=fake,
        )
    )
    return path


def contact(i: int) -> str:
    return f"+4179{i:07d}"


@dataclass
class Traffic:
    """Customers and agents writing at once; every customer message is retried until acked."""

    inbound_url: str
    sandbox_url: str
    fake: FakeTwilio
    session: aiohttp.ClientSession
    contacts: int
    per_contact: int
    acked: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    ack_times: list[float] = field(default_factory=list)
    conversations: dict[str, str] = field(default_factory=dict)

    async def text(self, sender: str, n: int) -> None:
        sid = new_sid("SM")
        params = inbound_params(
            from_=sender,
            to=FROM_NUMBER,
            body=f"in {sender} {n}",
            account_sid=ACCOUNT_SID,
            message_sid=sid,
        )
        result = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                result = await self.fake.send_inbound(self.inbound_url, params)
            except (aiohttp.ClientError, TimeoutError):
                result = None
            if result is not None and result.status == 200:
                self.acked[sender].append(sid)
                self.ack_times.append(time.monotonic())
                return
            await asyncio.sleep(0.05)
        status = result.status if result is not None else "no answer"
        raise AssertionError(f"{sid} from {sender} was not acknowledged in 120 s ({status})")

    async def open_conversations(self) -> None:
        await asyncio.gather(*(self.text(contact(i), 0) for i in range(self.contacts)))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            convs = await sandbox_conversations(self.session, self.sandbox_url)
            if len(convs) >= self.contacts:
                self.conversations = {c["sourceId"]: c["id"] for c in convs}
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the conversations were not all opened")

    async def customer(self, i: int) -> None:
        for n in range(1, self.per_contact):
            await self.text(contact(i), n)

    async def agent(self, i: int) -> None:
        texts = (f"out {i} {n}" for n in range(self.per_contact))
        await agent_writes(self.session, self.sandbox_url, self.conversations[contact(i)], texts)

    async def everyone(self) -> None:
        await asyncio.gather(
            *(self.customer(i) for i in range(self.contacts)),
            *(self.agent(i) for i in range(self.contacts)),
        )

    async def settle(self, limit: float = 180.0, *, stall: float = 60.0) -> Tally:
        """Wait until everything acknowledged arrived; the final counts.

        Gives up ``limit`` seconds from now, or later while messages are still arriving: a
        machine slowed down by other work (the server spends some 30 s of CPU on 5,000
        messages each way, the jobs' status reports included, and gets a fraction of a core
        on a busy machine) is waited for as long as it makes progress, at most ``stall``
        seconds at a time and ``5 * limit`` in all; a lost message stops the count from
        moving, and the run ends ``stall`` seconds later.
        """
        now = time.monotonic()
        deadline, cap = now + limit, now + 5 * limit
        arrived = -1
        while True:
            await sandbox_drain(self.session, self.sandbox_url)
            result = await tally(self)
            now = time.monotonic()
            if result.complete or now > deadline:
                return result
            if result.inbound_arrived + result.outbound_arrived > arrived:
                arrived = result.inbound_arrived + result.outbound_arrived
                deadline = min(max(deadline, now + stall), cap)
            await asyncio.sleep(0.5)


@dataclass
class Tally:
    expected: int
    inbound_arrived: int
    inbound_doubled: int
    inbound_lost: int
    inbound_order_broken: list[str]
    outbound_arrived: int
    outbound_doubled: int
    outbound_lost: int
    outbound_order_broken: list[str]

    def problems(self) -> list[str]:
        """What is not exactly once and in order; empty when all is well."""
        found = {
            "inbound lost": self.inbound_lost,
            "inbound doubled": self.inbound_doubled,
            "inbound conversations out of order": len(self.inbound_order_broken),
            "outbound lost": self.outbound_lost,
            "outbound doubled": self.outbound_doubled,
            "outbound conversations out of order": len(self.outbound_order_broken),
        }
        return [f"{what}: {n}" for what, n in found.items() if n]

    @property
    def complete(self) -> bool:
        return self.inbound_lost == 0 and self.outbound_lost == 0

    def line(self) -> str:
        return (
            f"inbound: {self.inbound_arrived}/{self.expected} arrived, "
            f"{self.inbound_doubled} doubled, {self.inbound_lost} lost, "
            f"{len(self.inbound_order_broken)} out of order; outbound: "
            f"{self.outbound_arrived}/{self.expected} arrived, {self.outbound_doubled} doubled, "
            f"{self.outbound_lost} lost, {len(self.outbound_order_broken)} out of order"
        )


async def tally(traffic: Traffic) -> Tally:
    arrived = await inbound_by_contact(traffic.session, traffic.sandbox_url)
    expected = traffic.contacts * traffic.per_contact
    counts = Counter(sid for sids in arrived.values() for sid in sids)
    acked = [sid for sids in traffic.acked.values() for sid in sids]
    in_broken = [
        sender for sender, sids in traffic.acked.items() if out_of_order(arrived[sender], sids)
    ]
    sent: dict[str, list[str]] = defaultdict(list)
    for message in traffic.fake.messages:
        sent[message["to"]].append(message["body"])
    bodies = Counter(body for texts in sent.values() for body in texts)
    wanted = {
        i: [f"out {i} {n}" for n in range(traffic.per_contact)] for i in range(traffic.contacts)
    }
    out_broken = [
        contact(i) for i, texts in wanted.items() if out_of_order(sent[contact(i)], texts)
    ]
    return Tally(
        expected=expected,
        inbound_arrived=sum(1 for sid in acked if counts[sid]),
        inbound_doubled=sum(counts[sid] - 1 for sid in acked if counts[sid] > 1),
        inbound_lost=sum(1 for sid in acked if not counts[sid]) + (expected - len(acked)),
        inbound_order_broken=in_broken,
        outbound_arrived=sum(1 for texts in wanted.values() for t in texts if bodies[t]),
        outbound_doubled=sum(n - 1 for n in bodies.values() if n > 1),
        outbound_lost=sum(1 for texts in wanted.values() for t in texts if not bodies[t]),
        outbound_order_broken=out_broken,
    )


class Balancer:
    """A round-robin HTTP balancer in front of several instances, as a load balancer would be:
    an instance that refuses or does not answer in time is skipped for the next one."""

    def __init__(self, backends: Sequence[str], *, timeout: float = 1.0) -> None:
        self.backends = list(backends)
        self.timeout = timeout
        self._turn = itertools.count()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=0),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        first = next(self._turn)
        for n in range(len(self.backends)):
            backend = self.backends[(first + n) % len(self.backends)]
            try:
                async with self._session.request(
                    request.method, backend + request.path_qs, data=body, headers=headers
                ) as resp:
                    data = await resp.read()
                    out = {
                        k: v
                        for k, v in resp.headers.items()
                        if k.lower() not in ("content-length", "transfer-encoding", "connection")
                    }
                    return web.Response(status=resp.status, body=data, headers=out)
            except (aiohttp.ClientError, TimeoutError):
                continue
        return web.Response(status=502, text="no instance answered")
