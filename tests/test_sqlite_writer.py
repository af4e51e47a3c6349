"""The SQLite store's batching writer: writes queued in one turn of the event loop share one
transaction, a write that fails is undone alone, a transaction that fails loses its whole batch
and says so, writes apply in the order they were queued, and another process's write lock is
waited for without blocking the loop."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from extmsg.store import sqlite as sqlite_store
from extmsg.store.base import Intake, NewJob, NewMessage
from extmsg.store.sqlite import SqliteStore
from extmsg.store.sqlite_writer import BatchWriter


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[BatchWriter]:
    db = sqlite3.connect(tmp_path / "w.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=0")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    w = BatchWriter(db, lock_timeout=2.0)
    yield w
    await w.close()


def _insert(k: int, v: str | None = "x") -> Callable[[sqlite3.Connection], int]:
    return lambda db: db.execute("INSERT INTO t (k, v) VALUES (?, ?)", (k, v)).rowcount


def _webhook(key: str, lane: str, payload: bytes = b"") -> Intake:
    """What one inbound webhook writes: its message and its job."""
    return Intake(
        message=NewMessage(
            id=f"m-{key}", channel="c", direction="in", thread="t", provider_message_id=f"p-{key}"
        ),
        job=NewJob(kind="k", lane=lane, payload=payload),
    )


async def _rows(w: BatchWriter) -> list[tuple[int, str]]:
    return await w.run(lambda db: db.execute("SELECT k, v FROM t ORDER BY k").fetchall())


async def test_concurrent_writes_share_transactions(writer: BatchWriter) -> None:
    before = writer.transactions
    pending = [writer.run(_insert(k)) for k in range(300)]
    assert await asyncio.gather(*pending) == [1] * 300
    # queued in one turn of the event loop: one commit for all 300
    assert writer.transactions - before == 1
    assert len(await _rows(writer)) == 300


async def test_a_failing_write_is_undone_alone(writer: BatchWriter) -> None:
    def two_then_fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t (k, v) VALUES (100, 'a')")
        db.execute("INSERT INTO t (k, v) VALUES (101, NULL)")  # NOT NULL: raises

    before = writer.transactions
    pending = [writer.run(_insert(1)), writer.run(two_then_fail), writer.run(_insert(2))]
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert writer.transactions - before == 1  # all three were one batch
    assert outcomes[0] == 1
    assert outcomes[2] == 1
    assert isinstance(outcomes[1], sqlite3.IntegrityError)
    # the failed write's first insert was rolled back with it; its neighbours committed
    assert await _rows(writer) == [(1, "x"), (2, "x")]


async def test_the_writes_of_a_batch_share_one_savepoint(writer: BatchWriter) -> None:
    statements: list[str] = []
    writer.connection.set_trace_callback(statements.append)
    assert await asyncio.gather(*(writer.run(_insert(k)) for k in range(10))) == [1] * 10
    writer.connection.set_trace_callback(None)
    around = [s.split()[0] for s in statements if not s.startswith("INSERT")]
    assert around == ["BEGIN", "SAVEPOINT", "RELEASE", "COMMIT"]


async def test_the_writes_before_a_failing_one_run_again_each_alone(writer: BatchWriter) -> None:
    """A write that raises rolls back the batch's savepoint: the writes before it run again
    (each in a savepoint of its own, as the failing one, undone alone), the rest together."""
    runs: list[str] = []

    def write(k: int) -> Callable[[sqlite3.Connection], int]:
        def insert(db: sqlite3.Connection) -> int:
            runs.append(str(k))
            return int(db.execute("INSERT INTO t (k, v) VALUES (?, 'x')", (k,)).rowcount)

        return insert

    def failing(db: sqlite3.Connection) -> None:
        runs.append("F")
        db.execute("INSERT INTO t (k, v) VALUES (100, 'x')")
        raise LookupError("no")

    pending = [write(1), write(2), failing, write(3), failing, write(4)]
    outcomes = await asyncio.gather(*map(writer.run, pending), return_exceptions=True)
    assert [o if isinstance(o, int) else type(o) for o in outcomes] == [
        1, 1, LookupError, 1, LookupError, 1,
    ]  # fmt: skip
    assert runs == ["1", "2", "F", "1", "2", "F", "3", "F", "3", "F", "4"]
    assert await _rows(writer) == [(k, "x") for k in (1, 2, 3, 4)]

    runs.clear()  # a failing first write was undone alone already: it does not run again
    outcomes = await asyncio.gather(*map(writer.run, [failing, write(5)]), return_exceptions=True)
    assert [o if isinstance(o, int) else type(o) for o in outcomes] == [LookupError, 1]
    assert runs == ["F", "5"]
    assert (5, "x") in await _rows(writer)


async def test_a_failed_transaction_fails_every_write_of_its_batch(
    writer: BatchWriter,
) -> None:
    await writer.run(_insert(1))
    pending = [
        writer.run(_insert(10)),
        # ends the batch's transaction behind the writer's back, as an I/O error would
        writer.run(lambda db: db.execute("ROLLBACK")),
        writer.run(_insert(11)),
    ]
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


async def test_close_commits_what_is_queued_then_refuses(writer: BatchWriter) -> None:
    pending = [writer.run(_insert(k)) for k in range(50)]
    await writer.close()
    assert [await p for p in pending] == [1] * 50
    with pytest.raises(RuntimeError, match="not open"):
        writer.run(_insert(99))


async def test_a_write_lock_held_elsewhere_is_waited_for_without_blocking(
    writer: BatchWriter, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "w.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t (k, v) VALUES (1, 'other')")
    pending = writer.run(_insert(2))
    ticks = 0
    while ticks < 20:  # the event loop keeps turning while the write waits for the lock
        await asyncio.sleep(0.005)
        ticks += 1
    assert not pending.done()
    other.execute("COMMIT")
    assert await pending == 1
    assert await _rows(writer) == [(1, "other"), (2, "x")]


async def test_a_lock_held_too_long_fails_the_batch_by_name(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "w.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=0")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    writer = BatchWriter(db, lock_timeout=0.2)
    other = sqlite3.connect(tmp_path / "w.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="another process held the write lock"):
        await writer.run(_insert(1))
    other.execute("ROLLBACK")
    assert await writer.run(_insert(1)) == 1  # and works again once the lock is free
    await writer.close()


async def test_acknowledgements_share_commits_with_job_completions(tmp_path: Path) -> None:
    """Webhook intakes and workers' writes queued at the same moment commit together."""
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.open()
    try:
        await store.intake([_webhook(f"a{i}", f"lane{i}") for i in range(40)])
        jobs = await store.claim_jobs(40, 30.0)
        before = store.transactions
        await asyncio.gather(
            *(store.complete_job(job.id) for job in jobs),
            *(store.intake([_webhook(f"b{i}", f"lane{i}")]) for i in range(40)),
        )
        assert store.transactions - before == 1
        counts = await store.job_counts()
        assert counts["done"] == 40
        assert counts["ready"] == 40
    finally:
        await store.close()


