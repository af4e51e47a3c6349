"""Small helpers for end-to-end tests of extmsg and its plugins."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp
import msgspec
from aiohttp import web

from ..admin import create_admin_app
from ..app import announce_listening, create_app, public_runner, stop_serving
from ..config import parse_config
from ..plugins import Hooks
from ..runtime import RUNTIME, Runtime

__all__ = [
    "CpuTime",
    "CutOffSends",
    "LoopStalls",
    "RawResponse",
    "RunningExtmsg",
    "ServeProcess",
    "cpu_time",
    "eventually",
    "free_port",
    "in_doubt_after_send",
    "loop_stalls",
    "raw_request",
    "running_extmsg",
]

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 10.0) -> T:  # noqa: ASYNC109
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g}s")
        await asyncio.sleep(0.05)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class CpuTime:
    """The CPU seconds a ``with cpu_time()`` block took, set when the block ends."""

    seconds: float = 0.0


@contextlib.contextmanager
def cpu_time(*, this_thread: bool = False) -> Iterator[CpuTime]:
    """Measure the CPU time a block takes: this process's (its worker threads and in-process
    servers too) or, with ``this_thread``, the calling thread's alone.

    A limit that guards against super-linear work on hostile input is a limit on CPU time:
    wall time also counts whatever else a shared machine runs, and a parse of 0.2 s took
    over a second of it while other tests ran beside it. CPU time grows with the work alone.
    """
    clock = time.thread_time if this_thread else time.process_time
    took = CpuTime()
    started = clock()
    try:
        yield took
    finally:
        took.seconds = clock() - started


class LoopStalls:
    """How long the event loop went without running a ticker that wants to run every
    ``interval`` seconds: ``longest`` is the worst gap beyond the interval, in seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.longest = 0.0

    async def tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self.longest = max(self.longest, now - last - self.interval)
            last = now


@contextlib.asynccontextmanager
async def loop_stalls(interval: float = 0.01) -> AsyncIterator[LoopStalls]:
    """Measure the event loop's longest stall while the block runs (everything in-process
    shares the loop: a request that blocks it delays the ticker by as long)."""
    stalls = LoopStalls(interval)
    task = asyncio.get_running_loop().create_task(stalls.tick())
    try:
        yield stalls
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class RawResponse(msgspec.Struct, frozen=True):
    status: int
    body: bytes


async def raw_request(
    base: str,
    method: str,
    path: str | bytes,
    headers: Sequence[tuple[str, str | bytes]] = (),
    body: bytes = b"",
) -> RawResponse:
    """Send one HTTP/1.1 request byte for byte over a fresh connection.

    HTTP clients clean up what they send (header values must be text, paths get quoted); this
    sends a ``bytes`` path and header values as the raw bytes given, so tests can reach a
    server with what a hostile client could send.
    """
    host, _, port = base.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port or 80))
    try:
        target = path if isinstance(path, bytes) else path.encode()
        head = [
            method.encode() + b" " + target + b" HTTP/1.1",
            f"Host: {host}:{port}".encode(),
        ]
        for name, value in headers:
            raw = value if isinstance(value, bytes) else value.encode("latin-1")
            head.append(name.encode("latin-1") + b": " + raw)
        head += [f"Content-Length: {len(body)}".encode(), b"Connection: close"]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    status_line, _, rest = response.partition(b"\r\n")
    _, _, content = rest.partition(b"\r\n\r\n")
    return RawResponse(status=int(status_line.split()[1]), body=content)


class RunningExtmsg(msgspec.Struct, frozen=True, kw_only=True):
    """The core's application serving on ``base``, every channel provisioned in Unblu; its
    admin listener (``/metrics``, ``/-/plugins``, the detailed ``/readyz``) on ``admin``."""

    base: str
    admin: str
    channel_ids: dict[str, str]
    session: aiohttp.ClientSession
    runtime: Runtime
    """The server's parts (store, Unblu client, engine, metrics), for tests that drive a flow
    directly or look inside."""


@contextlib.asynccontextmanager
async def running_extmsg(
    raw: dict[str, Any], hooks: Hooks, *, port: int | None = None
) -> AsyncIterator[RunningExtmsg]:
    """Serve extmsg for the config ``raw`` (a TOML-shaped dict) on ``127.0.0.1:port`` (a free
    port by default; ``server.public_url`` defaults to it) and its admin listener on another
    free port, until every channel has its Unblu id.
    """
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    server = {"public_url": base, **raw.get("server", {}), "port": port}
    admin_port = free_port()
    admin_raw = {**raw.get("admin", {}), "listen": f"127.0.0.1:{admin_port}"}
    config = parse_config({**raw, "server": server, "admin": admin_raw}, hooks.messenger_types())
    app = create_app(config, hooks)
    runner = public_runner(app)
    admin_runner = web.AppRunner(create_admin_app(app[RUNTIME]))
    await admin_runner.setup()
    await runner.setup()
    try:
        await web.TCPSite(admin_runner, "127.0.0.1", admin_port).start()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await announce_listening(app)
        admin = f"http://127.0.0.1:{admin_port}"
        headers = {"Authorization": f"Bearer {config.admin.token}"} if config.admin.token else {}
        async with aiohttp.ClientSession() as session:

            async def provisioned() -> dict[str, str] | None:
                async with session.get(f"{admin}/readyz", headers=headers) as resp:
                    body = await resp.json()
                ids = {name: ch["unblu_channel_id"] for name, ch in body["channels"].items()}
                return ids if resp.status == 200 and all(ids.values()) else None

            ids = await eventually(provisioned)
            yield RunningExtmsg(
                base=base, admin=admin, channel_ids=ids, session=session, runtime=app[RUNTIME]
            )
    finally:
        # As ``extmsg serve`` stops: the requests in flight are answered first.
        await stop_serving(app, runner)
        await runner.cleanup()
        await admin_runner.cleanup()


