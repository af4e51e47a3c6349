"""The load generator: runs one phase in its own process and prints the outcome as JSON.

    python benchmarks/loadgen.py '{"direction": "inbound", "mode": "max", "target": ..., ...}'

Directions:

* ``inbound``: Twilio's inbound-SMS webhook, form-encoded with the parameters Twilio posts and
  ``X-Twilio-Signature`` computed from the channel's auth token and the public URL, a fresh
  MessageSid each, spread over ``contacts`` phone numbers.
* ``outbound``: Unblu's ``outbound.external_messenger.new_message`` requests, as the sandbox
  renders them (``/bench/mint``), signed with ``x-unblu-signature-256``.

Requests go to ``target``; with ``targets`` (a list of base URLs: several extmsg instances),
to each of them in turn, the way a load balancer spreads them. ``Host`` and the signed URL stay
those of ``target`` and ``public_url``, the instances' shared public address.

Modes:

* ``max``: ``concurrency`` connections send ``count`` requests back to back (closed loop).
* ``rate``: ``count`` requests at a fixed ``rate`` (open loop); latency counts from the moment
  a request was due, so a stalled server is not hidden by a waiting generator.
* ``stream``: ``count`` requests, never more than ``window`` of them acknowledged but not yet
  arrived at the collector: the messages stream through at the pace of the whole chain. The
  requests are made a chunk at a time and only counts and a bounded sample of ack latencies
  are kept, so the generator's memory does not grow with ``count``.

With a ``collector`` (the sandbox for inbound, the Twilio fake for outbound), the generator
then waits until every acknowledged message has arrived there, and reports the end-to-end
rate (first request sent → last message arrived) and, with ``e2e_latency``, per-message
end-to-end latency.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import resource
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FROM_NUMBER,
    NEW_MESSAGE_SERVICE,
    WEBHOOK_SECRET,
    contact_number,
    inbound_sid,
    percentiles,
    twilio_signature,
    unblu_signature_256,
)
from httpclient import Pool, RoundRobin, build_request

TEXT = "Hello, my parcel did not arrive yet. Order 4711, can you check? Thanks"
MINT_CHUNK = 2000

Client = Pool | RoundRobin


# -- requests ---------------------------------------------------------------------------------
def inbound_request(spec: dict[str, Any], seq: int) -> tuple[str, bytes]:
    """A signed Twilio inbound-SMS webhook: its MessageSid and its bytes."""
    sid = inbound_sid(spec["prefix"], seq)
    sender = contact_number(seq % spec["contacts"])
    params = [
        ("ToCountry", "US"),
        ("ToState", "CA"),
        ("SmsMessageSid", sid),
        ("NumMedia", "0"),
        ("ToCity", ""),
        ("FromZip", ""),
        ("SmsSid", sid),
        ("FromState", ""),
        ("SmsStatus", "received"),
        ("FromCity", ""),
        ("Body", f"{TEXT} #{seq}"),
        ("FromCountry", "CH"),
        ("To", FROM_NUMBER),
        ("ToZip", ""),
        ("NumSegments", "1"),
        ("MessageSid", sid),
        ("AccountSid", ACCOUNT_SID),
        ("From", sender),
        ("ApiVersion", "2010-04-01"),
    ]
    url = spec["public_url"] + spec["path"]
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": twilio_signature(url, params, AUTH_TOKEN),
        "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
        "User-Agent": "TwilioProxy/1.1",
        "Accept": "*/*",
    }
    body = urlencode(params).encode()
    return sid, build_request("POST", _host(spec), spec["path"], headers, body)


def outbound_request(spec: dict[str, Any], key: str, body: bytes) -> tuple[str, bytes]:
    """A signed v4 new_message request for one minted agent message."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Unblu-Hookshot",
        "X-Unblu-Delivery": uuid.uuid4().hex,
        "X-Unblu-Retry-No": "0",
        "x-unblu-service-name": NEW_MESSAGE_SERVICE,
        "X-Unblu-Invocation-ID": uuid.uuid4().hex,
        "x-unblu-signature-256": unblu_signature_256(WEBHOOK_SECRET, body),
    }
    return key, build_request("POST", _host(spec), spec["path"], headers, body)


def _host(spec: dict[str, Any]) -> str:
    return urlsplit(spec["target"]).netloc


