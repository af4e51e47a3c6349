"""Durable intake throughput: group commit against one transaction per request.

Closed-loop clients (``--concurrency`` of them) each write webhook-like requests (one inbound
message row and its job) until ``--requests`` are written. The floor commits each request in
a transaction of its own (aiosqlite, the store's schema); the engine path goes through
``Engine.intake``, which shares a transaction among the requests waiting at the same time.
Both run on a fresh SQLite file in the same run, alternating, best of ``--repeat`` runs each;
the figure that matters is their ratio.

    .venv/bin/python benchmarks/bench_intake.py [--requests 2000] [--concurrency 1,16,64,256]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiosqlite

from extmsg.config import EngineConfig
from extmsg.engine import Engine
from extmsg.models import ErrorVerdict
from extmsg.store.base import Intake, IntakeResult, Job, NewJob, NewMessage
from extmsg.store.sqlite import SqliteStore

Write = Callable[[Sequence[Intake]], Awaitable[list[IntakeResult]]]


def request(n: int) -> Intake:
    thread = f"+4179{n % 500:07d}"
    return Intake(
        message=NewMessage(
            id=f"m{n}",
            channel="sms",
            direction="in",
            thread=thread,
            provider_message_id=f"SM{n:032x}",
        ),
        job=NewJob(
            kind="inbound.forward", lane=f"sms:{thread}", payload=b'{"text": "' + b"x" * 160 + b'"}'
        ),
    )


async def drive(write: Write, requests: int, concurrency: int) -> float:
    """Seconds the clients took to write ``requests`` requests."""
    counter = iter(range(requests))

    async def client() -> None:
        for n in counter:
            [result] = await write([request(n)])
            assert result.accepted

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started


async def classify(job: Job, error: BaseException) -> ErrorVerdict:
    return ErrorVerdict(retryable=True, reason=type(error).__name__)


async def floor_run(path: Path, synchronous: str, requests: int, concurrency: int) -> float:
    """One transaction per request, through aiosqlite, on the store's own schema."""
    store = SqliteStore(path, synchronous=synchronous)
    await store.open()  # creates the schema
    await store.close()
    db = await aiosqlite.connect(path, isolation_level=None)
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute(f"PRAGMA synchronous={synchronous}")
    lock = asyncio.Lock()

    async def write(items: Sequence[Intake]) -> list[IntakeResult]:
        [item] = items
        assert item.message is not None
        assert item.job is not None
        m, j, now = item.message, item.job, time.time()
        async with lock:  # one transaction at a time on the connection
            await db.execute("BEGIN IMMEDIATE")
            await db.execute(
                "INSERT INTO messages (id, channel, direction, thread, provider_message_id,"
                " state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                (m.id, m.channel, m.direction, m.thread, m.provider_message_id, now, now),
            )
            await db.execute(
                "INSERT INTO jobs (kind, lane, payload, message_id, state, attempts, next_at,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, 'ready', 0, ?, ?, ?)",
                (j.kind, j.lane, j.payload, m.id, now, now, now),
            )
            await db.execute("COMMIT")
        return [IntakeResult(accepted=True, message_id=m.id)]

    try:
        return await drive(write, requests, concurrency)
    finally:
        await db.close()


async def group_run(
    path: Path, synchronous: str, requests: int, concurrency: int, window_ms: float
) -> tuple[float, int]:
    store = SqliteStore(path, synchronous=synchronous)
    await store.open()
    engine = Engine(store, EngineConfig(group_commit_ms=window_ms), classify=classify)
    try:
        return await drive(engine.intake, requests, concurrency), engine.intake_transactions
    finally:
        await engine.stop(1.0)
        await store.close()


async def measure(
    folder: Path, synchronous: str, requests: int, concurrency: int, window_ms: float, repeat: int
) -> tuple[float, float, int]:
    """Best (floor seconds, group commit seconds), and the group commit's transactions."""
    floors: list[float] = []
    groups: list[float] = []
    transactions = 0
    for i in range(repeat):
        floors.append(
            await floor_run(
                folder / f"floor-{synchronous}-{concurrency}-{i}.db",
                synchronous,
                requests,
                concurrency,
            )
        )
        seconds, transactions = await group_run(
            folder / f"group-{synchronous}-{concurrency}-{i}.db",
            synchronous,
            requests,
            concurrency,
            window_ms,
        )
        groups.append(seconds)
    return min(floors), min(groups), transactions


async def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument(
        "--synchronous",
        default="NORMAL,FULL",
        help="SQLite synchronous settings to compare (NORMAL is the default)",
    )
    parser.add_argument("--window-ms", type=float, default=EngineConfig().group_commit_ms)
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the best counts")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    syncs = [s.strip().upper() for s in args.synchronous.split(",")]

    print(
        f"durable intake, {args.requests} requests (message + job) per cell, best of"
        f" {args.repeat}, group commit window {args.window_ms:g} ms"
    )
    header = (
        f"{'synchronous':<12}{'clients':>8}{'floor req/s':>14}{'group req/s':>14}"
        f"{'ratio':>8}{'txns':>7}{'req/txn':>9}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="extmsg-bench-") as tmp:
        for sync in syncs:
            for concurrency in levels:
                floor, group, txns = await measure(
                    Path(tmp), sync, args.requests, concurrency, args.window_ms, args.repeat
                )
                floor_rate, group_rate = args.requests / floor, args.requests / group
                print(
                    f"{sync:<12}{concurrency:>8}{floor_rate:>14,.0f}{group_rate:>14,.0f}"
                    f"{group_rate / floor_rate:>7.1f}x{txns:>7}{args.requests / txns:>9.1f}"
                )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
