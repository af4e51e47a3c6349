"""The public listener's graceful stop (:mod:`extmsg.draining`), on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
from aiohttp import web

from extmsg.app import public_middleware
from extmsg.draining import CUT_OFF_GRACE, InFlight, drain
from extmsg.testing.helpers import eventually


async def _app_and_runner() -> tuple[InFlight, web.AppRunner, str]:
    in_flight = InFlight()

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application(middlewares=[public_middleware(in_flight)])
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, shutdown_timeout=CUT_OFF_GRACE)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return in_flight, runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def _handling(in_flight: InFlight) -> bool:
    return in_flight.count > 0


async def _half_sent(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A POST whose handler runs, reading a body of which only the first byte came."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nh")
    await writer.drain()
    return reader, writer


async def test_a_request_in_flight_gets_its_body_and_its_answer_while_the_server_stops() -> None:
    in_flight, runner, base = await _app_and_runner()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/echo", data=b"warm") as resp:  # a kept-alive connection
            assert resp.status == 200
        reader, writer = await _half_sent(base)
        await eventually(lambda: _handling(in_flight))
        started = time.monotonic()
        stopping = asyncio.create_task(drain(runner, in_flight, timeout=20))
        await asyncio.sleep(0.2)
        # A request on the kept-alive connection gets a clear 503; new connections are refused.
        async with session.post(f"{base}/echo", data=b"late") as resp:
            assert resp.status == 503
            assert "stopping" in (await resp.json())["error"]
            assert resp.headers.get("Connection", "").lower() == "close"
        async with aiohttp.ClientSession() as fresh:
            try:
                await fresh.post(f"{base}/echo", data=b"new")
            except aiohttp.ClientConnectorError:
                pass
            else:
                raise AssertionError("a new connection was taken while the server stops")
        assert not stopping.done()
        writer.write(b"ello")  # the rest of the body, after the stop began
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await stopping
        await runner.cleanup()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert answer.endswith(b"hello")
    assert b"Connection: close" in answer
    assert time.monotonic() - started < 5


async def test_a_request_that_never_completes_is_cut_off_after_the_timeout() -> None:
    in_flight, runner, base = await _app_and_runner()
    reader, writer = await _half_sent(base)
    await eventually(lambda: _handling(in_flight))
    started = time.monotonic()
    await drain(runner, in_flight, timeout=0.5)
    await runner.cleanup()
    took = time.monotonic() - started
    assert 0.5 <= took < 0.5 + 2 * CUT_OFF_GRACE + 1.0, took
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, not answered
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
