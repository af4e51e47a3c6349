"""Fuzzing extmsg's routes with Hypothesis against one long-lived server.

:class:`FuzzServer` runs the real application (:func:`extmsg.testing.helpers.running_extmsg`,
the app of ``extmsg serve``) on an event loop of its own thread, next to an Unblu sandbox and
any provider fakes on a second loop, so examples are cheap (no start-up per example) and the
server's loop can be watched: every exchange measures the request's time, the longest stall of
the server's event loop while it ran, and what the store holds before and after. Its checks
are the promise "no input, signed or not, gets a 5xx or stalls the event loop; a refused
request stores nothing".

Profiles (Hypothesis settings, chosen with the ``EXTMSG_FUZZ`` environment variable):

* unset or ``ci`` — a few dozen examples per test, derandomized (the same examples on every
  run), no example database: fast and stable in CI;
* ``long`` — at least 10,000 examples per test, random. ``EXTMSG_FUZZ_EXAMPLES=N`` overrides
  the count of either; ``EXTMSG_FUZZ_REPORT=path`` appends a JSON line per server (status
  counts per route, memory before and after, longest stall) when it stops.

Needs ``hypothesis`` (a test dependency of extmsg).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import faulthandler
import importlib
import json
import logging
import os
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from hypothesis import HealthCheck, settings

from ..plugins import Hooks
from ..runtime import Runtime
from .helpers import RunningExtmsg, running_extmsg

__all__ = [
    "CI_PROFILE",
    "LONG_PROFILE",
    "PROFILE_ENV",
    "REQUEST_LIMIT",
    "STALL_LIMIT",
    "WEDGE_LIMIT",
    "FuzzHost",
    "FuzzServer",
    "FuzzSetup",
    "LoopStalled",
    "LoopThread",
    "Reply",
    "ServerFailed",
    "ServerWedged",
    "StoredWhenRefused",
    "TooSlow",
    "fuzz_settings",
    "http_exchange",
    "rss_kib",
]

T = TypeVar("T")

PROFILE_ENV = "EXTMSG_FUZZ"
CI_PROFILE = "extmsg-fuzz-ci"
LONG_PROFILE = "extmsg-fuzz-long"
LONG_EXAMPLES = 10_000
#: Seconds one request may take, and the longest the server's loop may stall meanwhile:
#: generous, for a loaded two-core machine (linear work on a megabyte takes milliseconds).
REQUEST_LIMIT = 2.0
STALL_LIMIT = 1.0
#: Past this the server is taken for wedged (a loop blocked for minutes by a quadratic
#: routine): the example fails, and later ones fail at once instead of waiting on it.
WEDGE_LIMIT = 10.0

settings.register_profile(
    CI_PROFILE,
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=list(HealthCheck),
)
settings.register_profile(
    LONG_PROFILE,
    max_examples=LONG_EXAMPLES,
    derandomize=False,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def fuzz_settings(examples: int = 25) -> settings:
    """Settings for one fuzz test: ``examples`` in CI, the long profile's count when
    ``EXTMSG_FUZZ=long``."""
    mode = os.environ.get(PROFILE_ENV, "ci").strip().lower() or "ci"
    if mode not in ("ci", "long"):
        raise ValueError(f"{PROFILE_ENV} must be 'ci' or 'long', not {mode!r}")
    override = os.environ.get("EXTMSG_FUZZ_EXAMPLES")
    if mode == "long":
        count = int(override) if override else max(LONG_EXAMPLES, examples)
        return settings(settings.get_profile(LONG_PROFILE), max_examples=count)
    count = int(override) if override else examples
    return settings(settings.get_profile(CI_PROFILE), max_examples=count)


def rss_kib(pid: int | str = "self") -> int:
    """Resident memory of process ``pid`` in KiB (0 where /proc is not there)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# -- event loops in threads ------------------------------------------------------------------


