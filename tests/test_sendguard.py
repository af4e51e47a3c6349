"""A request that would start long after its job's hold is refused before a byte is written."""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from extmsg import sendguard
from extmsg.errors import LeaseLost

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class Remote:
    """A bare HTTP server that keeps every byte it receives (so a half-written request shows)."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.url = ""
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while data := await reader.read(65536):
            self.received += data
            if b"\r\n\r\n" in data:
                writer.write(RESPONSE)
                await writer.drain()
        writer.close()

    @property
    def requests(self) -> int:
        return len(re.findall(rb"(?:GET|POST) /send HTTP/1.1\r\n", self.received))


@pytest.fixture
async def remote() -> AsyncIterator[Remote]:
    remote = Remote()
    server = await asyncio.start_server(remote._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    remote.url = f"http://127.0.0.1:{port}/send"
    async with server:
        yield remote


def _hold(age: float, bound: float = 1.0) -> sendguard.Hold:
    return sendguard.Hold(job_id=7, fence=3, at=time.monotonic() - age, bound=bound)


async def _send(session: aiohttp.ClientSession, remote: Remote) -> str:
    async with session.post(remote.url, data=b'{"text": "hello"}') as resp:
        return await resp.text()


async def test_a_fresh_hold_lets_the_send_go_out(remote: Remote) -> None:
    async with sendguard.client_session() as session:
        sendguard.hold_taken(_hold(age=0.0))
        assert await _send(session, remote) == "ok"
        assert await _send(session, remote) == "ok"  # on the kept-alive connection
    assert remote.requests == 2


async def test_a_stale_hold_refuses_the_send_on_a_new_connection(remote: Remote) -> None:
    async with sendguard.client_session() as session:
        sendguard.hold_taken(_hold(age=1.5))
        with pytest.raises(sendguard.StaleHold) as caught:
            await _send(session, remote)
    assert isinstance(caught.value, LeaseLost)
    assert "1.5s after its hold (at most 1s)" in str(caught.value)
    assert remote.received == b""


async def test_a_stale_hold_refuses_the_send_on_a_kept_alive_connection(remote: Remote) -> None:
    async def one_send() -> str:
        sendguard.hold_taken(_hold(age=0.0))
        return await _send(session, remote)

    async with sendguard.client_session() as session:
        assert await asyncio.create_task(one_send()) == "ok"
        before = bytes(remote.received)
        sendguard.hold_taken(_hold(age=5.0))
        with pytest.raises(sendguard.StaleHold):
            await _send(session, remote)
    assert remote.received == before


async def test_a_stale_hold_refuses_a_request_without_a_body(remote: Remote) -> None:
    """A request without a body goes out whole when its headers are written: the check there
    is its only one."""

    async def get() -> str:
        async with session.get(remote.url) as resp:
            return await resp.text()

    async def fresh_get() -> str:
        sendguard.hold_taken(_hold(age=0.0))
        return await get()

    async with sendguard.client_session() as session:
        sendguard.hold_taken(_hold(age=1.5))
        with pytest.raises(sendguard.StaleHold):
            await get()  # on a new connection
        assert remote.requests == 0
        assert await asyncio.create_task(fresh_get()) == "ok"
        with pytest.raises(sendguard.StaleHold):
            await get()  # on the kept-alive one
    assert remote.requests == 1
    assert remote.received.count(b"GET /send") == 1


class StopsBeforeTheBody(sendguard.GuardedRequest):
    async def write_bytes(self, *args: Any, **kwargs: Any) -> None:
        # As if the process stopped for two seconds once the headers were checked and before
        # the body is written (a task of its own on Python 3.11, a loop turn later).
        sendguard.hold_taken(_hold(age=2.0))
        await super().write_bytes(*args, **kwargs)


async def test_a_hold_that_goes_stale_after_the_headers_is_caught_before_the_body(
    remote: Remote,
) -> None:
    """The last check runs when the body's first bytes are about to be written: a process
    stopped after the headers' check is caught there, and not even the request line (which
    goes out with the body) is written."""
    async with sendguard.client_session(request_class=StopsBeforeTheBody) as session:
        sendguard.hold_taken(_hold(age=0.0))
        with pytest.raises(aiohttp.ClientError) as caught:
            await _send(session, remote)
    assert sendguard.stale_hold(caught.value) is not None
    assert sendguard.caused_by_lost_lease(caught.value)
    assert remote.received == b""
    assert remote.connections == 1  # it got as far as the connection


async def test_a_guarded_session_traces_nothing() -> None:
    """Any trace config makes aiohttp trace every stage of every request, which costs far
    more per request than the check."""
    async with sendguard.client_session(headers={"User-Agent": "t"}) as session:
        assert session.trace_configs == []
        assert session.headers["User-Agent"] == "t"
        assert issubclass(session._request_class, sendguard.GuardedRequest)


async def test_a_session_with_an_unguarded_request_class_is_refused() -> None:
    with pytest.raises(TypeError, match="GuardedRequest"):
        sendguard.client_session(request_class=aiohttp.ClientRequest)


async def test_the_deprecated_trace_config_still_guards(remote: Remote) -> None:
    with pytest.warns(DeprecationWarning, match="client_session"):
        config = sendguard.trace_config()

    async def stop_here(_s: Any, _ctx: SimpleNamespace, _params: Any) -> None:
        # As if the process stopped for two seconds right after the connection check.
        sendguard.hold_taken(_hold(age=2.0))

    late = aiohttp.TraceConfig()
    late.on_connection_create_end.append(stop_here)
    async with aiohttp.ClientSession(trace_configs=[config]) as session:
        sendguard.hold_taken(_hold(age=5.0))
        with pytest.raises(sendguard.StaleHold):
            await _send(session, remote)
    async with aiohttp.ClientSession(trace_configs=[config, late]) as session:
        sendguard.hold_taken(_hold(age=0.0))
        with pytest.raises(aiohttp.ClientError) as caught:
            await _send(session, remote)
    assert sendguard.stale_hold(caught.value) is not None
    assert remote.received == b""


async def test_a_hold_belongs_to_the_task_that_made_it(remote: Remote) -> None:
    async with sendguard.client_session() as session:
        sendguard.hold_taken(_hold(age=5.0))
        other = asyncio.get_running_loop().create_task(
            _send(session, remote), context=contextvars.Context()
        )
        assert await other == "ok"
        assert remote.requests == 1
