"""A request that would start long after its job's hold is refused before a byte is written."""

from __future__ import annotations

import asyncio
import contextvars
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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            self.received += data
            if b"\r\n\r\n" in data:
                writer.write(RESPONSE)
                await writer.drain()
        writer.close()

    @property
    def requests(self) -> int:
        return self.received.count(b"POST /send")


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
    async with aiohttp.ClientSession(trace_configs=[sendguard.trace_config()]) as session:
        sendguard.hold_taken(_hold(age=0.0))
        assert await _send(session, remote) == "ok"
        assert await _send(session, remote) == "ok"  # on the kept-alive connection
    assert remote.requests == 2


async def test_a_stale_hold_refuses_the_send_on_a_new_connection(remote: Remote) -> None:
    async with aiohttp.ClientSession(trace_configs=[sendguard.trace_config()]) as session:
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

    async with aiohttp.ClientSession(trace_configs=[sendguard.trace_config()]) as session:
        assert await asyncio.create_task(one_send()) == "ok"
        before = bytes(remote.received)
        sendguard.hold_taken(_hold(age=5.0))
        with pytest.raises(sendguard.StaleHold):
            await _send(session, remote)
    assert remote.received == before


async def test_a_hold_that_goes_stale_after_the_connection_is_caught_before_the_body(
    remote: Remote,
) -> None:
    """The last check runs when the body's first bytes are about to be written (a task of its
    own, a loop turn after the connection was at hand): a process stopped in between is caught
    there, and not even the request line goes out."""

    async def stop_here(_s: Any, _ctx: SimpleNamespace, _params: Any) -> None:
        # As if the process stopped for two seconds right after the connection check.
        sendguard.hold_taken(_hold(age=2.0))

    late = aiohttp.TraceConfig()
    late.on_connection_create_end.append(stop_here)
    async with aiohttp.ClientSession(trace_configs=[sendguard.trace_config(), late]) as session:
        sendguard.hold_taken(_hold(age=0.0))
        with pytest.raises(aiohttp.ClientError) as caught:
            await _send(session, remote)
    assert sendguard.stale_hold(caught.value) is not None
    assert sendguard.caused_by_lost_lease(caught.value)
    assert remote.received == b""


async def test_a_hold_belongs_to_the_task_that_made_it(remote: Remote) -> None:
    async with aiohttp.ClientSession(trace_configs=[sendguard.trace_config()]) as session:
        sendguard.hold_taken(_hold(age=5.0))
        other = asyncio.get_running_loop().create_task(
            _send(session, remote), context=contextvars.Context()
        )
        assert await other == "ok"
        assert remote.requests == 1