class CutOffSends:
    """What :func:`in_doubt_after_send` did: the messages it cut off, and the runtime (its
    ``metrics`` hold ``extmsg_in_doubt_total``)."""

    def __init__(self) -> None:
        self.cut_off: list[str] = []
        self.runtime: Any = None

    def in_doubt(self, outcome: str, channel: str) -> float:
        """How many in-doubt attempts on ``channel`` ended with ``outcome``."""
        if self.runtime is None:
            return 0.0
        value = self.runtime.metrics.registry.get_sample_value(
            "extmsg_in_doubt_total",
            {"channel": channel, "direction": "to_messenger", "outcome": outcome},
        )
        return float(value or 0.0)


@contextlib.contextmanager
def in_doubt_after_send() -> Iterator[CutOffSends]:
    """Servers started inside this block lose every agent message's first attempt right after
    the provider accepted its first part and before extmsg recorded it, as a crash would; the
    attempt after it runs in doubt (``job.in_doubt``), as after a restart. Use it to check a
    plugin's ``extmsg_find_sent`` end to end: the provider's fake must end up with one message
    where the plugin can tell, and two (counted) where it cannot.
    """
    from ..errors import RetryableError
    from ..flows import _HANDLERS
    from ..flows import payloads as p

    real = _HANDLERS[p.OutboundMessageJob]
    record = CutOffSends()

    async def handler(runtime: Any, job: Any, payload: Any) -> None:
        record.runtime = runtime
        if payload.message_id in record.cut_off:
            await real(runtime, msgspec.structs.replace(job, in_doubt=True), payload)
            return
        record.cut_off.append(payload.message_id)
        await real(cast("Runtime", _CutOff(runtime)), job, payload)

    class _Hooks:
        def __init__(self, hooks: Any) -> None:
            self._hooks = hooks

        def __getattr__(self, name: str) -> Any:
            return getattr(self._hooks, name)

        async def send(self, channel: Any, message: Any) -> Any:
            await self._hooks.send(channel, message)
            raise RetryableError("cut off after the provider accepted the message (test)")

    class _CutOff:
        def __init__(self, runtime: Any) -> None:
            self._runtime = runtime
            self.hooks = _Hooks(runtime.hooks)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._runtime, name)

    _HANDLERS[p.OutboundMessageJob] = handler
    try:
        yield record
    finally:
        _HANDLERS[p.OutboundMessageJob] = real


class ServeProcess:
    """``python -m extmsg serve`` in a process of its own, its output kept beside the config
    (``<config>.log``): for tests that kill, freeze or restart the server.

    Its admin listener (``/metrics``, ``/-/plugins``, the detailed ``/readyz``) is on
    ``admin_url``: the config's ``[admin] listen`` when it names one, else a free loopback
    port (passed as ``--admin-listen``), so that servers started side by side do not collide.
    """

    def __init__(
        self,
        config: Path,
        *,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> None:
        self.config = config
        self.log_path = config.with_suffix(".log")
        self.env = {**os.environ, **(env or {})}
        listen = _admin_listen(config)
        if listen is None:
            listen = f"127.0.0.1:{free_port()}"
            args = ("--admin-listen", listen, *args)
        self.admin_url = f"http://{listen}"
        self.args = args
        self.cwd = cwd or config.parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        self.started_at = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "extmsg", "serve", "--config", str(self.config), *self.args],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, base_url: str, limit: float = 15.0) -> float:
        """Poll ``/readyz`` until it answers 200; return the seconds from start to ready."""
        deadline = time.monotonic() + limit
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.log()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{base_url}/readyz") as resp:
                        if resp.status == 200:
                            return time.monotonic() - self.started_at
                await asyncio.sleep(0.02)
        raise AssertionError(f"serve not ready after {limit}s:\n{self.log()}")

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait for the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush (a resumed process first, so it can die)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _admin_listen(config: Path) -> str | None:
    """``[admin] listen`` of a config file, if it names one."""
    import tomllib

    try:
        raw = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None  # serve reports that
    admin = raw.get("admin")
    listen = admin.get("listen") if isinstance(admin, dict) else None
    return listen if isinstance(listen, str) else None
