"""Outbound calls from the emulated Unblu to a channel's ``webhookEndpoint``.

Every call is signed like Unblu's hookshot does (``x-unblu-signature`` = HMAC-SHA1,
``x-unblu-signature-256`` = HMAC-SHA256, both hex, over the raw body, keyed with the channel's
``webhookSecret``) and carries ``User-Agent: Unblu-Hookshot``, ``X-Unblu-Delivery`` (stable
across retries) and ``X-Unblu-Retry-No`` (0, 1, 2, …). Outbound requests (V4 channels) name
themselves in ``x-unblu-service-name`` and carry ``X-Unblu-Invocation-ID``; legacy webhook
events (V1 to V3 channels) use ``x-unblu-event`` and ``X-Unblu-Event-ID``.

Deliveries are queued per channel and sent strictly in order by one worker task per channel;
a failed attempt (non-2xx status, connection error, or no answer within the channel's
``outboundTimeoutMillis``) is retried with exponential backoff up to ``retries`` times before
the next delivery of that channel is started. Every delivery and attempt is recorded for the
agent API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp

from ..unblu.signing import sign_headers
from .state import new_id, now_ms

__all__ = ["Attempt", "Deliverer", "Delivery", "DeliveryStyle", "Target", "Targets"]

log = logging.getLogger("extmsg.sandbox.delivery")

DeliveryStyle = Literal["request", "event"]
DeliveryState = Literal["pending", "delivered", "failed", "dropped"]

USER_AGENT = "Unblu-Hookshot"
_MAX_RESPONSE_BYTES = 1_000_000


class Target(Protocol):
    """Where deliveries go: a channel's ``webhookEndpoint`` or a webhook registration's."""

    @property
    def id(self) -> str: ...

    @property
    def webhook_endpoint(self) -> str: ...

    @property
    def webhook_secret(self) -> str | None: ...

    @property
    def outbound_timeout_millis(self) -> int: ...


class Targets(Mapping[str, Target]):
    """Several id → target tables read as one (channels and webhook registrations)."""

    def __init__(self, *tables: Mapping[str, Target]) -> None:
        self._tables = tables

    def __getitem__(self, key: str) -> Target:
        for table in self._tables:
            if key in table:
                return table[key]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        for table in self._tables:
            yield from table

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables)


@dataclass
class Attempt:
    """One HTTP POST of a delivery."""

    retry_no: int
    timestamp: int
    duration_ms: float
    status: int | None = None
    error: str | None = None
    response_body: Any = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class Delivery:
    """A request or event for one channel, with its attempts so far."""

    id: str
    invocation_id: str
    channel_id: str
    name: str
    style: DeliveryStyle
    body: dict[str, Any]
    raw: bytes
    created: int
    message_id: str | None = None
    url: str | None = None
    state: DeliveryState = "pending"
    attempts: list[Attempt] = field(default_factory=list)
    on_success: Callable[[Delivery], None] | None = None
    on_failure: Callable[[Delivery], None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def response_body(self) -> Any:
        """The body of the last answer (the successful one once delivered)."""
        return self.attempts[-1].response_body if self.attempts else None

    def headers_for(self, retry_no: int, secret: str | None) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Unblu-Delivery": self.id,
            "X-Unblu-Retry-No": str(retry_no),
        }
        if self.style == "request":
            headers["x-unblu-service-name"] = self.name
            headers["X-Unblu-Invocation-ID"] = self.invocation_id
        else:
            headers["x-unblu-event"] = self.name
            headers["X-Unblu-Event-ID"] = self.invocation_id
        if secret:
            headers.update(sign_headers(secret, self.raw))
        return headers


class Deliverer:
    """Per-target ordered delivery with retries; ``channels`` (channels and webhook
    registrations by id) is read at every attempt."""

    def __init__(
        self,
        channels: Mapping[str, Target],
        *,
        retries: int = 5,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        max_records: int = 5000,
    ) -> None:
        self._channels = channels
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.max_records = max_records
        self.records: list[Delivery] = []
        self._queues: dict[str, asyncio.Queue[Delivery]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        #: Called whenever a delivery changed (queued, attempted, finished).
        self.on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- lifecycle -------------------------------------------------------------------------
    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(auto_decompress=True)
        return self._session

    async def close(self) -> None:
        """Stop the workers (pending deliveries are dropped) and close the HTTP client."""
        workers = list(self._workers.values())
        self._workers.clear()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for d in self.records:
            if d.state == "pending":
                d.state = "dropped"
                d.finished.set()
        self._queues.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def drain(self) -> None:
        """Wait until every queued delivery has finished (delivered, failed or dropped)."""
        while pending := [d for d in self.records if not d.finished.is_set()]:
            await asyncio.gather(*(d.finished.wait() for d in pending))

    def forget_channel(self, channel_id: str) -> None:
        """Stop the channel's worker; its pending deliveries are dropped."""
        task = self._workers.pop(channel_id, None)
        if task is not None:
            task.cancel()
        self._queues.pop(channel_id, None)
        for d in self.records:
            if d.channel_id == channel_id and d.state == "pending":
                d.state = "dropped"
                d.finished.set()

    def clear(self) -> None:
        for channel_id in list(self._workers):
            self.forget_channel(channel_id)
        self.records.clear()

    # -- queueing --------------------------------------------------------------------------
    def _new(
        self,
        channel: Target,
        name: str,
        style: DeliveryStyle,
        body: dict[str, Any],
        message_id: str | None,
    ) -> Delivery:
        d = Delivery(
            id=new_id(),
            invocation_id=new_id(),
            channel_id=channel.id,
            name=name,
            style=style,
            body=body,
            raw=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
            created=now_ms(),
            message_id=message_id,
            url=channel.webhook_endpoint,
        )
        self.records.append(d)
        self._trim()
        self._changed()
        return d

    def _trim(self) -> None:
        excess = len(self.records) - self.max_records
        if excess <= 0:
            return
        keep: list[Delivery] = []
        for d in self.records:
            if excess > 0 and d.finished.is_set():
                excess -= 1
                continue
            keep.append(d)
        self.records[:] = keep

    def enqueue(
        self,
        channel: Target,
        name: str,
        style: DeliveryStyle,
        body: dict[str, Any],
        *,
        message_id: str | None = None,
        on_success: Callable[[Delivery], None] | None = None,
        on_failure: Callable[[Delivery], None] | None = None,
    ) -> Delivery:
        """Queue a delivery behind the channel's earlier ones; returns its record."""
        d = self._new(channel, name, style, body, message_id)
        d.on_success = on_success
        d.on_failure = on_failure
        queue = self._queues.get(channel.id)
        if queue is None:
            queue = self._queues[channel.id] = asyncio.Queue()
        queue.put_nowait(d)
        if channel.id not in self._workers:
            task = asyncio.get_running_loop().create_task(
                self._work(channel.id, queue), name=f"sandbox-delivery-{channel.id}"
            )
            task.add_done_callback(self._worker_done)
            self._workers[channel.id] = task
        return d

    async def call(
        self, channel: Target, name: str, style: DeliveryStyle, body: dict[str, Any]
    ) -> Delivery:
        """Send once, now, outside the queue (used for pings, whose caller waits)."""
        d = self._new(channel, name, style, body, None)
        attempt = await self._attempt(channel, d, 0)
        d.state = "delivered" if attempt.ok else "failed"
        d.finished.set()
        return d

    # -- work ------------------------------------------------------------------------------
    def _worker_done(self, task: asyncio.Task[None]) -> None:
        for channel_id, t in list(self._workers.items()):
            if t is task:
                del self._workers[channel_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("sandbox delivery worker died", exc_info=task.exception())

    async def _work(self, channel_id: str, queue: asyncio.Queue[Delivery]) -> None:
        while True:
            d = await queue.get()
            try:
                await self._deliver(d)
            except asyncio.CancelledError:
                d.state = "dropped"
                d.finished.set()
                raise
            except Exception:
                log.exception("sandbox delivery %s to channel %s crashed", d.id, channel_id)
                d.state = "failed"
            finally:
                d.finished.set()
                queue.task_done()
                self._changed()

    async def _deliver(self, d: Delivery) -> None:
        for retry_no in range(self.retries + 1):
            channel = self._channels.get(d.channel_id)
            if channel is None:
                d.state = "dropped"
                return
            attempt = await self._attempt(channel, d, retry_no)
            if attempt.ok:
                d.state = "delivered"
                if d.on_success is not None:
                    d.on_success(d)
                return
            if retry_no < self.retries:
                log.info(
                    "sandbox delivery %s (%s) to channel %s failed (%s); retry %d of %d",
                    d.id,
                    d.name,
                    d.channel_id,
                    attempt.error or attempt.status,
                    retry_no + 1,
                    self.retries,
                )
                await asyncio.sleep(min(self.backoff * 2**retry_no, self.backoff_max))
        d.state = "failed"
        log.warning(
            "sandbox delivery %s (%s) to channel %s failed after %d attempts",
            d.id,
            d.name,
            d.channel_id,
            len(d.attempts),
        )
        if d.on_failure is not None:
            d.on_failure(d)

    async def _attempt(self, channel: Target, d: Delivery, retry_no: int) -> Attempt:
        d.url = channel.webhook_endpoint
        headers = d.headers_for(retry_no, channel.webhook_secret)
        timeout = aiohttp.ClientTimeout(total=max(channel.outbound_timeout_millis, 1) / 1000)
        started = time.perf_counter()
        attempt = Attempt(retry_no=retry_no, timestamp=now_ms(), duration_ms=0.0)
        d.attempts.append(attempt)
        try:
            async with self._client().post(
                channel.webhook_endpoint, data=d.raw, headers=headers, timeout=timeout
            ) as resp:
                attempt.status = resp.status
                raw = await resp.content.read(_MAX_RESPONSE_BYTES)
                attempt.response_body = _decode(raw)
                if not attempt.ok:
                    attempt.error = f"HTTP {resp.status}"
        except TimeoutError:
            attempt.error = f"no answer within {channel.outbound_timeout_millis} ms"
        except aiohttp.ClientError as exc:
            attempt.error = f"{type(exc).__name__}: {exc}"
        except ValueError as exc:
            attempt.error = f"invalid endpoint {channel.webhook_endpoint!r}: {exc}"
        finally:
            attempt.duration_ms = (time.perf_counter() - started) * 1000
            self._changed()
        return attempt


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw.decode("utf-8", "replace")
    with contextlib.suppress(ValueError):
        return json.loads(text)
    return text
