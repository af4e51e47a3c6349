"""Small asyncio helpers shared by the runtime."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar, cast

__all__ = ["BackgroundTasks", "await_me_maybe"]

T = TypeVar("T")
log = logging.getLogger("extmsg.tasks")


async def await_me_maybe(value: T | Awaitable[T]) -> T:
    """The one rule for hook results: await them if they are awaitable."""
    if inspect.isawaitable(value):
        return await cast("Awaitable[T]", value)
    return value


class BackgroundTasks:
    """Keeps references to fire-and-forget tasks and logs their failures with their name."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def create(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task %s failed", task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
