"""A send that would go out late is refused at the last moment before its bytes are written.

:meth:`extmsg.engine.Engine.hold` renews a job's lease right before a call that sends (or, a
moment after the claim or a renewal set it, relies on that lease, and counts the hold from when
that write was asked for). Between that hold and the moment the request is written to the
socket the process can stop — SIGSTOP, a frozen VM, a stalled event loop, a connection being
opened — and wake up after the lease ran out and another worker took the job over, looked at
the remote (the message is not there yet) and sent it. Had the stopped process then gone on,
the message would arrive twice.

So a hold is remembered for the task that made it (a context variable, which the tasks it
starts inherit), and every HTTP request made by a session from :func:`client_session` (or any
session built with ``request_class=GuardedRequest``) checks, synchronously, right before its
first bytes are written, that the hold is younger than its bound (``lease_seconds / 2``, on
the monotonic clock, which runs on while a process is stopped). An older hold raises
:class:`StaleHold` and nothing is written. The lease that hold renewed runs until at least
``lease_seconds`` after it was asked for, so a call that did go out left before the lease ran
out, half a lease before anyone else could claim the job and look: the new holder's look-up
sees it.

The check is made by the request itself (:class:`GuardedRequest`), where aiohttp writes: when
the request line and headers are written, and again when the body is, which on Python 3.11 a
task of its own does a loop turn later. It costs a context-variable read and a clock read per
request; a session carrying trace configs would instead pay for aiohttp's tracing (a signal
awaited at every stage of every request), which is why :func:`trace_config`, the earlier way
to the same check, is deprecated.

What this cannot close: a stop after the check and before the bytes reach the kernel (a few
instructions), and a body too large for the socket's buffer (a file), whose rest is written
when the process resumes. A plugin whose sends do not go through a guarded session (or that
does not call :func:`check` itself) keeps the wider window.
"""

from __future__ import annotations

import time
import warnings
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from .errors import LeaseLost

if TYPE_CHECKING:
    from types import SimpleNamespace

    from aiohttp.abc import AbstractStreamWriter
    from aiohttp.connector import Connection

__all__ = [
    "GuardedRequest",
    "Hold",
    "StaleHold",
    "caused_by_lost_lease",
    "check",
    "client_session",
    "current",
    "hold_taken",
    "stale_hold",
    "trace_config",
]


class StaleHold(LeaseLost):
    """A send was about to go out longer after its job's hold than the hold's bound: the job
    may have been taken over meanwhile, so nothing was written."""

    def __init__(self, job_id: int, fence: int, age: float, bound: float) -> None:
        super().__init__(job_id, fence)
        self.args = (
            f"job {job_id}: its send would have gone out {age:.1f}s after its hold "
            f"(at most {bound:g}s); the job may have been taken over meanwhile, so it was not sent",
        )
        self.age = age
        self.bound = bound


@dataclass(frozen=True, slots=True)
class Hold:
    """A job held for sending: when (monotonic, taken before the hold was asked for) and for
    how long a request may still start under it."""

    job_id: int
    fence: int
    at: float
    bound: float

    def check(self) -> None:
        age = time.monotonic() - self.at
        if age > self.bound:
            raise StaleHold(self.job_id, self.fence, age, self.bound)


_held: ContextVar[Hold | None] = ContextVar("extmsg_send_hold", default=None)


def hold_taken(hold: Hold) -> None:
    """Remember ``hold`` for the calling task (and the tasks it starts from now on)."""
    _held.set(hold)


def current() -> Hold | None:
    """The calling task's latest hold, if it made one."""
    return _held.get()


def check() -> None:
    """Raise :class:`StaleHold` when the calling task's latest hold is older than its bound;
    for a send that does not go through a guarded session (call it right before writing)."""
    hold = _held.get()
    if hold is not None:
        hold.check()


class GuardedRequest(aiohttp.ClientRequest):
    """An aiohttp request that checks its task's hold right before it writes: for
    ``aiohttp.ClientSession(request_class=...)`` (what :func:`client_session` passes).

    The check runs when the request line and headers are written (or, by an aiohttp that keeps
    them to go out with the body, buffered) and again right before the body is written, which
    on Python 3.11 a task of its own does a loop turn later. A refusal of the first raises
    :class:`StaleHold` itself; one of the second (none of the body written, nor the headers
    where aiohttp sends them with it) reaches the caller as an
    ``aiohttp.ClientConnectionError`` caused by it, as aiohttp reports a body that failed to
    write."""

    async def send(self, conn: Connection) -> aiohttp.ClientResponse:
        check()
        return await super().send(conn)

    # aiohttp 3.10 passes (writer, conn), later versions a content length as well.
    async def write_bytes(
        self, writer: AbstractStreamWriter, conn: Connection, *args: Any, **kwargs: Any
    ) -> None:
        try:
            check()
        except StaleHold as refused:
            _refuse_body(conn, refused)
            return
        await super().write_bytes(writer, conn, *args, **kwargs)


def _refuse_body(conn: Connection, refused: StaleHold) -> None:
    # The caller is awaiting the response on this connection: fail it there, as aiohttp does
    # with a body that could not be written (which also keeps the connection from reuse).
    error = aiohttp.ClientConnectionError(f"the request was not sent: {refused}")
    error.__cause__ = refused
    if conn.protocol is not None:
        conn.protocol.set_exception(error)


def client_session(**kwargs: Any) -> aiohttp.ClientSession:
    """An ``aiohttp.ClientSession`` (taking the same arguments) whose requests are
    :class:`GuardedRequest`: a send about to go out long after its job's hold is refused."""
    request_class = kwargs.setdefault("request_class", GuardedRequest)
    if not issubclass(request_class, GuardedRequest):
        raise TypeError(f"request_class must subclass sendguard.GuardedRequest: {request_class}")
    return aiohttp.ClientSession(**kwargs)


async def _check(_session: aiohttp.ClientSession, _ctx: SimpleNamespace, _params: Any) -> None:
    check()


def trace_config() -> aiohttp.TraceConfig:
    """Deprecated: use :func:`client_session` (or ``request_class=GuardedRequest``), which
    checks at the same moments without the cost of aiohttp's tracing on every request.

    For ``aiohttp.ClientSession(trace_configs=[...])``: requests check the hold once a
    connection is at hand (created or reused) and again right before the first chunk of the
    body is written. A refusal from the connection check raises :class:`StaleHold` itself; one
    from the body check reaches the caller as an ``aiohttp.ClientConnectionError`` caused by
    it."""
    warnings.warn(
        "sendguard.trace_config() is deprecated: build the session with "
        "sendguard.client_session() (or request_class=sendguard.GuardedRequest)",
        DeprecationWarning,
        stacklevel=2,
    )
    config = aiohttp.TraceConfig()
    config.on_connection_create_end.append(_check)
    config.on_connection_reuseconn.append(_check)
    config.on_request_chunk_sent.append(_check)
    config.freeze()
    return config


def caused_by_lost_lease(error: BaseException) -> bool:
    """Whether ``error`` is, or was caused by, a lost lease (a refused stale send included):
    a client or a plugin may wrap it in an error of its own."""
    return _cause(error, LeaseLost) is not None


def stale_hold(error: BaseException | None) -> StaleHold | None:
    """The :class:`StaleHold` that ``error`` is or was caused by, if any."""
    found = _cause(error, StaleHold)
    return found if isinstance(found, StaleHold) else None


def _cause(error: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    seen: set[int] = set()
    cause = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, kind):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None
