"""Kill -9 with WhatsApp and Unblu: contacts' messages exactly once, agents' messages never lost,
and every agent message WhatsApp received twice counted as in doubt.

``extmsg serve`` runs as a real process between the Unblu sandbox (v4) and the Graph API fake.
While 2,000 messages flow each way it is killed with SIGKILL at seeded random moments and
started again on the same store. The fake answers each send after a short delay, as a provider
across a network does, so kills catch sends the fake has taken and extmsg has not recorded.

Contacts → Unblu: Meta retries a webhook until it is acknowledged, and Unblu v4 can be asked
for a message by our id, so nothing is lost, nothing doubled and each conversation keeps its
order.

Unblu → contacts: WhatsApp cannot be asked whether it has a message. A job whose attempt was
cut off is *in doubt*; it sends again and counts it: one WARNING line and one increment of
``extmsg_in_doubt_total{channel,direction="to_messenger",outcome="unknown"}``, in the same
step (no await between them). Nothing is lost and the order holds (a double comes right after
the message it repeats, so the order is read from first appearances). A resend counted is not
always a double (the cut-off attempt may have died before the fake took the message), so the
test asserts that every message the fake holds more than once has at least as many in-doubt
resends logged for it as it has extra copies — counted ≥ doubled, message by message.

What is exact about the counts, and so asserted:

* the log lines survive the kills (stderr is line-buffered, and ``ServeProcess`` appends
  across restarts): they are the full count, split into one segment per process lifetime;
* the metric lives in a process and dies with it. Scraped right before each kill, it is at
  most the lines its process logged (an increment between the scrape and the kill is in the
  log only). Scraped at the end, when nothing runs any more, the last process's metric equals
  the lines of its own segment.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from whatsapp_testkit import ACCESS_TOKEN, APP_SECRET, MAIN_NUMBER_ID, WEBHOOK_PATH

from extmsg.sandbox import run_sandbox
from extmsg.testing.helpers import ServeProcess, free_port
from extmsg.testing.tally import (
    agent_writes,
    inbound_by_contact,
    metric_total,
    out_of_order,
    sandbox_conversations,
    sandbox_drain,
    sandbox_messages,
)
from extmsg_whatsapp import fake as wa
from extmsg_whatsapp.fake import FAKE, GraphFake, create_graph_fake

pytestmark = pytest.mark.slow

CONTACTS = 20
PER_CONTACT = 100  # 2,000 messages each way
KILLS = 5
CHANNEL = "wa"

CONFIG = """
[server]
port = {port}
public_url = "{base}"
shutdown_timeout = 2.0

[store]
path = "{store}"

[unblu]
base_url = "{unblu}"
api_version = "v4"
username = "admin"
password = "admin"

[engine]
workers = 8
backoff_initial = 0.05
backoff_max = 0.5
lease_seconds = 2.0
max_attempts = 200

