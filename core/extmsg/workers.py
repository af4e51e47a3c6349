"""``extmsg serve --workers N``: N server processes under one supervisor.

The supervisor reads the configuration, binds the sockets and forks the workers; it runs no
event loop and serves nothing itself. Each worker is a whole ``extmsg serve`` (its own event
loop, store connections, engine) on sockets made before the fork:

* **public listener** — a socket per worker, all bound to ``[server]`` host and port with
  ``SO_REUSEPORT``, so the kernel spreads new connections over the workers. The supervisor keeps
  its copy of each open: connections that arrive while a worker restarts wait in that worker's
  queue for its successor instead of being refused. (Without ``SO_REUSEPORT`` the workers share
  one socket.)
* **admin listener** — one socket, served by worker 0 alone. Its ``/metrics`` adds up every
  worker's counters and histograms (``prometheus_client``'s multiprocess mode, files in a
  directory of the supervisor's), those of workers that died and were replaced included, so a
  scrape sees the traffic of the whole server and totals never go back. Its ``/readyz`` lists
  each worker's readiness.

Work done once per server, not once per worker: channel provisioning in Unblu, the check that
Unblu lets us look messages up and the housekeeping purges run in worker 0; the others wait for
the channels' Unblu ids in the store before their engines take jobs. Jobs are shared through the
store's leases like separate instances share them.

Readiness: each worker publishes its own in a shared page; ``/readyz`` answers 200 only while
every worker is ready. The supervisor restarts a worker that exits unless the server is
stopping (at once if it ran for a while, with a growing pause if it keeps dying young); a worker
that fails before the server was ever ready stops the whole server with its exit code, as a
single process would. SIGTERM and SIGINT are passed to every worker, which stop gracefully
(``[server] shutdown_timeout``); the supervisor exits when they have. Workers die with the
supervisor (``PR_SET_PDEATHSIG``), so a killed supervisor leaves no orphan serving.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import HandledError

__all__ = [
    "Cluster",
    "ReadyBoard",
    "WorkerRole",
    "current",
    "leads",
    "listen_socket",
    "supervise",
]

log = logging.getLogger("extmsg.workers")

#: A worker that exits within this many seconds of its start "died young": restarts slow down.
_YOUNG = 5.0
_RESTART_DELAY_MAX = 30.0


class ReadyBoard:
    """One byte per worker in memory shared across the fork: 1 while that worker is ready."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._mem = mmap.mmap(-1, max(count, 1))

    def set(self, index: int, ready: bool) -> None:
        self._mem[index] = 1 if ready else 0

    def get(self, index: int) -> bool:
        return self._mem[index] == 1

    def states(self) -> list[bool]:
        return [self._mem[i] == 1 for i in range(self.count)]

    def all_ready(self) -> bool:
        return all(self.states())


@dataclass(frozen=True)
class WorkerRole:
    """What a worker process is: its index among ``count``, the shared readiness board and
    the sockets made for it before the fork."""

    index: int
    count: int
    board: ReadyBoard
    public: socket.socket
    admin: socket.socket | None = None

    @property
    def leads(self) -> bool:
        """Whether this worker does the once-per-server work (provisioning, housekeeping) and
        serves the admin listener."""
        return self.index == 0


_current: WorkerRole | None = None


def current() -> WorkerRole | None:
    """This process's role when it is a worker of ``serve --workers N``, else None."""
    return _current


def leads() -> bool:
    """Whether this process does what a server does once: true in a server of one process and
    in worker 0 of several. Plugins ask it before binding a port of their own or polling a
    mailbox, which one process of the server must do, not each."""
    return _current is None or _current.leads


def listen_socket(
    host: str, port: int, *, reuse_port: bool, key: str, hint: str, backlog: int = 1024
) -> socket.socket:
    """A listening TCP socket on ``host:port``; a clear error naming ``key`` when it cannot."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise HandledError(
            f"{key}: cannot listen on {host}:{port}: {exc.strerror or exc} (choose another "
            f"with {hint})"
        ) from None
    sock.setblocking(False)
    return sock


@dataclass
class _Worker:
    index: int
    pid: int
    started: float


@dataclass
class Cluster:
    """The supervisor's view: what to fork and what is running."""

    count: int
    run: Callable[[WorkerRole], int]
    """Runs one worker to its end in the forked child; answers the exit code."""
    publics: list[socket.socket]
    admin: socket.socket | None
    metrics_dir: str
    board: ReadyBoard = field(init=False)
    workers: dict[int, _Worker] = field(default_factory=dict)
    delays: dict[int, float] = field(default_factory=dict)
    stopping: bool = False
    was_ready: bool = False

    def __post_init__(self) -> None:
        self.board = ReadyBoard(self.count)

    def role(self, index: int) -> WorkerRole:
        public = self.publics[index % len(self.publics)]
        return WorkerRole(index, self.count, self.board, public, self.admin if index == 0 else None)

    def fork(self, index: int, wakeup: tuple[int, int]) -> None:
        self.board.set(index, False)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                global _current
                _become_worker(wakeup, self.metrics_dir)
                _current = self.role(index)
                code = self.run(_current)
            except HandledError as exc:
                for line in str(exc).splitlines() or [type(exc).__name__]:
                    print(f"error: {line}", file=sys.stderr)
                code = exc.exit_code
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        self.workers[index] = _Worker(index, pid, time.monotonic())
        log.info("worker %d started (pid %d)", index, pid)


