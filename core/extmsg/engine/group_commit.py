"""Group commit: concurrent intake requests share one store transaction.

Every webhook must be durable before it is acknowledged, and one transaction per request makes
the commit the bottleneck. A request that finds the writer idle is written at once, so a quiet
server adds no latency. Requests that arrive while a transaction is being written queue up and
go together in the next one, which waits at most ``window`` (from the first of them) for more
company; a batch that reaches the size cap goes at once. Each waiting caller then receives
exactly its own results.

If a shared transaction fails, nothing of it was stored; the requests are then written one by
one, so a single bad request fails only its own caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence

from ..metrics import Metrics
from ..store.base import Intake, IntakeResult, Store

__all__ = ["GroupCommit"]

log = logging.getLogger("extmsg.engine")

Committed = Callable[[Sequence[Intake], Sequence[IntakeResult]], None]


class _Request:
    __slots__ = ("arrived", "future", "items")

    def __init__(
        self, items: list[Intake], future: asyncio.Future[list[IntakeResult]], arrived: float
    ) -> None:
        self.items = items
        self.future = future
        self.arrived = arrived


class GroupCommit:
    """Batches :meth:`Store.intake` calls.

    :param window: seconds a batch that queued up behind a running transaction may wait for
        more requests, counted from its first request's arrival (0: no waiting).
    :param max_items: a batch that reaches this many items is written without waiting; a
        request is never split across batches.
    :param on_commit: called after each successful transaction with its items and results.
    """

    def __init__(
        self,
        store: Store,
        *,
        window: float,
        max_items: int = 256,
        on_commit: Committed | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self._store = store
        self._window = max(window, 0.0)
        self._max_items = max_items
        self._on_commit = on_commit
        self._metrics = metrics
        self._queue: deque[_Request] = deque()
        self._queued_items = 0
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Transactions written so far (for tests and benchmarks).
        self.transactions = 0

    async def submit(self, items: Sequence[Intake]) -> list[IntakeResult]:
        """Write ``items`` in a shared transaction; return their results in order.

        :raises Exception: what the store raised when this request's own transaction failed;
            none of its items was stored then.
        """
        if not items:
            return []
        loop = asyncio.get_running_loop()
        request = _Request(list(items), loop.create_future(), loop.time())
        self._queue.append(request)
        self._queued_items += len(request.items)
        if self._queued_items >= self._max_items:
            self._full.set()
        if self._task is None:
            self._task = loop.create_task(self._run(), name="extmsg-group-commit")
        return await request.future

    async def drain(self) -> None:
        """Wait until every request submitted so far has been written (or has failed)."""
        while (task := self._task) is not None:
            await asyncio.shield(task)

    @property
    def pending(self) -> int:
        """Requests waiting to be written."""
        return len(self._queue)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        idle = True  # the first batch found the writer idle: no reason to wait
        try:
            while self._queue:
                wait = self._queue[0].arrived + self._window - loop.time()
                if not idle and wait > 0 and self._queued_items < self._max_items:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._full.wait()
                await self._commit(self._take())
                idle = False
        finally:
            self._task = None
            for request in self._queue:  # only left when this task was cancelled
                request.future.cancel()
            self._queue.clear()
            self._queued_items = 0

    def _take(self) -> list[_Request]:
        batch: list[_Request] = []
        size = 0
        while self._queue:
            n = len(self._queue[0].items)
            if batch and size + n > self._max_items:
                break
            batch.append(self._queue.popleft())
            size += n
        self._queued_items -= size
        return batch

    async def _commit(self, batch: list[_Request]) -> None:
        items = [item for request in batch for item in request.items]
        try:
            results = await self._store.intake(items)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc=exc)
                return
            log.warning(
                "a shared intake transaction of %d requests failed (%s); writing them one by one",
                len(batch),
                type(exc).__name__,
            )
            for request in batch:
                await self._commit([request])
            return
        except BaseException:
            for request in batch:
                request.future.cancel()
            raise
        self.transactions += 1
        if len(results) != len(items):
            error = RuntimeError(
                f"the store returned {len(results)} results for {len(items)} intake items"
            )
            for request in batch:
                _settle(request.future, exc=error)
            return
        offset = 0
        for request in batch:
            n = len(request.items)
            _settle(request.future, results=results[offset : offset + n])
            offset += n
        if self._metrics is not None:
            self._metrics.intake_batch.observe(len(items))
        if self._on_commit is not None:
            try:
                self._on_commit(items, results)
            except Exception:
                log.exception("the intake commit callback failed")


def _settle(
    future: asyncio.Future[list[IntakeResult]],
    *,
    results: list[IntakeResult] | None = None,
    exc: BaseException | None = None,
) -> None:
    """Hand a caller its outcome, unless it stopped waiting (its items stay written)."""
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(results or [])