[[channels]]
name = "{channel}"
messenger = "whatsapp"
webhook_secret = "whsec-wa"
sender_prefix = ""
[channels.settings]
phone_number_id = "{number}"
access_token = "{token}"
app_secret = "{secret}"
verify_token = "wa-verify-token"
api_base_url = "{fake}"
"""

#: What the flow logs for each in-doubt resend WhatsApp cannot settle (core/extmsg/flows/
#: to_messenger.py); the id is our message id, the one the fake sees as biz_opaque_callback_data.
IN_DOUBT = re.compile(
    rf" WARNING extmsg\.to_messenger: in doubt on {CHANNEL}: message (?P<id>\S+) part "
    r"(?P<part>\d+) to \S+; whatsapp cannot tell whether it has it, so it is sent again "
    r"and may arrive twice$",
    re.MULTILINE,
)
IN_DOUBT_METRIC = "extmsg_in_doubt_total"
IN_DOUBT_LABELS = {"channel": CHANNEL, "direction": "to_messenger", "outcome": "unknown"}


def wa_id(i: int) -> str:
    return f"4179{i:07d}"


@pytest.fixture
async def sandbox() -> AsyncIterator[Any]:
    server = await run_sandbox(
        "127.0.0.1", 0, delivery_retries=10_000, retry_backoff=0.05, retry_backoff_max=0.3
    )
    try:
        yield server
    finally:
        await server.close()


def _answer_late(rng: random.Random) -> Any:
    """A provider across a network: the answer to a send leaves a little after the send was
    taken (and recorded by the fake), the window a kill turns into a possible double."""

    @web.middleware
    async def late(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        if request.path.endswith("/messages") and request.method == "POST":
            await asyncio.sleep(rng.uniform(0.01, 0.06))
        return response

    return late


@dataclass
class Run:
    """Contacts writing through Meta's webhooks (retried until acknowledged) and agents writing
    in the sandbox, at once."""

    webhook_url: str
    sandbox_url: str
    fake: GraphFake
    session: aiohttp.ClientSession
    acked: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    conversations: dict[str, str] = field(default_factory=dict)

    async def text(self, sender: str, n: int) -> None:
        message = wa.text_message(sender, f"in {sender} {n}")
        payload = wa.webhook_payload(
            wa.entry(
                wa.value(
                    MAIN_NUMBER_ID, contacts=[wa.contact(sender, "Contact")], messages=[message]
                )
            )
        )
        status: int | str = "no answer"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                status = await wa.send_webhook(
                    self.webhook_url, APP_SECRET, payload, session=self.session
                )
            except (aiohttp.ClientError, TimeoutError):
                status = "no answer"
            if status == 200:
                self.acked[sender].append(message["id"])
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{message['id']} from {sender} not acknowledged in 120 s ({status})")

    async def open_conversations(self) -> None:
        await asyncio.gather(*(self.text(wa_id(i), 0) for i in range(CONTACTS)))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            convs = await sandbox_conversations(self.session, self.sandbox_url)
            if len(convs) >= CONTACTS:
                self.conversations = {c["sourceId"]: c["id"] for c in convs}
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the conversations were not all opened")

    async def contact(self, i: int) -> None:
        for n in range(1, PER_CONTACT):
            await self.text(wa_id(i), n)

    async def agent(self, i: int) -> None:
        texts = (f"out {i} {n}" for n in range(PER_CONTACT))
        await agent_writes(self.session, self.sandbox_url, self.conversations[wa_id(i)], texts)

    async def everyone(self) -> None:
        await asyncio.gather(
            *(self.contact(i) for i in range(CONTACTS)), *(self.agent(i) for i in range(CONTACTS))
        )

    async def settle(self, limit: float = 180.0) -> Outcome:
        """Wait until everything acknowledged or written arrived; what arrived."""
        deadline = time.monotonic() + limit
        while True:
            await sandbox_drain(self.session, self.sandbox_url)
            outcome = await self.outcome()
            if outcome.complete or time.monotonic() > deadline:
                return outcome
            await asyncio.sleep(0.5)

    async def outcome(self) -> Outcome:
        arrived = await inbound_by_contact(self.session, self.sandbox_url)
        counts = Counter(w for wamids in arrived.values() for w in wamids)
        acked = [w for wamids in self.acked.values() for w in wamids]
        sent: dict[str, list[str]] = defaultdict(list)
        copies: Counter[str] = Counter()
        texts: dict[str, set[str]] = defaultdict(set)
        for request in self.fake.sent:
            # anything but text (a template: the 24-hour window seen closed) counts as lost
            body = request.get("text", {}).get("body") or f"<{request.get('type')}>"
            sent[request["to"]].append(body)
            copies[request["biz_opaque_callback_data"]] += 1
            texts[request["biz_opaque_callback_data"]].add(body)
        wanted = {wa_id(i): [f"out {i} {n}" for n in range(PER_CONTACT)] for i in range(CONTACTS)}
        bodies = Counter(b for out in sent.values() for b in out)
        return Outcome(
            expected=CONTACTS * PER_CONTACT,
            inbound_arrived=sum(1 for w in acked if counts[w]),
            inbound_doubled=sum(counts[w] - 1 for w in acked if counts[w] > 1),
            inbound_lost=sum(1 for w in acked if not counts[w])
            + CONTACTS * PER_CONTACT
            - len(acked),
            inbound_out_of_order=[
                s for s, wamids in self.acked.items() if out_of_order(arrived[s], wamids)
            ],
            outbound_arrived=sum(1 for out in wanted.values() for b in out if bodies[b]),
            outbound_lost=sum(1 for out in wanted.values() for b in out if not bodies[b]),
            outbound_out_of_order=[s for s, out in wanted.items() if out_of_order(sent[s], out)],
            extra_copies={m: n - 1 for m, n in copies.items() if n > 1},
            texts={m: next(iter(t)) for m, t in texts.items() if len(t) == 1},
            ambiguous=[m for m, t in texts.items() if len(t) > 1],
        )


@dataclass
class Outcome:
    expected: int
    inbound_arrived: int
    inbound_doubled: int
    inbound_lost: int
    inbound_out_of_order: list[str]
    outbound_arrived: int
    outbound_lost: int
    outbound_out_of_order: list[str]
    extra_copies: dict[str, int]
    """Our message id → how many more times than once the fake took it."""
    texts: dict[str, str]
    """Our message id → its text at the fake."""
    ambiguous: list[str]
    """Our message ids the fake saw with different texts (must be none)."""

    @property
    def complete(self) -> bool:
        return self.inbound_lost == 0 and self.outbound_lost == 0

    def problems(self) -> list[str]:
        found = {
            "inbound lost": self.inbound_lost,
            "inbound doubled": self.inbound_doubled,
            "inbound conversations out of order": len(self.inbound_out_of_order),
            "outbound lost": self.outbound_lost,
            "outbound conversations out of order": len(self.outbound_out_of_order),
            "message ids with two texts at the fake": len(self.ambiguous),
        }
        return [f"{what}: {n}" for what, n in found.items() if n]

    def line(self) -> str:
        return (
            f"inbound: {self.inbound_arrived}/{self.expected} arrived, {self.inbound_doubled} "
            f"doubled, {self.inbound_lost} lost, {len(self.inbound_out_of_order)} out of order; "
            f"outbound: {self.outbound_arrived}/{self.expected} arrived, "
            f"{sum(self.extra_copies.values())} doubled, {self.outbound_lost} lost, "
            f"{len(self.outbound_out_of_order)} out of order"
        )


class Lifetimes:
    """``extmsg serve`` started again and again on one config; what each lifetime logged."""

    def __init__(self, proc: ServeProcess) -> None:
        self.proc = proc
        self.starts: list[int] = []  # the log's size when each lifetime began

    def start(self) -> None:
        path = self.proc.log_path
        self.starts.append(path.stat().st_size if path.exists() else 0)
        self.proc.start()

    def in_doubt_lines(self) -> list[list[str]]:
        """The ids in the in-doubt lines, one list per lifetime."""
        data = self.proc.log_path.read_bytes()
        bounds = [*self.starts, len(data)]
        return [
            [m["id"] for m in IN_DOUBT.finditer(data[a:b].decode(errors="replace"))]
            for a, b in itertools.pairwise(bounds)
        ]


async def _in_doubt_metric(session: aiohttp.ClientSession, admin: str) -> float:
    async with session.get(f"{admin}/metrics") as resp:
        assert resp.status == 200
        return metric_total(await resp.text(), IN_DOUBT_METRIC, IN_DOUBT_LABELS)


def _stored_out(store: Path) -> dict[str, str]:
    """Our outbound message id → the Unblu message id it was made for, from the store."""
    with sqlite3.connect(store) as db:
        rows = db.execute(
            "SELECT id, unblu_message_id FROM messages WHERE channel = ? AND direction = 'out'",
            (CHANNEL,),
        ).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


async def test_kill_9_whatsapp_doubles_are_all_counted(tmp_path: Path, sandbox: Any) -> None:
    rng = random.Random(20261207)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    graph = create_graph_fake(
        access_token=ACCESS_TOKEN,
        app_secret=APP_SECRET,
        webhook_url=base + WEBHOOK_PATH,
        auto_statuses=("delivered",),
    )
    graph.middlewares.append(_answer_late(random.Random(7)))
    fake_server = TestServer(graph)
    await fake_server.start_server()
    store = tmp_path / "store.sqlite3"
    config = tmp_path / "extmsg.toml"
    config.write_text(
        CONFIG.format(
            port=port,
            base=base,
            store=store,
            unblu=sandbox.base_url,
            channel=CHANNEL,
            number=MAIN_NUMBER_ID,
            token=ACCESS_TOKEN,
            secret=APP_SECRET,
            fake=str(fake_server.make_url("")).rstrip("/"),
        )
    )
    lifetimes = Lifetimes(ServeProcess(config))
    scraped: list[float] = []  # each lifetime's metric, right before its kill, then at the end
    lifetimes.start()
    try:
        async with aiohttp.ClientSession() as session:
            await lifetimes.proc.wait_ready(base, limit=30)
            run = Run(base + WEBHOOK_PATH, sandbox.url, graph[FAKE], session)
            await run.open_conversations()
            flowing = asyncio.get_running_loop().create_task(run.everyone())
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(0.5, 2.5))
                scraped.append(await _in_doubt_metric(session, lifetimes.proc.admin_url))
                lifetimes.proc.kill()
                lifetimes.start()
                await lifetimes.proc.wait_ready(base, limit=30)
            started = time.monotonic()
            await flowing
            outcome = await run.settle()
            elapsed = time.monotonic() - started
            scraped.append(await _in_doubt_metric(session, lifetimes.proc.admin_url))
            conversation_messages = {
                m["text"]: m["id"]
                for conv in run.conversations.values()
                for m in await sandbox_messages(session, sandbox.url, conv)
                if not m.get("fromMessenger") and str(m.get("text", "")).startswith("out ")
            }
    finally:
        lifetimes.proc.kill()
        await fake_server.close()

    lines = lifetimes.in_doubt_lines()
    logged = Counter(i for lifetime in lines for i in lifetime)
    counted = sum(logged.values())
    doubled = len(outcome.extra_copies)
    print(
        f"\n{KILLS} kill -9 ({elapsed:.1f}s to settle after the last): {outcome.line()}\n"
        f"doubles at the Graph fake: {doubled} messages ({sum(outcome.extra_copies.values())} "
        f"extra copies), in-doubt resends counted: {counted} (log, per lifetime "
        f"{[len(x) for x in lines]}; metric scraped {[int(v) for v in scraped]})"
    )
    assert not outcome.problems(), outcome.line()

    # The fake's ids are ours: each names the store row made for the agent's Unblu message.
    stored = _stored_out(store)
    for ours, text in outcome.texts.items():
        assert stored.get(ours) == conversation_messages[text], (ours, text)

    # Every double is counted, message by message; a count need not be a double.
    uncounted = {m: n for m, n in outcome.extra_copies.items() if logged[m] < n}
    assert not uncounted, f"doubles with fewer in-doubt lines than extra copies: {uncounted}"
    assert counted >= sum(outcome.extra_copies.values())
    assert counted > 0, "no agent message was ever in doubt: the kills caught no send"

    # The metric agrees with the log where it can: at most the lines of its lifetime before a
    # kill, exactly them at the end.
    assert len(scraped) == len(lines) == KILLS + 1
    for value, lifetime in zip(scraped[:-1], lines[:-1], strict=True):
        assert value <= len(lifetime), (scraped, [len(x) for x in lines])
    assert scraped[-1] == len(lines[-1]), (scraped, [len(x) for x in lines])