async def test_the_log_is_checkpointed_while_writes_go_on(tmp_path: Path) -> None:
    """The writer does not checkpoint at its commits; the store does it in a thread, and the
    log stays bounded (16 MiB and what comes in meanwhile) instead of growing with every write."""
    path = tmp_path / "s.sqlite3"
    store = SqliteStore(path)
    await store.open()
    try:
        for i in range(1500):  # one commit each: some 60 MB of log if never checkpointed
            await store.intake([_webhook(str(i), "l", b"x" * 200)])
        assert await asyncio.to_thread(os.path.getsize, f"{path}-wal") < 24 << 20
        assert (await store.job_counts())["ready"] == 1500
    finally:
        await store.close()


async def test_the_log_starts_over_in_the_checkpoint_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the log has passed its limit, a checkpoint starts it over from its beginning and
    writes its new header itself (the write whose sync would otherwise fall to the next commit,
    on the event loop)."""
    monkeypatch.setattr(sqlite_store, "_LOG_LIMIT", 8)
    path = tmp_path / "s.sqlite3"
    store = SqliteStore(path)
    await store.open()
    try:
        for i in range(30):
            await store.intake([_webhook(str(i), f"l{i}", b"x" * 2000)])
        restarts = await asyncio.to_thread(_log_restarts, path)
        await store._checkpoint()
        # started over, and no commit of the writer came since: the checkpoint wrote it
        assert await asyncio.to_thread(_log_restarts, path) == restarts + 1
        await store.intake([_webhook("after", "l", b"x")])
        assert (await store.job_counts())["ready"] == 31
    finally:
        await store.close()


def _log_restarts(path: Path) -> int:
    """The checkpoint sequence number in the log's header: it counts the log's restarts."""
    with open(f"{path}-wal", "rb") as wal:
        header = wal.read(32)
    return int.from_bytes(header[12:16], "big")