async def mint(
    session: aiohttp.ClientSession, spec: dict[str, Any], start: int, count: int
) -> list[tuple[str, bytes]]:
    """Agent messages written in the sandbox, as signed requests for extmsg."""
    out: list[tuple[str, bytes]] = []
    for offset in range(0, count, MINT_CHUNK):
        n = min(MINT_CHUNK, count - offset)
        async with session.post(
            spec["mint"] + "/bench/mint",
            json={"prefix": spec["prefix"], "start": start + offset, "count": n},
        ) as resp:
            data = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"minting failed: {data}")
        for item in data["items"]:
            out.append(outbound_request(spec, item["key"], item["body"].encode()))
    return out


# -- collectors -------------------------------------------------------------------------------
async def collector_count(session: aiohttp.ClientSession, spec: dict[str, Any]) -> dict[str, Any]:
    async with session.get(
        spec["collector"] + "/bench/count", params={"prefix": spec["prefix"]}
    ) as resp:
        data: dict[str, Any] = await resp.json()
        return data


async def wait_arrivals(
    session: aiohttp.ClientSession, spec: dict[str, Any], expected: int
) -> dict[str, Any]:
    """Poll the collector until ``expected`` messages arrived or it stalled too long."""
    stall = float(spec.get("stall_timeout", 30.0))
    seen, since = -1, time.monotonic()
    while True:
        data = await collector_count(session, spec)
        if data["count"] >= expected:
            return data
        if data["count"] != seen:
            seen, since = data["count"], time.monotonic()
        elif time.monotonic() - since > stall:
            data["stalled"] = True
            return data
        await asyncio.sleep(0.05)


async def arrival_times(session: aiohttp.ClientSession, spec: dict[str, Any]) -> dict[str, float]:
    async with session.get(
        spec["collector"] + "/bench/receipts", params={"prefix": spec["prefix"]}
    ) as resp:
        data = await resp.json()
    return dict(zip(data["keys"], data["times"], strict=True))


# -- drivers ----------------------------------------------------------------------------------
class Outcome:
    """Every request's due time and latency (``max`` and ``rate``: they are few)."""

    def __init__(self, n: int) -> None:
        self.latency = [math.nan] * n
        self.sent_at = [math.nan] * n
        self.statuses: Counter[str] = Counter()
        self.acked: list[int] = []

    @property
    def ok(self) -> int:
        return len(self.acked)

    def record(self, i: int, due: float, status: str, latency: float | None) -> None:
        self.sent_at[i] = due
        self.statuses[status] += 1
        if latency is not None:
            self.latency[i] = latency
            if status.startswith("2"):
                self.acked.append(i)

    def latencies(self) -> list[float]:
        return [x for x in self.latency if not math.isnan(x)]


class Tally(Outcome):
    """Counts and a bounded sample of ack latencies (``stream``): the generator's memory
    stays flat however many messages stream through."""

    SAMPLE = 100_000

    def __init__(self) -> None:
        super().__init__(0)
        self._ok = 0
        self._seen = 0
        self._sample: list[float] = []
        self._random = random.Random(0)

    @property
    def ok(self) -> int:
        return self._ok

    def record(self, i: int, due: float, status: str, latency: float | None) -> None:
        self.statuses[status] += 1
        if latency is None:
            return
        self._ok += status.startswith("2")
        # Reservoir sampling: every latency has the same chance to be in the sample.
        self._seen += 1
        if len(self._sample) < self.SAMPLE:
            self._sample.append(latency)
        elif (j := self._random.randrange(self._seen)) < self.SAMPLE:
            self._sample[j] = latency

    def latencies(self) -> list[float]:
        return self._sample


async def send_one(pool: Client, raw: bytes, i: int, due: float, out: Outcome) -> None:
    try:
        status, _ = await pool.request(raw)
    except Exception as exc:
        out.record(i, due, type(exc).__name__, None)
        return
    out.record(i, due, str(status), time.monotonic() - due)


async def closed_loop(pool: Client, requests: list[tuple[str, bytes]], concurrency: int) -> Outcome:
    out = Outcome(len(requests))
    it: Iterator[int] = iter(range(len(requests)))

    async def worker() -> None:
        for i in it:
            await send_one(pool, requests[i][1], i, time.monotonic(), out)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


async def open_loop(pool: Client, requests: list[tuple[str, bytes]], rate: float) -> Outcome:
    out = Outcome(len(requests))
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic() + 0.02
    for i, (_, raw) in enumerate(requests):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send_one(pool, raw, i, due, out))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    return out