def _become_worker(wakeup: tuple[int, int], metrics_dir: str) -> None:
    """Undo in the forked child what is the supervisor's: its signal handling and wake-up
    pipe; die with it; keep metrics in the shared directory."""
    signal.set_wakeup_fd(-1)
    for fd in wakeup:
        os.close(fd)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    _die_with_parent()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from .metrics import use_multiprocess

    use_multiprocess(metrics_dir)


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(name, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the supervisor died before the line above
        os._exit(1)


def supervise(
    count: int,
    run: Callable[[WorkerRole], int],
    *,
    publics: list[socket.socket],
    admin: socket.socket | None,
    shutdown_timeout: float,
    on_ready: Callable[[float], None] | None = None,
) -> int:
    """Fork ``count`` workers running ``run`` and look after them until SIGTERM/SIGINT, or
    until one fails before all were ever ready; answer the exit code for the supervisor."""
    metrics_dir = tempfile.mkdtemp(prefix="extmsg-metrics-")
    cluster = Cluster(count, run, publics, admin, metrics_dir)
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    previous = signal.set_wakeup_fd(write_fd)
    handlers = {
        sig: signal.signal(sig, lambda *_: None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
    }
    started = time.monotonic()
    code = 0
    try:
        for index in range(count):
            cluster.fork(index, (read_fd, write_fd))
        pending: dict[int, float] = {}  # index → when to start it again
        deadline: float | None = None
        while cluster.workers or (pending and not cluster.stopping):
            timeout = 0.05 if not cluster.was_ready else 1.0
            if pending:
                timeout = min(timeout, max(0.0, min(pending.values()) - time.monotonic()))
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(InterruptedError):
                select.select([read_fd], [], [], timeout)
            signals = _drain(read_fd)
            if not cluster.stopping and signals & {signal.SIGTERM, signal.SIGINT}:
                log.info("stopping %d worker(s)", len(cluster.workers))
                _stop(cluster, pending)
                deadline = time.monotonic() + shutdown_timeout + 10.0
            for index, status, worker in _reap(cluster):
                cluster.board.set(index, False)
                if cluster.stopping:
                    if status:
                        log.warning("worker %d %s while stopping", index, _how(status))
                        code = code or _code(status)
                    continue
                if not cluster.was_ready:
                    log.error("worker %d %s before the server was ready", index, _how(status))
                    code = _code(status) or 1
                    _stop(cluster, pending)
                    deadline = time.monotonic() + shutdown_timeout + 10.0
                    continue
                young = time.monotonic() - worker.started < _YOUNG
                delay = min(cluster.delays.get(index, 0.25) * 2, _RESTART_DELAY_MAX)
                delay = delay if young else 0.0
                cluster.delays[index] = delay if young else 0.25
                log.warning(
                    "worker %d (pid %d) %s; starting it again%s",
                    index,
                    worker.pid,
                    _how(status),
                    f" in {delay:.1f}s" if delay else "",
                )
                pending[index] = time.monotonic() + delay
            now = time.monotonic()
            for index, when in list(pending.items()):
                if when <= now and not cluster.stopping:
                    del pending[index]
                    cluster.fork(index, (read_fd, write_fd))
            if not cluster.was_ready and cluster.board.all_ready():
                cluster.was_ready = True
                if on_ready is not None:
                    on_ready(time.monotonic() - started)
            if deadline is not None and time.monotonic() >= deadline and cluster.workers:
                for worker in cluster.workers.values():
                    log.error(
                        "worker %d (pid %d) did not stop in time; killed", worker.index, worker.pid
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGKILL)
                deadline = None
                code = code or 1
    finally:
        for worker in cluster.workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("extmsg stopped (%d workers)", count)
    return code


def _stop(cluster: Cluster, pending: dict[int, float]) -> None:
    """Stop taking connections and pass SIGTERM to every worker."""
    cluster.stopping = True
    pending.clear()
    for sock in [*cluster.publics, *([cluster.admin] if cluster.admin else [])]:
        sock.close()  # the workers' own copies serve until they stop
    for worker in cluster.workers.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGTERM)


def _drain(fd: int) -> set[int]:
    got: set[int] = set()
    while True:
        try:
            data = os.read(fd, 512)
        except BlockingIOError:
            return got
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            return got
        if not data:
            return got
        got.update(data)


def _reap(cluster: Cluster) -> list[tuple[int, int, _Worker]]:
    ended = []
    for index, worker in list(cluster.workers.items()):
        try:
            pid, status = os.waitpid(worker.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = worker.pid, 0
        if pid:
            del cluster.workers[index]
            ended.append((index, status, worker))
    return ended


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def _code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code > 0 else 128 - code if code < 0 else 0