class LoopThread:
    """An asyncio event loop running in a daemon thread of its own."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self, *, wait: bool = True) -> None:
        """Cancel what runs on the loop and stop it; ``wait=False`` for a loop that is blocked
        (its daemon thread is left to the end of the process)."""
        if not wait:
            self.loop.call_soon_threadsafe(self.loop.stop)
            return

        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_rest(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class StallMonitor:
    """Wakes every few milliseconds on the watched loop and keeps the longest lateness."""

    interval = 0.005

    def __init__(self) -> None:
        self.longest = 0.0
        self.longest_ever = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.interval)
            now = loop.time()
            lag = now - last - self.interval
            last = now
            if lag > self.longest:
                self.longest = lag
            if lag > self.longest_ever:
                self.longest_ever = lag

    async def take(self) -> float:
        """The longest stall since the last call. Waits two ticks first, so a stall still
        under way when the caller got its answer is over and counted."""
        await asyncio.sleep(self.interval * 2)
        longest, self.longest = self.longest, 0.0
        return longest


# -- logs --------------------------------------------------------------------------------------


class _RingHandler(logging.Handler):
    """Formats every record (as a real handler would: the cost of building log lines is part
    of a request's cost) and keeps the last few for failure messages."""

    def __init__(self, keep: int = 40) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        self.lines.append(line if len(line) <= 4000 else line[:3000] + " …[cut]… " + line[-500:])


#: Loggers routed into the ring, at the level ``extmsg serve`` runs them.
_LOGGERS = {"extmsg": logging.INFO, "aiohttp": logging.WARNING, "mail.log": logging.WARNING}


class ServerFailed(AssertionError):
    """A 5xx, an SMTP failure reply (``451``, ``500 Error: (…)``) or no answer at all."""


_FAILURE_KINDS: dict[str, type[ServerFailed]] = {}
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Warning))\b", re.MULTILINE)


def _failure_kind(log_tail: str) -> type[ServerFailed]:
    """A subclass of :class:`ServerFailed` named after the exception the server logged last,
    so Hypothesis tells a RecursionError from a UnicodeEncodeError (distinct bugs)."""
    found = _EXCEPTION_LINE.findall(log_tail)
    name = found[-1].rsplit(".", 1)[-1] if found else "unknown"
    if name not in _FAILURE_KINDS:
        _FAILURE_KINDS[name] = type(f"ServerFailed_{name}", (ServerFailed,), {})
    return _FAILURE_KINDS[name]


class LoopStalled(AssertionError):
    """The server's event loop was blocked longer than :data:`STALL_LIMIT`."""


class TooSlow(AssertionError):
    """An exchange took longer than :data:`REQUEST_LIMIT`."""


class ServerWedged(AssertionError):
    """An earlier example left the server unable to answer; this one was not tried."""


class StoredWhenRefused(AssertionError):
    """A refused input left messages or jobs in the store."""


# -- replies -----------------------------------------------------------------------------------


class Reply:
    """What the server answered: an HTTP status (``kind="http"``) or an SMTP reply code."""

    def __init__(
        self, code: int | None, body: bytes = b"", *, kind: str = "http", error: str | None = None
    ) -> None:
        self.code = code
        self.body = body
        self.kind = kind
        self.error = error

    @property
    def server_error(self) -> str | None:
        """Why this answer is a server failure, or ``None``."""
        if self.code is None:
            return f"no answer ({self.error})"
        if self.kind == "http":
            return f"HTTP {self.code}" if self.code >= 500 else None
        text = self.body.decode("utf-8", "replace")
        if self.code == 451 or re.search(r"^500[ -]Error: \(", text, re.MULTILINE):
            return f"SMTP {text.strip()[:300]}"
        return None

    @property
    def refused(self) -> bool:
        """A refusal: nothing of the input may have been stored."""
        if self.code is None:
            return False
        return 400 <= self.code < 500 if self.kind == "http" else self.code >= 500

    def __repr__(self) -> str:
        body = self.body[:300]
        return f"Reply({self.kind} {self.code}, {body!r}{', ' + self.error if self.error else ''})"


