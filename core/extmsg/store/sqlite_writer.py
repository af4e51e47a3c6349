"""The SQLite store's writing connection: writes queued in one turn of the event loop commit
together, on the loop's own thread.

A write is a function of the connection. Whatever is queued while the event loop runs its
current callbacks goes into one ``BEGIN IMMEDIATE … COMMIT`` at the end of that turn: the
webhook intake, the workers' completions and the dispatcher's claims share a commit. The
busier the server, the longer its turns and the larger the batches; an idle one commits a
lone write at once.

Why on the loop's thread: SQLite's own work for such a batch is some tens of microseconds
plus the commit's write to the log. A thread would run it in parallel only in theory — every
statement hands the GIL back and forth with a busy event loop, and each hand-over can wait for
the interpreter's switch interval — so the same batch took milliseconds there. Writes that may
run long (purges) do not come here, and the log is checkpointed in a thread
(``wal_autocheckpoint`` is off on this connection).

A write that raises is undone alone and its caller gets the exception while the rest of its
batch commits. The writes of a batch run one after another inside one savepoint; when one
raises, the batch is rolled back to that savepoint, and the writes up to the failing one run
again, each inside a savepoint of its own (the failing one is undone alone there), before the
rest go on together. A savepoint per write would cost two statements per write where a batch
that goes through costs two in all, and writes rarely raise. So a write may run more than once
before its batch commits: it must do nothing but its statements on the connection (and
compute its result). When the transaction as a whole fails (disk full, I/O error), every write
of the batch gets that error and none of them is kept. Writes are applied in the order they
were queued. While another process holds the file's write lock
the batch waits for it without blocking the loop, up to ``lock_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

__all__ = ["BatchWriter"]

log = logging.getLogger("extmsg.store")

T = TypeVar("T")

Write = Callable[[sqlite3.Connection], Any]


class BatchWriter:
    """Apply write functions on ``db`` in batches, one transaction per turn of the event loop.

    :param db: the connection; it must not autocheckpoint and its busy timeout must be short
        (the batch retries a busy lock itself, asynchronously).
    :param lock_timeout: how long a batch waits for another process's write lock in all.
    :param on_commit: called after each commit with the number of writes it held.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        lock_timeout: float = 5.0,
        max_batch: int = 1024,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self._db: sqlite3.Connection | None = db
        self._lock_timeout = lock_timeout
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._queue: list[tuple[Write, asyncio.Future[Any]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._scheduled = False
        self._held = 0
        self.transactions = 0

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection, for reads on the loop's thread: between two commits no transaction
        is open on it, so they see what is committed and nothing else."""
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``fn`` for this turn's transaction; the future answers its result once that
        has committed. Queued at the call, so writes apply in the order of the calls."""
        if self._db is None:
            raise RuntimeError("the store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((fn, future))
        self._schedule(loop)
        return future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._scheduled or self._flushing is not None or self._held or not self._queue:
            return
        self._scheduled = True
        loop.call_soon(self._flush_soon)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Commit nothing while the block runs; writes queue up meanwhile and commit after it.

        For work that needs the file's write lock for a while (a checkpoint of the log): it
        gets the lock at once instead of competing with a commit in every turn of the loop.
        """
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            if self._db is not None:
                self._schedule(asyncio.get_running_loop())

    async def close(self) -> None:
        """Commit what is queued, then close the connection."""
        while self._flushing is not None or self._queue:
            if self._flushing is None:
                self._start_flush()
            if self._flushing is not None:
                await asyncio.shield(self._flushing)
        db, self._db = self._db, None
        if db is not None:
            db.close()

    # -- committing -----------------------------------------------------------------------------
    def _flush_soon(self) -> None:
        self._scheduled = False
        if self._held:
            return  # hold() schedules the flush when it ends
        if self._flushing is None and self._queue and not self._try_flush():
            self._start_flush()

    def _start_flush(self) -> None:
        """Flush in a task: the write lock is taken (another process holds it)."""
        self._flushing = asyncio.get_running_loop().create_task(
            self._flush_when_free(), name="extmsg-sqlite-flush"
        )

    def _try_flush(self) -> bool:
        """Commit the queue now; answer False, leaving the queue as it was, if the file's write
        lock is held by another connection."""
        db = self._db
        if db is None:
            return True
        batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                self._queue[:0] = batch
                return False
            _settle([(f, None, exc) for _, f in batch])
            self._more()
            return True
        except sqlite3.Error as exc:
            _settle([(f, None, exc) for _, f in batch])
            self._more()
            return True
        _settle(self._commit(db, batch))
        self._more()
        return True

    def _more(self) -> None:
        """Writes beyond the batch size, or queued meanwhile, go in the next turn."""
        self._schedule(asyncio.get_running_loop())

    async def _flush_when_free(self) -> None:
        deadline = time.monotonic() + self._lock_timeout
        delay = 0.001
        try:
            while self._queue:
                if self._try_flush():
                    continue
                if time.monotonic() >= deadline:
                    batch, self._queue = self._queue, []
                    error = sqlite3.OperationalError(
                        f"database is locked: another process held the write lock for over"
                        f" {self._lock_timeout:g}s"
                    )
                    _settle([(f, None, error) for _, f in batch])
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
        finally:
            self._flushing = None
            self._more()

    def _commit(self, db: sqlite3.Connection, batch: _Batch) -> list[_Outcome]:
        """Apply ``batch`` in the transaction just begun, then commit it."""
        outcomes: list[_Outcome] = []
        try:
            rest = batch
            while rest:
                kept, failed = _apply_together(db, rest)
                outcomes += kept
                if failed is None:
                    break
                index, error = failed
                if index == 0:  # rolled back to right before it: it was undone alone
                    outcomes.append((rest[0][1], None, error))
                else:  # again up to the failing write, each alone
                    outcomes += _apply_each(db, rest[: index + 1])
                rest = rest[index + 1 :]
            db.execute("COMMIT")
        except _TransactionLost as lost:
            # The error ended the whole transaction: nothing of the batch is kept.
            return [(f, None, lost.error) for _, f in batch]
        except sqlite3.Error as exc:
            _abandon(db)
            return [(f, None, exc) for _, f in batch]
        self.transactions += 1
        if self._on_commit is not None:
            self._on_commit(len(batch))
        return outcomes


_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]
_Batch = list[tuple[Write, asyncio.Future[Any]]]


class _TransactionLost(Exception):
    """A write's error ended the batch's whole transaction."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _apply_together(
    db: sqlite3.Connection, writes: _Batch
) -> tuple[list[_Outcome], tuple[int, Exception] | None]:
    """Apply ``writes`` inside one savepoint: their outcomes and None, or, when one raised,
    no outcomes and its index and error (all of ``writes`` is rolled back then)."""
    db.execute("SAVEPOINT batch")
    outcomes: list[_Outcome] = []
    for index, (fn, future) in enumerate(writes):
        try:
            result = fn(db)
        except Exception as exc:
            if not _undo_savepoint(db, "batch"):
                raise _TransactionLost(exc) from exc
            return [], (index, exc)
        if not db.in_transaction:
            # A statement of the write ended the transaction (as an I/O error would): the
            # next writes must not run outside it.
            raise sqlite3.OperationalError("a write ended the batch's transaction")
        outcomes.append((future, result, None))
    db.execute("RELEASE batch")
    return outcomes, None


def _apply_each(db: sqlite3.Connection, writes: _Batch) -> list[_Outcome]:
    """Apply ``writes`` each inside a savepoint of its own, so one that raises is undone
    alone."""
    outcomes: list[_Outcome] = []
    for fn, future in writes:
        db.execute("SAVEPOINT write")
        try:
            result = fn(db)
        except Exception as exc:
            if not _undo_savepoint(db, "write"):
                raise _TransactionLost(exc) from exc
            outcomes.append((future, None, exc))
            continue
        db.execute("RELEASE write")
        outcomes.append((future, result, None))
    return outcomes


def _busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _undo_savepoint(db: sqlite3.Connection, name: str) -> bool:
    """Roll back to the savepoint ``name``; answer whether the transaction is still open."""
    if not db.in_transaction:
        return False
    try:
        db.execute(f"ROLLBACK TO {name}")
        db.execute(f"RELEASE {name}")
    except sqlite3.Error:
        _abandon(db)
        return False
    return True


def _abandon(db: sqlite3.Connection) -> None:
    """Roll back whatever transaction is open, as far as the connection still can."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            log.warning("rolling back a failed store transaction failed", exc_info=True)


def _settle(outcomes: list[_Outcome]) -> None:
    for future, result, error in outcomes:
        if future.done():
            continue  # its caller was cancelled; the write itself has been applied or not
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
