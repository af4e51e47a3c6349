"""The SQLite store's one writing connection: a thread that commits writes in batches.

A write is a function of the connection. Whatever is queued while a transaction runs goes
into the next one together: one ``BEGIN IMMEDIATE … COMMIT`` and one wake-up of the event loop
for the whole batch, instead of a commit and a thread round trip per statement. Under load
that is what lets sixteen workers and the webhook intake share one SQLite file.

Each write runs inside a savepoint, so a write that raises is undone alone and its caller gets
the exception while the rest of its batch commits. When the transaction as a whole fails
(disk full, I/O error), every write of the batch gets that error and none of them is kept.
Writes are applied in the order they were queued.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["BatchWriter"]

log = logging.getLogger("extmsg.store")

T = TypeVar("T")

Write = Callable[[sqlite3.Connection], Any]


class _Item:
    __slots__ = ("alone", "fn", "future")

    def __init__(self, fn: Write, future: asyncio.Future[Any], alone: bool) -> None:
        self.fn = fn
        self.future = future
        self.alone = alone


_STOP = object()

# Outcomes of one batch, settled on the event loop in one call.
_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


class BatchWriter:
    """Run write functions on one connection in a thread of its own, batched into transactions.

    :param connect: opens the connection (called in the writer's thread).
    :param max_batch: writes after which a transaction is committed even if more are queued.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], *, max_batch: int = 512) -> None:
        self._connect = connect
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._stopping = False
        self.transactions = 0

    async def start(self) -> None:
        """Open the connection in the writer's thread; raises what opening it raised."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        opened: asyncio.Future[None] = loop.create_future()
        self._stopped = loop.create_future()
        self._thread = threading.Thread(
            target=self._main, args=(opened,), name="extmsg-sqlite-writer", daemon=True
        )
        self._thread.start()
        await opened

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``fn`` for the next transaction; the future answers its result once that has
        committed. Queued at the call, so writes apply in the order of the calls."""
        return self._submit(fn, alone=False)

    def run_alone(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``fn`` to run outside any batch: it manages its own transactions (migrations)."""
        return self._submit(fn, alone=True)

    def _submit(self, fn: Callable[[sqlite3.Connection], T], *, alone: bool) -> asyncio.Future[T]:
        if self._loop is None or self._stopped is None or self._stopped.done() or self._stopping:
            raise RuntimeError("the store is not open")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Item(fn, future, alone))
        return future

    async def stop(self) -> None:
        """Apply what is queued, then close the connection and end the thread."""
        if self._stopped is None or self._thread is None:
            return
        if not self._stopped.done():
            if not self._stopping:
                self._stopping = True
                self._queue.put(_STOP)
            await asyncio.shield(self._stopped)
        self._thread = None

    # -- the writer's thread --------------------------------------------------------------------
    def _main(self, opened: asyncio.Future[None]) -> None:
        try:
            db = self._connect()
        except BaseException as exc:
            self._call(_settle, [(opened, None, exc)])
            self._call(_settle, [(self._stopped, None, None)])
            return
        self._call(_settle, [(opened, None, None)])
        carry: _Item | None = None
        try:
            while True:
                first = carry if carry is not None else self._queue.get()
                carry = None
                if first is _STOP:
                    break
                assert isinstance(first, _Item)
                if first.alone:
                    self._call(_settle, [_apply(db, first)])
                    continue
                batch = [first]
                stop = False
                while len(batch) < self._max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    assert isinstance(item, _Item)
                    if item.alone:
                        carry = item
                        break
                    batch.append(item)
                try:
                    outcomes = self._commit(db, batch)
                except Exception as exc:  # the connection itself failed (SAVEPOINT refused)
                    _abandon(db)
                    outcomes = [(item.future, None, exc) for item in batch]
                self._call(_settle, outcomes)
                if stop:
                    break
        finally:
            db.close()
            self._call(_settle, [(self._stopped, None, None)])

    def _commit(self, db: sqlite3.Connection, batch: list[_Item]) -> list[_Outcome]:
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [(item.future, None, exc) for item in batch]
        outcomes: list[_Outcome] = []
        for item in batch:
            db.execute("SAVEPOINT write")
            try:
                result = item.fn(db)
            except Exception as exc:
                if not _undo_savepoint(db):
                    # The error ended the whole transaction: nothing of the batch is kept.
                    return [(i.future, None, exc) for i in batch]
                outcomes.append((item.future, None, exc))
                continue
            db.execute("RELEASE write")
            outcomes.append((item.future, result, None))
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            _abandon(db)
            return [(item.future, None, exc) for item in batch]
        self.transactions += 1
        return outcomes

    def _call(self, fn: Callable[[list[_Outcome]], None], outcomes: list[Any]) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, outcomes)
        except RuntimeError:
            log.warning(
                "the event loop closed before %d store write(s) were answered", len(outcomes)
            )


def _apply(db: sqlite3.Connection, item: _Item) -> _Outcome:
    try:
        return (item.future, item.fn(db), None)
    except Exception as exc:
        _abandon(db)
        return (item.future, None, exc)


def _abandon(db: sqlite3.Connection) -> None:
    """Roll back whatever transaction is open, as far as the connection still can."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            log.warning("rolling back a failed store transaction failed", exc_info=True)


def _undo_savepoint(db: sqlite3.Connection) -> bool:
    """Roll back to the open savepoint; answer whether the transaction is still open."""
    if not db.in_transaction:
        return False
    try:
        db.execute("ROLLBACK TO write")
        db.execute("RELEASE write")
    except sqlite3.Error:
        _abandon(db)
        return False
    return True


def _settle(outcomes: list[_Outcome]) -> None:
    for future, result, error in outcomes:
        if future.done():
            continue  # its caller was cancelled; the write itself has been applied or not
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