def http_exchange(
    host: str,
    port: int,
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    timeout: float = 30.0,
) -> Reply:
    """One HTTP/1.1 request over a fresh connection, written byte for byte as given (header
    names and values need not be ASCII), and the status of its answer."""
    head = [method + b" " + target + b" HTTP/1.1", b"Host: " + f"{host}:{port}".encode()]
    head.append(b"Connection: close")
    if body or method == b"POST":
        head.append(b"Content-Length: " + str(len(body)).encode())
    head += [name + b": " + value for name, value in headers]
    data = b"\r\n".join(head) + b"\r\n\r\n" + body
    chunks: list[bytes] = []
    error = None
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError as exc:  # the server may answer (413, 400) and close before it all went
            error = f"send: {exc}"
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            error = f"no complete answer within {timeout}s"
        except OSError as exc:
            error = f"receive: {exc}"
    raw = b"".join(chunks)
    match = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    if match is None:
        return Reply(None, raw, error=error or "no status line")
    return Reply(int(match.group(1)), raw.partition(b"\r\n\r\n")[2])


# -- the server's side (a process of its own) ------------------------------------------------


class FuzzSetup(msgspec.Struct, kw_only=True):
    """What a fuzz module's set-up function returns (see :class:`FuzzServer`).

    :ivar config: the TOML-shaped config (``store.path`` is required), as for
        :func:`~extmsg.testing.helpers.running_extmsg`.
    :ivar hooks: the plugins to serve with.
    :ivar after_start: run on the server's loop once it is ready (e.g. to publish a file).
    :ivar extra: facts the tests need (a listener's port), handed to :attr:`FuzzServer.extra`.
    """

    config: dict[str, Any]
    hooks: Hooks
    after_start: Callable[[Runtime], Awaitable[None]] | None = None
    extra: dict[str, Any] = msgspec.field(default_factory=dict)


class FuzzHost:
    """The server process: extmsg on one loop (watched by a :class:`StallMonitor`), the Unblu
    sandbox, provider fakes and a small control API on another."""

    def __init__(self, folder: Path) -> None:
        #: A folder for the store and other files of this server.
        self.folder = folder
        self.aux = LoopThread("fuzz-aux")
        self.loop = LoopThread("extmsg-server")
        self.monitor = StallMonitor()
        self.logs = _RingHandler()
        self.stopped = threading.Event()
        self._runners: list[web.AppRunner] = []
        self._stop: asyncio.Event | None = None
        self._serving: asyncio.Future[None] | None = None

    def serve_aux(self, app: web.Application) -> str:
        """Serve ``app`` (a provider fake) on the auxiliary loop; its base URL."""

        async def start() -> str:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self._runners.append(runner)
            port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
            return f"http://127.0.0.1:{port}"

        return self.aux.run(start())

    def start(self, setup: Callable[[FuzzHost, str], FuzzSetup]) -> dict[str, Any]:
        from ..sandbox import run_sandbox

        for name, level in _LOGGERS.items():
            logger = logging.getLogger(name)
            logger.addHandler(self.logs)
            logger.propagate = False
            logger.setLevel(level)
        sandbox = self.aux.run(
            run_sandbox("127.0.0.1", 0, retry_backoff=0.05, retry_backoff_max=0.2)
        )
        spec = setup(self, sandbox.base_url)
        started: asyncio.Future[RunningExtmsg] = self.loop.loop.create_future()

        async def serve() -> None:
            self._stop = asyncio.Event()
            asyncio.get_running_loop().create_task(self.monitor.run(), name="stall-monitor")
            try:
                async with running_extmsg(spec.config, spec.hooks) as running:
                    if spec.after_start is not None:
                        await spec.after_start(running.runtime)
                    started.set_result(running)
                    await self._stop.wait()
            except BaseException as exc:
                if not started.done():
                    started.set_exception(exc)
                raise

        async def launch() -> RunningExtmsg:
            self._serving = asyncio.ensure_future(serve())
            return await started

        running = self.loop.run(launch(), timeout=60)
        control = self.serve_aux(self._control_app())
        return {
            "base": running.base,
            "control": control,
            "store": str(spec.config["store"]["path"]),
            "extra": spec.extra,
        }

    def _control_app(self) -> web.Application:
        async def stall(request: web.Request) -> web.Response:
            future = asyncio.run_coroutine_threadsafe(self.monitor.take(), self.loop.loop)
            value = await asyncio.wrap_future(future)
            return web.json_response({"stall": value, "longest": self.monitor.longest_ever})

        async def logs(request: web.Request) -> web.Response:
            return web.json_response(list(self.logs.lines)[-int(request.query.get("n", "4")) :])

        async def stop(request: web.Request) -> web.Response:
            self.stopped.set()
            return web.json_response({})

        app = web.Application()
        app.router.add_get("/stall", stall)
        app.router.add_get("/logs", logs)
        app.router.add_post("/stop", stop)
        return app

    def close(self) -> None:
        if self._stop is not None and self._serving is not None:
            stop, serving = self._stop, self._serving

            async def finish() -> None:
                stop.set()
                await asyncio.gather(serving, return_exceptions=True)

            with contextlib.suppress(Exception):
                self.loop.run(finish(), timeout=30)
        self.loop.close()

        async def close_aux() -> None:
            for runner in self._runners:
                await runner.cleanup()

        with contextlib.suppress(Exception):
            self.aux.run(close_aux())
        self.aux.close()


