"""The public listener's graceful stop: no new requests, the ones in flight finish.

aiohttp's own stop (``AppRunner.cleanup``) marks every connection closing before it waits for
the requests in flight, and a closing connection drops whatever bytes arrive on it after that
— among them the rest of the body of a webhook whose handler is already reading it. That
handler then waits for bytes it will never get until ``shutdown_timeout`` runs out, and the
webhook is cut off unanswered while the stop sits the timeout out.

So the stop drains first (:func:`drain`): the listening sockets close (new connections are
refused), requests already in flight keep reading their bodies and are answered (with
``Connection: close``), and a request that still arrives on a kept-alive connection is refused
with 503. Only when none is left in flight, or after ``shutdown_timeout``, does aiohttp's
cleanup run — and then it finds nothing to wait for but requests given up on. The public
listener's middleware (:func:`extmsg.app.public_middleware`) counts and refuses the requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

from aiohttp import web

__all__ = ["CUT_OFF_GRACE", "IN_FLIGHT", "InFlight", "drain", "refusal"]

log = logging.getLogger("extmsg")

#: What aiohttp's cleanup still gives requests in flight once :func:`drain` gave up on them:
#: they are cancelled then (the runner's ``shutdown_timeout``).
CUT_OFF_GRACE = 0.5


class InFlight:
    """Counts the requests being handled; refuses new ones once :meth:`stop_taking` ran."""

    def __init__(self) -> None:
        self.count = 0
        self._taking = True
        self._idle = asyncio.Event()
        self._idle.set()

    def taking(self) -> bool:
        """Whether requests are taken (not once the server began to stop)."""
        return self._taking

    def stop_taking(self) -> None:
        self._taking = False

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Count work that did not come over HTTP (a mail being stored) as a request in
        flight while inside: the drain waits for it as for the others."""
        self._enter()
        try:
            yield
        finally:
            self._leave()

    async def idle(self, timeout: float) -> bool:  # noqa: ASYNC109 - a grace period
        """Wait until no request is in flight, at most ``timeout`` seconds; answer whether so."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def _leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()


IN_FLIGHT: web.AppKey[InFlight] = web.AppKey("extmsg.in_flight", InFlight)


def refusal() -> web.Response:
    """The answer to a request that arrives while the server stops: 503, and the connection
    takes nothing more."""
    response = web.json_response(
        {"error": "the server is stopping; send again later"},
        status=503,
        headers={"Retry-After": "5"},
    )
    response.force_close()
    return response


async def drain(runner: web.AppRunner, in_flight: InFlight, timeout: float) -> None:  # noqa: ASYNC109
    """Close ``runner``'s listening sockets and wait (at most ``timeout`` seconds) for the
    requests in flight to be answered; then ``runner.cleanup()`` has nothing left to wait for.
    """
    started = time.monotonic()
    in_flight.stop_taking()
    for site in list(runner.sites):
        await site.stop()
    if in_flight.count:
        log.info("waiting for %d request(s) in flight", in_flight.count)
    if not await in_flight.idle(timeout):
        log.warning(
            "%d request(s) still in flight after %.1fs; they are cut off unanswered",
            in_flight.count,
            time.monotonic() - started,
        )
