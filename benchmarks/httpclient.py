"""A lean HTTP/1.1 keep-alive client for the load generator's hot loop.

aiohttp's client spends about 70 µs of CPU per request; on a two-core machine that made the
generator, not the bare floor server, the bottleneck (about 13,700 requests/s, generator at
100 % CPU, server at 67 %). This client writes pre-built request bytes on a kept-alive
connection and reads the answer by ``Content-Length`` (or chunks), which is all a benchmark
against aiohttp servers needs. Everything else the generator does (set-up, collectors) uses
aiohttp.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Connection", "HttpError", "Pool", "RoundRobin", "build_request"]


class HttpError(Exception):
    """The connection broke or the answer could not be read."""


def build_request(method: str, host: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class Connection(asyncio.Protocol):
    """One kept-alive connection; one request at a time."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, host, port)
        return conn

    # -- protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(HttpError(f"connection lost: {exc}"))

    # -- use --------------------------------------------------------------------------------
    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one pre-built request; answer status and body."""
        if self.closed or self._transport is None:
            raise HttpError("connection closed")
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._transport.write(raw)
        return await waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self.closed = True

    def _parse(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            waiter.set_exception(HttpError(f"bad status line {lines[0]!r}"))
            return
        length = -1
        chunked = False
        keep_alive = True
        for line in lines[1:]:
            name, _, value = line.partition(":")
            lname = name.strip().lower()
            if lname == "content-length":
                length = int(value.strip())
            elif lname == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif lname == "connection" and value.strip().lower() == "close":
                keep_alive = False
        start = end + 4
        if chunked:
            body = _dechunk(buf, start)
            if body is None:
                return
            payload, consumed = body
            del buf[:consumed]
        else:
            if length < 0:
                length = 0
            if len(buf) < start + length:
                return
            payload = bytes(buf[start : start + length])
            del buf[: start + length]
        if not keep_alive:
            self.close()
        self._waiter = None
        waiter.set_result((status, payload))


def _dechunk(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    out = bytearray()
    pos = start
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", pos)
            if trailer_end < 0:
                return None
            return bytes(out), trailer_end + 2
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
        pos += size + 2


class Pool:
    """Up to ``size`` connections to one server; a request waits for an idle one."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host = host
        self.port = port
        self.size = size
        self._idle: deque[Connection] = deque()
        self._open = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def warm(self, n: int) -> None:
        """Open ``n`` connections now, so the measured requests do not pay for connecting."""
        n = min(n, self.size - self._open)
        self._open += n
        conns = await asyncio.gather(*(Connection.open(self.host, self.port) for _ in range(n)))
        self._idle.extend(conns)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        conn = await self._acquire()
        try:
            result = await conn.request(raw)
        except BaseException:
            conn.close()
            self._release(None)
            raise
        self._release(None if conn.closed else conn)
        return result

    async def _acquire(self) -> Connection:
        while True:
            while self._idle:
                conn = self._idle.popleft()
                if not conn.closed:
                    return conn
                self._open -= 1
            if self._open < self.size:
                self._open += 1
                try:
                    return await Connection.open(self.host, self.port)
                except BaseException:
                    self._open -= 1
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            await waiter

    def _release(self, conn: Connection | None) -> None:
        if conn is None:
            self._open -= 1
        else:
            self._idle.append(conn)
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def close(self) -> None:
        while self._idle:
            self._idle.popleft().close()
        self._open = 0


class RoundRobin:
    """Several servers behind one client, as a load balancer spreads requests over instances:
    each request goes to the next server's pool in turn (each pool holds ``size`` ÷ servers
    connections, rounded up)."""

    def __init__(self, servers: list[tuple[str, int]], size: int) -> None:
        share = -(-size // len(servers))
        self.pools = [Pool(host, port, share) for host, port in servers]
        self._next = 0

    async def warm(self, n: int) -> None:
        share = -(-n // len(self.pools))
        await asyncio.gather(*(pool.warm(share) for pool in self.pools))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        pool = self.pools[self._next]
        self._next = (self._next + 1) % len(self.pools)
        return await pool.request(raw)

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