async def stream(
    pool: Client,
    session: aiohttp.ClientSession,
    spec: dict[str, Any],
    make: Callable[[int, int], Awaitable[list[tuple[str, bytes]]]],
) -> Outcome:
    """Send ``count`` requests, keeping at most ``window`` of them in the chain."""
    count, window, concurrency = spec["count"], spec["window"], spec["concurrency"]
    out = Tally()
    arrived = 0
    done = asyncio.Event()

    async def poll() -> None:
        nonlocal arrived
        while not done.is_set():
            arrived = (await collector_count(session, spec))["count"]
            await asyncio.sleep(0.05)

    poller = asyncio.create_task(poll())
    next_seq = 0
    chunk: list[tuple[str, bytes]] = []
    lock = asyncio.Lock()

    async def take() -> tuple[int, bytes] | None:
        nonlocal next_seq, chunk
        async with lock:
            if next_seq >= count:
                return None
            while next_seq - arrived >= window:  # noqa: ASYNC110 - the count comes by polling
                await asyncio.sleep(0.01)
            if not chunk:
                chunk = await make(next_seq, min(MINT_CHUNK, count - next_seq))
                chunk.reverse()
            i = next_seq
            next_seq += 1
            return i, chunk.pop()[1]

    async def worker() -> None:
        while (item := await take()) is not None:
            i, raw = item
            await send_one(pool, raw, i, time.monotonic(), out)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        done.set()
        await poller
    return out


# -- a phase ----------------------------------------------------------------------------------
def client(spec: dict[str, Any], concurrency: int) -> Client:
    """A pool of connections to ``target``, or one to each of ``targets`` taken in turn."""
    servers = []
    for url in spec.get("targets") or [spec["target"]]:
        parts = urlsplit(url)
        servers.append((parts.hostname or "127.0.0.1", parts.port or 80))
    if len(servers) == 1:
        return Pool(*servers[0], concurrency)
    return RoundRobin(servers, concurrency)


async def run_phase(spec: dict[str, Any]) -> dict[str, Any]:
    mode = spec["mode"]
    concurrency = int(spec.get("concurrency", 64))
    pool = client(spec, concurrency)
    result: dict[str, Any] = {"direction": spec["direction"], "mode": mode, "count": spec["count"]}
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def make(start: int, n: int) -> list[tuple[str, bytes]]:
            if spec["direction"] == "inbound":
                return [inbound_request(spec, seq) for seq in range(start, start + n)]
            return await mint(session, spec, start, n)

        requests: list[tuple[str, bytes]] = []
        if mode != "stream":
            requests = await make(0, spec["count"])
        await pool.warm(min(concurrency, 64))
        if spec.get("warmup"):
            # Untimed inbound requests first (floors only: no collector counts them).
            warm_spec = {**spec, "prefix": spec["warmup_prefix"]}
            warmup = [inbound_request(warm_spec, seq) for seq in range(spec["warmup"])]
            await closed_loop(pool, warmup, concurrency)
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        if mode == "max":
            out = await closed_loop(pool, requests, concurrency)
        elif mode == "rate":
            out = await open_loop(pool, requests, float(spec["rate"]))
        else:
            out = await stream(pool, session, spec, make)
        acked_at = time.monotonic()
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        pool.close()
        ack_seconds = acked_at - started
        ok = out.ok
        cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
        result.update(
            started=started,
            acked=ok,
            statuses=dict(out.statuses),
            ack_seconds=ack_seconds,
            ack_rate=ok / ack_seconds if ack_seconds > 0 else math.nan,
            ack_latency_ms={k: v * 1000 for k, v in percentiles(out.latencies()).items()},
            generator_cpu=cpu / ack_seconds if ack_seconds > 0 else math.nan,
        )
        if mode == "rate":
            result["rate"] = float(spec["rate"])
        if spec.get("collector"):
            arrived = await wait_arrivals(session, spec, ok)
            last = arrived.get("last")
            e2e_seconds = (last - started) if last is not None else math.nan
            result.update(
                arrived=arrived["count"],
                stalled=bool(arrived.get("stalled")),
                e2e_seconds=e2e_seconds,
                e2e_rate=arrived["count"] / e2e_seconds if e2e_seconds > 0 else math.nan,
            )
            if spec.get("e2e_latency") and requests:
                times = await arrival_times(session, spec)
                keys = [key for key, _ in requests]
                lat = [times[keys[i]] - out.sent_at[i] for i in out.acked if keys[i] in times]
                result["e2e_latency_ms"] = {k: v * 1000 for k, v in percentiles(lat).items()}
    return result


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    result = asyncio.run(run_phase(spec))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