def _child_main(argv: list[str]) -> int:
    """``python -m extmsg.testing.fuzz module:function folder``: serve until told to stop."""
    module, _, function = argv[0].partition(":")
    setup = getattr(importlib.import_module(module), function)
    # On SIGUSR1 every thread's stack goes to stderr, even while one holds the interpreter
    # lock: how the test side tells what wedged the server.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    host = FuzzHost(Path(argv[1]))
    facts = host.start(setup)
    print(json.dumps(facts), flush=True)
    host.stopped.wait()
    host.close()
    return 0


# -- the test's side ---------------------------------------------------------------------------


class FuzzServer:
    """A fuzz target: ``extmsg`` serving in a process of its own, set up by ``setup`` (a
    ``"module:function"`` taking a :class:`FuzzHost` and the sandbox's web API base URL and
    returning a :class:`FuzzSetup`). Use as a context manager (a module-scoped fixture).

    ``folder`` holds the store (:attr:`FuzzHost.folder` on the server's side). A process of its
    own, because a routine that is quadratic in C (a regular expression)
    holds the interpreter lock: in-process, it would freeze the test too. Here the test times
    out, names the example and ends the process.
    """

    def __init__(self, setup: str, folder: Path) -> None:
        self.setup = setup
        self.folder = folder
        self.tally: dict[str, collections.Counter[str]] = {}
        self.longest_request = 0.0
        self.longest_stall = 0.0
        self.rss_start = 0
        self.extra: dict[str, Any] = {}
        self.failures: dict[str, collections.Counter[str]] = {}
        self.examples: dict[str, str] = {}
        self.restarts = 0
        #: Why the server stopped answering, once it did.
        self.wedged: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._facts: dict[str, Any] = {}
        self._db: sqlite3.Connection | None = None
        self._log_file: Any = None

    def __enter__(self) -> FuzzServer:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        if self._log_file is not None:  # a restart
            self._log_file.close()
        self._log_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen(  # noqa: S603 - this interpreter, a module of ours
            [sys.executable, "-m", "extmsg.testing.fuzz", self.setup, str(self.folder)],
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=env,
        )
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], 90)
        line = self._proc.stdout.readline() if ready else b""
        if not line:
            self._log_file.seek(0)
            output = self._log_file.read().decode("utf-8", "replace")[-3000:]
            raise RuntimeError(f"the fuzz server did not start:\n{output}")
        self._facts = json.loads(line)
        self.extra = dict(self._facts["extra"])
        self._db = sqlite3.connect(self._facts["store"], timeout=10, check_same_thread=False)
        self.rss_start = self.rss_start or rss_kib(self._proc.pid)

    def close(self) -> None:
        self._stop_process(report=True)
        if self._log_file is not None:
            self._log_file.close()

    def _stop_process(self, *, report: bool = False) -> None:
        if self._proc is not None and self._proc.poll() is None:
            facts = self.report()
            if not self.wedged:
                with contextlib.suppress(OSError, ValueError):
                    self._control("/stop", method="POST", timeout=10)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(40)
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait(10)
            if report:
                self._write_report(facts)
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- facts ---------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        return str(self._facts["base"])

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def _control(self, path: str, *, method: str = "GET", timeout: float) -> Any:
        url = self._facts["control"] + path  # http://127.0.0.1:…, from the child
        request = urllib.request.Request(url, method=method)  # noqa: S310
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())

    def stored(self) -> tuple[int, int]:
        """(messages, jobs) in the store, leaving out the jobs the engine itself adds when it
        reports a state to Unblu (they come from earlier work, not from the request at hand)."""
        assert self._db is not None
        row = self._db.execute(
            "SELECT (SELECT COUNT(*) FROM messages),"
            " (SELECT COUNT(*) FROM jobs WHERE kind != 'to_unblu.state')"
        ).fetchone()
        return int(row[0]), int(row[1])

    def recent_logs(self, count: int = 4) -> str:
        """The server's last few log records, a traceback cut to its first line and its end."""
        try:
            lines: list[str] = self._control(f"/logs?n={count}", timeout=3)
        except (OSError, ValueError) as exc:
            return f"(the server does not answer: {exc})"
        out = []
        for line in lines:
            rows = line.splitlines()
            out.append("\n".join([*rows[:1], *(["  …"] if len(rows) > 4 else []), *rows[1:][-3:]]))
        return "\n".join(out)

    def report(self) -> dict[str, Any]:
        assert self._proc is not None
        return {
            "setup": self.setup,
            "routes": {route: dict(sorted(c.items())) for route, c in sorted(self.tally.items())},
            "server_rss_kib_start": self.rss_start,
            "server_rss_kib_end": rss_kib(self._proc.pid),
            "longest_stall_s": round(self.longest_stall, 4),
            "longest_request_s": round(self.longest_request, 4),
            "failures": {route: dict(c) for route, c in sorted(self.failures.items())},
            "restarts": self.restarts,
            "first_of_each_failure": self.examples,
        }

    def _write_report(self, report: dict[str, Any]) -> None:
        path = os.environ.get("EXTMSG_FUZZ_REPORT")
        if path and self.tally:
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps(report) + "\n")

    # -- exchanges -----------------------------------------------------------------------------
    def _take_stall(self, when: str) -> float:
        try:
            value = float(self._control("/stall", timeout=WEDGE_LIMIT)["stall"])
        except (OSError, ValueError):
            self.wedged = f"its event loop was blocked over {WEDGE_LIMIT:g}s ({when})"
            raise LoopStalled(
                f"the server's event loop is blocked (over {WEDGE_LIMIT:g}s, {when}); "
                f"where it is:\n{self._stacks()}"
            ) from None
        self.longest_stall = max(self.longest_stall, value)
        return value

    def _settle(self) -> None:
        """Give the engine a moment (``EXTMSG_FUZZ_SETTLE`` seconds at most, 0.25 by default)
        to run the jobs an accepted input made, so a stall they cause is charged to this
        example, not to the next one."""
        assert self._db is not None
        deadline = time.monotonic() + float(os.environ.get("EXTMSG_FUZZ_SETTLE", "0.25"))
        while time.monotonic() < deadline:
            row = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'running'"
                " OR (state = 'ready' AND next_at <= ?)",
                (time.time(),),
            ).fetchone()
            if not row[0]:
                return
            time.sleep(0.01)

    def _stacks(self) -> str:
        """The server's event loop thread's stack, dumped by the process itself."""
        if self._proc is None or self._log_file is None or self._proc.poll() is not None:
            return "(the server process has ended)"
        self._log_file.seek(0, os.SEEK_END)
        start = self._log_file.tell()
        os.kill(self._proc.pid, signal.SIGUSR1)
        time.sleep(0.5)
        self._log_file.seek(start)
        dump: str = self._log_file.read().decode("utf-8", "replace")
        busy = []
        for block in dump.split("\n\n"):
            frames = [
                line.strip() for line in block.splitlines() if line.strip().startswith("File")
            ]
            # the thread in extmsg's own code (below the test harness) is the culprit
            ours = [f for f in frames if "/extmsg" in f and "testing/fuzz.py" not in f]
            if ours:
                busy.append("\n".join(frames[:10]))
        if busy:
            return "\n\n".join(busy)
        return dump[-3000:]

    def measure(self, route: str, call: Callable[[], Reply]) -> Reply:
        """Run one client exchange and check the promise: an answer that is no server error,
        within :data:`REQUEST_LIMIT`, the server's loop never stalled :data:`STALL_LIMIT`,
        and nothing stored when the answer is a refusal.

        With ``EXTMSG_FUZZ_RECORD=1`` a broken promise is counted in the report instead of
        failing the example (and a wedged server is restarted): a long run then covers every
        example and tells how often each kind of failure happened."""
        try:
            return self._measure(route, call)
        except AssertionError as exc:
            if os.environ.get("EXTMSG_FUZZ_RECORD") != "1":
                raise
            kind = type(exc).__name__
            self.failures.setdefault(route, collections.Counter())[kind] += 1
            self.examples.setdefault(kind, str(exc)[:1500])
            if self.wedged:
                self.restarts += 1
                self._stop_process()
                self.wedged = None
                self._start()
            return Reply(None, b"", error=kind)

    def _measure(self, route: str, call: Callable[[], Reply]) -> Reply:
        if self.wedged:
            raise ServerWedged(f"{route}: an earlier example wedged the server: {self.wedged}")
        before = self.stored()
        self._take_stall("before the request")
        started = time.monotonic()
        reply = call()
        elapsed = time.monotonic() - started
        if reply.code is not None and not reply.refused:
            self._settle()
        stall = self._take_stall(f"{route} answered {reply!r}"[:400])
        after = self.stored()
        self.longest_request = max(self.longest_request, elapsed)
        counter = self.tally.setdefault(route, collections.Counter())
        counter[str(reply.code) if reply.code is not None else "none"] += 1

        def context(problem: str) -> str:
            return f"{route}: {problem}\n{reply!r}\nrecent server log:\n{self.recent_logs()}"

        # One exception type per broken promise: Hypothesis reports each kind of failure
        # it finds (a 5xx and a stall in one run), not only the first.
        if reply.server_error:
            kind = _failure_kind(self.recent_logs(1)) if reply.kind == "http" else ServerFailed
            raise kind(context(f"server error: {reply.server_error}"))
        if stall > STALL_LIMIT:
            raise LoopStalled(
                context(f"the server's event loop stalled {stall:.2f}s (limit {STALL_LIMIT}s)")
            )
        if elapsed > REQUEST_LIMIT:
            raise TooSlow(context(f"took {elapsed:.2f}s (limit {REQUEST_LIMIT}s)"))
        if reply.refused and after != before:
            raise StoredWhenRefused(
                context(f"refused, yet the store went from {before} to {after} (messages, jobs)")
            )
        return reply

    def http(
        self,
        route: str,
        method: str,
        target: str | bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
    ) -> Reply:
        """One HTTP request to the server, checked by :meth:`measure`."""
        raw_target = target.encode("latin-1") if isinstance(target, str) else target
        return self.measure(
            route,
            lambda: http_exchange(
                "127.0.0.1",
                self.port,
                method.encode(),
                raw_target,
                headers or [],
                body,
                timeout=WEDGE_LIMIT,
            ),
        )


if __name__ == "__main__":
    from extmsg.testing import fuzz as _canonical  # not this __main__ copy of the module

    sys.exit(_canonical._child_main(sys.argv[1:]))
