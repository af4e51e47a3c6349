"""The SQLite store's batching writer: writes queued together share one transaction, a write
that fails is undone alone, a transaction that fails loses its whole batch and says so, and
writes apply in the order they were queued."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from extmsg.store.base import Intake, NewJob, NewMessage
from extmsg.store.sqlite import SqliteStore
from extmsg.store.sqlite_writer import BatchWriter


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[BatchWriter]:
    path = tmp_path / "w.sqlite3"

    def connect() -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        return db

    w = BatchWriter(connect)
    await w.start()
    yield w
    await w.stop()


def _insert(k: int, v: str | None = "x") -> Callable[[sqlite3.Connection], int]:
    return lambda db: db.execute("INSERT INTO t (k, v) VALUES (?, ?)", (k, v)).rowcount


@contextlib.contextmanager
def _held(w: BatchWriter) -> Iterator[None]:
    """Keep the writer busy in a transaction of its own while the block queues writes, so
    that those all wait for, and share, the next one."""
    started, release = threading.Event(), threading.Event()

    def hold(db: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)

    holding = w.run(hold)
    assert started.wait(10)
    try:
        yield
    finally:
        release.set()
    del holding


async def _rows(w: BatchWriter) -> list[tuple[int, str]]:
    return await w.run(lambda db: db.execute("SELECT k, v FROM t ORDER BY k").fetchall())


async def test_concurrent_writes_share_transactions(writer: BatchWriter) -> None:
    before = writer.transactions
    with _held(writer):
        pending = [writer.run(_insert(k)) for k in range(300)]
        await asyncio.sleep(0)
    assert await asyncio.gather(*pending) == [1] * 300
    # the held write's transaction, then one for all 300
    assert writer.transactions - before == 2
    assert len(await _rows(writer)) == 300


async def test_a_failing_write_is_undone_alone(writer: BatchWriter) -> None:
    def two_then_fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t (k, v) VALUES (100, 'a')")
        db.execute("INSERT INTO t (k, v) VALUES (101, NULL)")  # NOT NULL: raises

    before = writer.transactions
    with _held(writer):
        pending = [
            writer.run(_insert(1)),
            writer.run(two_then_fail),
            writer.run(_insert(2)),
        ]
        await asyncio.sleep(0)
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert writer.transactions - before == 2  # all three were one batch
    assert outcomes[0] == 1
    assert outcomes[2] == 1
    assert isinstance(outcomes[1], sqlite3.IntegrityError)
    # the failed write's first insert was rolled back with it; its neighbours committed
    assert await _rows(writer) == [(1, "x"), (2, "x")]


async def test_a_failed_transaction_fails_every_write_of_its_batch(
    writer: BatchWriter,
) -> None:
    await writer.run(_insert(1))
    with _held(writer):
        pending = [
            writer.run(_insert(10)),
            # ends the batch's transaction behind the writer's back, as an I/O error would
            writer.run(lambda db: db.execute("ROLLBACK")),
            writer.run(_insert(11)),
        ]
        await asyncio.sleep(0)
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    # nothing of the batch is kept, and every caller hears of it
    assert all(isinstance(o, sqlite3.Error) for o in outcomes), outcomes
    assert await _rows(writer) == [(1, "x")]
    # the writer goes on working afterwards
    assert await writer.run(_insert(12)) == 1


async def test_writes_apply_in_queue_order(writer: BatchWriter) -> None:
    await writer.run(_insert(1, "first"))
    await asyncio.gather(
        *(
            writer.run(lambda db, i=i: db.execute("UPDATE t SET v = ? WHERE k = 1", (str(i),)))
            for i in range(200)
        )
    )
    assert await _rows(writer) == [(1, "199")]


async def test_stop_applies_what_is_queued_then_refuses(writer: BatchWriter) -> None:
    pending = [writer.run(_insert(k)) for k in range(50)]
    await asyncio.sleep(0)
    await writer.stop()
    assert [await p for p in pending] == [1] * 50
    with pytest.raises(RuntimeError, match="not open"):
        await writer.run(_insert(99))


async def test_a_connection_that_cannot_open_fails_start(tmp_path: Path) -> None:
    def connect() -> sqlite3.Connection:
        return sqlite3.connect(tmp_path / "missing" / "dir" / "db.sqlite3")

    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        await BatchWriter(connect).start()


async def test_acknowledgements_share_commits_with_job_completions(tmp_path: Path) -> None:
    """Webhook intakes and workers' writes queued at the same moment commit together."""
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.open()
    try:
        await store.intake(
            [
                Intake(
                    message=NewMessage(
                        id=f"m{i}",
                        channel="c",
                        direction="in",
                        thread="t",
                        provider_message_id=f"p{i}",
                    ),
                    job=NewJob(kind="k", lane=f"lane{i}", payload=b""),
                )
                for i in range(40)
            ]
        )
        jobs = await store.claim_jobs(40, 30.0)
        before = store.transactions
        await asyncio.gather(
            *(store.complete_job(job.id) for job in jobs),
            *(
                store.intake(
                    [
                        Intake(
                            message=NewMessage(
                                id=f"n{i}",
                                channel="c",
                                direction="in",
                                thread="t",
                                provider_message_id=f"q{i}",
                            ),
                            job=NewJob(kind="k", lane=f"lane{i}", payload=b""),
                        )
                    ]
                )
                for i in range(40)
            ),
        )
        assert store.transactions - before < 10
        counts = await store.job_counts()
        assert counts["done"] == 40
        assert counts["ready"] == 40
    finally:
        await store.close()
