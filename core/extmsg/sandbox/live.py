"""Live updates for the console: ``GET /sandbox/api/events`` as server-sent events.

One publisher per sandbox runs while a console is connected. It renders everything the console
shows as entities under stable keys (``conversation/<id>``, ``message/<id>``,
``delivery/<id>``, ``channel/<id>``, ``customer/<channel>``, ``entry/<channel>/<id>``,
``outage``), compares them with what it sent before and sends only what changed::

    data: {"reset": false, "upsert": [{"key": "...", "data": {...}}], "remove": ["..."]}

A new console first gets everything (``"reset": true``). Changes to the sandbox wake the
publisher at once (:meth:`LiveFeed.poke`, called after every changing request and delivery
attempt); the customers' fakes, which change on their own, are read every
``poll_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

__all__ = ["LiveFeed", "stream_events"]

log = logging.getLogger("extmsg.sandbox.live")

Snapshot = dict[str, str]
Renderer = Callable[[], Awaitable[dict[str, Any]]]

#: Deliveries the console lists (the newest ones).
DELIVERIES_SHOWN = 60
_HEARTBEAT_SECONDS = 15.0


class LiveFeed:
    """Diffs rendered entities and fans the changes out to every connected console."""

    def __init__(self, render: Renderer, *, poll_seconds: float = 0.5) -> None:
        self._render = render
        self.poll_seconds = poll_seconds
        self._subscribers: set[asyncio.Queue[str | None]] = set()
        self._last: Snapshot = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def poke(self) -> None:
        """Something changed: publish soon."""
        self._wake.set()

    async def subscribe(self) -> asyncio.Queue[str | None]:
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        if self._task is None or self._task.done():
            self._last = await self._snapshot()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sandbox-live")
        queue.put_nowait(_message(True, self._last, []))
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str | None]) -> None:
        self._subscribers.discard(queue)

    async def close(self) -> None:
        """End every stream (the server is stopping)."""
        self._closed = True
        for queue in self._subscribers:
            queue.put_nowait(None)
        self._subscribers.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _snapshot(self) -> Snapshot:
        entities = await self._render()
        return {key: json.dumps(value, sort_keys=True) for key, value in entities.items()}

    async def _run(self) -> None:
        while self._subscribers and not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0.03)  # let a burst of changes settle into one message
            try:
                current = await self._snapshot()
            except Exception:
                log.exception("sandbox console: rendering the live view failed")
                continue
            changed = {k: v for k, v in current.items() if self._last.get(k) != v}
            removed = [k for k in self._last if k not in current]
            self._last = current
            if not changed and not removed:
                continue
            message = _message(False, changed, removed)
            for queue in list(self._subscribers):
                queue.put_nowait(message)


def _message(reset: bool, upsert: Snapshot, remove: list[str]) -> str:
    items = ",".join(f'{{"key":{json.dumps(k)},"data":{v}}}' for k, v in upsert.items())
    return f'{{"reset":{json.dumps(reset)},"upsert":[{items}],"remove":{json.dumps(remove)}}}'


async def stream_events(request: web.Request, feed: LiveFeed) -> web.StreamResponse:
    """Serve ``feed`` to one console as ``text/event-stream`` until it goes away."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    queue = await feed.subscribe()
    try:
        await response.write(b"retry: 1000\n\n")
        while True:
            try:
                async with asyncio.timeout(_HEARTBEAT_SECONDS):
                    message = await queue.get()
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if message is None:
                break
            await response.write(f"data: {message}\n\n".encode())
    except ConnectionResetError:
        pass  # the console went away
    finally:
        feed.unsubscribe(queue)
    return response
