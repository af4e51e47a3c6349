"""How fast extmsg is, as ratios to floors measured in the same run.

    python3 dev.py bench [--quick] [--workers N] [--synchronous full] [--stream N]
    python3 dev.py bench [--quick] --store postgres [--instances N] [--workers N]
    # or: .venv/bin/python benchmarks/run.py …

Every server runs in a process of its own on 127.0.0.1: the floors (``floor.py``), then the
Unblu sandbox and the Twilio fake (``peers.py``) and a real ``extmsg serve`` between them. The
load generator (``loadgen.py``) is a process of its own too, started once per phase.

Phases:

1. Floors (a) bare aiohttp and (b) aiohttp + one SQLite commit per request: acknowledged
   requests/s as fast as possible, then ack latency at half of that rate.
2. ``extmsg serve``: time to ready (process start → ``/readyz`` 200), idle RSS; warm-up (one
   conversation per contact).
3. Inbound (signed Twilio webhooks) and outbound (signed Unblu v4 new_message requests) as fast
   as possible: acknowledged requests/s and end-to-end messages/s, counted where they arrive
   (the sandbox's sendMessage, the fake's Messages API).
4. Fixed rate at half the measured maximum: ack latency at half the ack maximum, end-to-end
   latency at half the end-to-end maximum (above it the backlog only grows).
5. RSS before and after streaming 1,000,000 messages (half each way; ``--quick``: far fewer;
   ``--stream N``: N), with progress every half minute. The generators keep no per-message
   state; the sandbox and the Twilio fake keep every message (over 1 GiB each for a million).

``--synchronous full`` runs floor (b) with ``PRAGMA synchronous=FULL`` and extmsg with
``[store] synchronous = "full"`` (power-loss durability: a sync of the log per commit); the
report's heading says which was used. To see what FULL costs, run once with and once without,
back to back, and compare the two reports: each compares extmsg with a floor that syncs alike.

After every phase the runner waits until extmsg has no ready or running job left, so phases
do not overlap. The Twilio fake's status callbacks are off unless ``--status-callbacks``. The
CPU each process used is recorded per phase, and so is what other processes of the machine
used: a run that shared the machine says so.

Prints a table and writes everything measured to ``benchmarks/results/`` as JSON.

PostgreSQL: ``run.py --store postgres [--instances N] [--workers N]`` creates a fresh database
on the server ``--pg-dsn`` names (default ``$EXTMSG_BENCH_POSTGRES_DSN``, else
``$EXTMSG_TEST_POSTGRES_DSN``, else ``postgresql://postgres@127.0.0.1:5432/postgres``; the
role must be allowed to create databases) and drops it at the end, also after a failure, Ctrl-C
or SIGTERM. The second floor is then (c) aiohttp + one PostgreSQL commit per request (asyncpg,
autocommitted ``INSERT``, a pool of 10 connections) instead of (b). ``--instances N`` starts N
``extmsg serve`` processes on that database, each with its own port and admin port and the
same ``public_url`` (the first one's), like instances behind a load balancer; the load
generator sends its requests to each in turn. Each instance runs ``--workers`` worker
processes of its own. Ready means every instance's public and admin ``/readyz`` say so;
between phases the runner waits until the database holds no ready or running job. The report
gives the whole machine's figures and one process's share (instances x workers processes),
the CPU of every instance, and on a line of its own the CPU of the PostgreSQL server's
processes that worked for the run (the bench database's backends, the WAL writer,
checkpointer and background writer), which shares the machine's cores with everything else,
and the database's transactions per message (``pg_stat_database``, each phase's drain
included): the store's round trips, a figure the machine's load does not move.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    BENCH,
    CHANNEL,
    FROM_NUMBER,
    ROOT,
    SANDBOX_PASSWORD,
    SANDBOX_USER,
    WEBHOOK_SECRET,
    cpu_seconds,
    free_port,
    key_prefix,
    machine_busy_seconds,
    postgres_cpu,
    postgres_cpu_since,
    rss_kib,
)

PY = sys.executable
INBOUND_PATH = f"/channels/{CHANNEL}/inbound"
OUTBOUND_PATH = f"/unblu/{CHANNEL}"

CONFIG = """\
[server]
port = {port}
public_url = "http://127.0.0.1:{public_port}"
shutdown_timeout = 5.0
workers = {workers}
event_loop = "{event_loop}"

[admin]
listen = "127.0.0.1:{admin_port}"

[store]
{store}

[unblu]
base_url = "{unblu}"
api_version = "v4"
username = "{user}"
password = "{password}"

[[channels]]
name = "{channel}"
messenger = "sms_twilio"
webhook_secret = "{secret}"
[channels.settings]
account_sid = "{account_sid}"
auth_token = "{auth_token}"
from_number = "{from_number}"
api_base_url = "{twilio}"
"""


@dataclass(frozen=True)
class Sizes:
    floor_count: int
    count: int
    rate_seconds: float
    stream_count: int
    contacts: int = 200
    concurrency: int = 64
    window: int = 2000
    warmup: int = 2000


FULL = Sizes(floor_count=100_000, count=30_000, rate_seconds=10.0, stream_count=1_000_000)
#: Untimed requests a floor answers before it is measured.
FLOOR_WARMUP = 2000
QUICK = Sizes(floor_count=15_000, count=2_500, rate_seconds=1.5, stream_count=4_000, warmup=1000)


# -- processes --------------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


@dataclass
class Run:
    workdir: Path
    sizes: Sizes
    quick: bool
    status_callbacks: bool
    profile: Path | None = None
    profile_rate: int = 250
    workers: int = 1
    event_loop: str = "auto"
    synchronous: str = "normal"
    #: ``--store postgres``: the run's own database, its DSN and its name, and the DSN the
    #: runner reads the server's statistics through (not counted in the database's).
    dsn: str | None = None
    database: str | None = None
    server_dsn: str | None = None
    instances: int = 1
    procs: list[Proc] = field(default_factory=list)
    phase_no: int = 0

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                args,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        proc = Proc(name, popen, log, time.monotonic())
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def transactions(self) -> int | None:
        """Transactions the run's database committed or rolled back so far (PostgreSQL's
        ``pg_stat_database``); ``None`` with SQLite."""
        if self.server_dsn is None:
            return None
        import asyncpg

        async def read() -> int:
            conn = await asyncpg.connect(self.server_dsn, timeout=10)
            try:
                count = await conn.fetchval(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
                    self.database,
                )
                return int(count or 0)
            finally:
                await conn.close()

        return asyncio.run(read())

    def settled_transactions(self) -> int | None:
        """:meth:`transactions` once the backends reported theirs: they do so after each
        transaction, but at most once a second."""
        if self.server_dsn is None:
            return None
        time.sleep(1.1)
        return self.transactions()

    def next_prefix(self, kind: str) -> str:
        self.phase_no += 1
        return key_prefix(kind, self.phase_no)


def wait_http(proc: Proc, url: str, limit: float = 30.0, ok: Any = None) -> float:
    """Poll ``url`` until it answers 200 (and ``ok(body)``); seconds since the process start."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            log = proc.log.read_text()
            raise RuntimeError(f"{proc.name} exited {proc.popen.returncode}:\n{log}")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(url, timeout=2) as resp,  # noqa: S310 - our own server
        ):
            body = json.loads(resp.read() or b"null")
            if resp.status == 200 and (ok is None or ok(body)):
                return time.monotonic() - proc.started
        time.sleep(0.005)
    raise RuntimeError(f"{proc.name} not ready after {limit}s:\n{proc.log.read_text()}")


def loadgen(spec: dict[str, Any], watch: list[Proc], database: str | None = None) -> dict[str, Any]:
    """Run one phase in a generator process; add the CPU each watched process used (and with
    ``database``, the PostgreSQL server's for it, as ``postgres``)."""
    before = {p.name: cpu_seconds(p.pid) for p in watch}
    pg_before = postgres_cpu(database) if database else {}
    busy, children, own = machine_busy_seconds(), _children_cpu(), _own_cpu()
    started = time.monotonic()
    done = subprocess.run(
        [PY, str(BENCH / "loadgen.py"), json.dumps(spec)],
        capture_output=True,
        check=False,
        cwd=ROOT,
    )
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr.decode()}")
    result: dict[str, Any] = json.loads(done.stdout)
    seconds = result.get("e2e_seconds") or result["ack_seconds"]
    if not seconds or math.isnan(seconds):
        seconds = result["ack_seconds"]
    result["cpu"] = {p.name: (cpu_seconds(p.pid) - before[p.name]) / seconds for p in watch}
    result["cpu"]["generator"] = result["generator_cpu"]
    ours = sum(cpu_seconds(p.pid) - before[p.name] for p in watch)
    if database:
        for kind, used in postgres_cpu_since(pg_before, database).items():
            result["cpu"][kind] = used / seconds
            ours += used
    ours += (_children_cpu() - children) + (_own_cpu() - own)
    result["other_cpu"] = max(0.0, (machine_busy_seconds() - busy - ours) / elapsed)
    failures = {k: v for k, v in result["statuses"].items() if not k.startswith("2")}
    if failures:
        print(f"    ! not acknowledged: {failures}", flush=True)
    if result.get("stalled"):
        print(f"    ! only {result['arrived']} of {result['acked']} arrived", flush=True)
    return result


@contextlib.contextmanager
def profiled(run: Run, proc: Proc, name: str) -> Iterator[None]:
    """Sample ``proc`` with py-spy while the block runs (``--profile``)."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(PY).parent))
    if run.profile is None or spy is None:
        yield
        return
    run.profile.mkdir(parents=True, exist_ok=True)
    output = run.profile / f"{name}.txt"
    sampler = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(proc.pid),
            "--rate",
            str(run.profile_rate),
            "--format",
            "raw",
            "--nonblocking",
            *(["--subprocesses"] if run.workers > 1 else []),  # the workers, not the supervisor
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)
        sampler.wait(30)


@contextlib.contextmanager
def profiled_fleet(run: Run, fleet: Fleet, name: str) -> Iterator[None]:
    """:func:`profiled` for every instance (``NAME-serve-I.txt`` when there are several)."""
    with contextlib.ExitStack() as stack:
        for proc in fleet.procs:
            one = len(fleet.procs) == 1
            stack.enter_context(profiled(run, proc, name if one else f"{name}-{proc.name}"))
        yield


def quiesce(proc: Proc, admin: str, limit: float = 600.0) -> float:
    """Wait until extmsg has no ready or running job left (its admin listener's ``/metrics``
    says); answer the seconds waited."""
    started = time.monotonic()
    pattern = re.compile(r'^extmsg_jobs\{state="(ready|running)"\} (\S+)$', re.MULTILINE)
    while time.monotonic() - started < limit:
        with urllib.request.urlopen(f"{admin}/metrics", timeout=10) as resp:  # noqa: S310
            text = resp.read().decode()
        if sum(float(v) for _, v in pattern.findall(text)) == 0:
            return time.monotonic() - started
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited {proc.popen.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"extmsg still had work after {limit}s")


def quiesce_postgres(procs: list[Proc], dsn: str, limit: float = 600.0) -> float:
    """Wait until the database the instances share holds no ready or running job; answer the
    seconds waited."""
    import asyncpg

    async def wait() -> float:
        started = time.monotonic()
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            while time.monotonic() - started < limit:
                left = await conn.fetchval(
                    "SELECT count(*) FROM jobs WHERE state IN ('ready', 'running')"
                )
                if left == 0:
                    return time.monotonic() - started
                for proc in procs:
                    if proc.popen.poll() is not None:
                        raise RuntimeError(f"{proc.name} exited {proc.popen.returncode}")
                await asyncio.sleep(0.1)
        finally:
            await conn.close()
        raise RuntimeError(f"extmsg still had work after {limit}s")

    return asyncio.run(wait())


@dataclass
class Fleet:
    """The ``extmsg serve`` instances of a run: one, or ``--instances N`` on one PostgreSQL
    database, each with its public and admin base URL."""

    procs: list[Proc]
    bases: list[str]
    admins: list[str]
    dsn: str | None = None

    def rss_kib(self) -> int:
        return sum(rss_kib(proc.pid) for proc in self.procs)

    def quiesce(self) -> float:
        if self.dsn is None:
            return quiesce(self.procs[0], self.admins[0])
        return quiesce_postgres(self.procs, self.dsn)


def store_section(run: Run) -> str:
    """The ``[store]`` lines of an instance's configuration."""
    if run.dsn is None:
        return f'path = "{run.workdir / "extmsg.sqlite3"}"\nsynchronous = "{run.synchronous}"'
    # The DSN comes from the environment, as in production: no password in the file.
    return 'backend = "postgres"\ndsn = "${EXTMSG_BENCH_DATABASE_URL}"'


def start_fleet(run: Run, sandbox_url: str, twilio_url: str) -> tuple[Fleet, float]:
    """Start the instances together; answer them and the seconds until the last was ready."""
    ports = [(free_port(), free_port()) for _ in range(run.instances)]
    env = {
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    }
    if run.dsn is not None:
        env["EXTMSG_BENCH_DATABASE_URL"] = run.dsn
    fleet = Fleet([], [], [], run.dsn)
    for i, (port, admin_port) in enumerate(ports):
        one = run.instances == 1
        config = run.workdir / ("extmsg.toml" if one else f"extmsg-{i + 1}.toml")
        config.write_text(
            CONFIG.format(
                port=port,
                public_port=ports[0][0],
                admin_port=admin_port,
                store=store_section(run),
                unblu=f"{sandbox_url}/app/rest",
                user=SANDBOX_USER,
                password=SANDBOX_PASSWORD,
                channel=CHANNEL,
                secret=WEBHOOK_SECRET,
                account_sid=ACCOUNT_SID,
                auth_token=AUTH_TOKEN,
                from_number=FROM_NUMBER,
                twilio=twilio_url,
                workers=run.workers,
                event_loop=run.event_loop,
            )
        )
        name = "serve" if one else f"serve-{i + 1}"
        cmd = [PY, "-m", "extmsg", "serve", "--config", str(config)]
        fleet.procs.append(run.start(name, cmd, env=env))
        fleet.bases.append(f"http://127.0.0.1:{port}")
        fleet.admins.append(f"http://127.0.0.1:{admin_port}")
    ready = max(
        wait_http(proc, f"{base}/readyz", limit=60)
        for proc, base in zip(fleet.procs, fleet.bases, strict=True)
    )
    return fleet, ready


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def say(text: str) -> None:
    print(text, flush=True)


# -- phases -----------------------------------------------------------------------------------
def floor_phase(run: Run, kind: str) -> dict[str, Any]:
    port = free_port()
    args = [PY, str(BENCH / "floor.py"), kind, "--port", str(port)]
    if kind == "sqlite":
        args += ["--db", str(run.workdir / "floor.sqlite3")]
        args += ["--synchronous", run.synchronous.upper()]
    env = {"FLOOR_POSTGRES_DSN": run.dsn or ""} if kind == "postgres" else None
    database = run.database if kind == "postgres" else None
    proc = run.start(f"floor-{kind}", args, env=env)
    ready = wait_http(proc, f"http://127.0.0.1:{port}/readyz")
    base = f"http://127.0.0.1:{port}"
    common = {
        "direction": "inbound",
        "target": base,
        "public_url": base,
        "path": INBOUND_PATH,
        "contacts": run.sizes.contacts,
    }
    say(f"  floor ({kind}): as fast as possible")
    xacts = run.transactions() if database else None
    top = loadgen(
        {
            **common,
            "mode": "max",
            "count": run.sizes.floor_count,
            "concurrency": run.sizes.concurrency,
            "warmup": FLOOR_WARMUP,
            "warmup_prefix": run.next_prefix("SM"),
            "prefix": run.next_prefix("SM"),
        },
        [proc],
        database,
    )
    if xacts is not None:
        top["pg_transactions"] = (run.settled_transactions() or 0) - xacts
    # What the CPU and transaction counts cover: the untimed warm-up requests too.
    top["requests_counted"] = top["acked"] + FLOOR_WARMUP
    rate = top["ack_rate"] / 2
    say(f"  floor ({kind}): {rate:,.0f}/s for {run.sizes.rate_seconds:g}s")
    half = loadgen(
        {
            **common,
            "mode": "rate",
            "rate": rate,
            "count": int(rate * run.sizes.rate_seconds),
            "concurrency": 256,
            "prefix": run.next_prefix("SM"),
        },
        [proc],
        database,
    )
    proc.stop()
    return {"ready_seconds": ready, "max": top, "half": half}


def extmsg_phases(run: Run) -> dict[str, Any]:
    sizes = run.sizes
    out: dict[str, Any] = {}
    sandbox_port, twilio_port = free_port(), free_port()
    cb = ["--status-callbacks"] if run.status_callbacks else []
    sandbox = run.start(
        "sandbox", [PY, str(BENCH / "peers.py"), "sandbox", "--port", str(sandbox_port)]
    )
    twilio = run.start(
        "twilio", [PY, str(BENCH / "peers.py"), "twilio", "--port", str(twilio_port), *cb]
    )
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    twilio_url = f"http://127.0.0.1:{twilio_port}"
    wait_http(sandbox, f"{sandbox_url}/bench/count")
    wait_http(twilio, f"{twilio_url}/bench/count")

    fleet, out["ready_seconds"] = start_fleet(run, sandbox_url, twilio_url)
    out["rss_idle_kib"] = fleet.rss_kib()
    say(
        f"  extmsg serve ready in {out['ready_seconds'] * 1000:.0f} ms,"
        f" idle RSS {out['rss_idle_kib'] / 1024:.1f} MiB"
        + (f" ({run.instances} instances)" if run.instances > 1 else "")
    )
    for proc, admin in zip(fleet.procs, fleet.admins, strict=True):
        wait_http(
            proc,
            f"{admin}/readyz",
            limit=60,
            ok=lambda body: bool(body["channels"][CHANNEL]["unblu_channel_id"]),
        )
    watch = [*fleet.procs, sandbox, twilio]

    def phase(spec: dict[str, Any]) -> dict[str, Any]:
        """One generator run, then wait until extmsg finished every job it caused."""
        xacts = run.transactions()
        result = loadgen(spec, watch, run.database)
        result["drain_seconds"] = fleet.quiesce()
        if xacts is not None:
            # The phase's and its drain's (with the runner's polls for the drain, ten a second).
            result["pg_transactions"] = (run.settled_transactions() or 0) - xacts
        return result

    base = fleet.bases[0]
    # Several instances: the generator takes each in turn, signing for the first one's URL,
    # the public_url they share.
    targets = {"targets": fleet.bases} if len(fleet.bases) > 1 else {}
    inbound = {
        "direction": "inbound",
        "target": base,
        **targets,
        "public_url": base,
        "path": INBOUND_PATH,
        "contacts": sizes.contacts,
        "collector": sandbox_url,
    }
    outbound = {
        "direction": "outbound",
        "target": base,
        **targets,
        "path": OUTBOUND_PATH,
        "mint": sandbox_url,
        "collector": twilio_url,
    }

    say(f"  warm-up: a conversation for each of {sizes.contacts} contacts, then traffic both ways")
    phase(
        {
            **inbound,
            "mode": "max",
            "count": sizes.contacts,
            "concurrency": 16,
            "prefix": run.next_prefix("SM"),
        }
    )
    phase(
        {
            **inbound,
            "mode": "max",
            "count": sizes.warmup,
            "concurrency": sizes.concurrency,
            "prefix": run.next_prefix("SM"),
        }
    )
    phase(
        {
            **outbound,
            "mode": "max",
            "count": sizes.warmup,
            "concurrency": sizes.concurrency,
            "prefix": run.next_prefix("OB"),
        }
    )
    out["rss_warm_kib"] = fleet.rss_kib()

    for name, spec in (("inbound", inbound), ("outbound", outbound)):
        kind = "SM" if name == "inbound" else "OB"
        say(f"  {name}: {sizes.count:,} as fast as possible")
        with profiled_fleet(run, fleet, f"{name}-max"):
            top = phase(
                {
                    **spec,
                    "mode": "max",
                    "count": sizes.count,
                    "concurrency": sizes.concurrency,
                    "prefix": run.next_prefix(kind),
                }
            )
        say(
            f"    acked {top['ack_rate']:,.0f}/s, end to end {top['e2e_rate']:,.0f}/s;"
            f" the last jobs finished {top['drain_seconds']:.1f}s after the last arrival"
        )
        half_ack = top["ack_rate"] / 2
        say(f"  {name}: {half_ack:,.0f}/s (half the ack maximum) for {sizes.rate_seconds:g}s")
        at_ack = phase(
            {
                **spec,
                "mode": "rate",
                "rate": half_ack,
                "count": int(half_ack * sizes.rate_seconds),
                "concurrency": 256,
                "e2e_latency": True,
                "prefix": run.next_prefix(kind),
            }
        )
        half_e2e = top["e2e_rate"] / 2
        say(
            f"  {name}: {half_e2e:,.0f}/s (half the end-to-end maximum) for {sizes.rate_seconds:g}s"
        )
        at_e2e = phase(
            {
                **spec,
                "mode": "rate",
                "rate": half_e2e,
                "count": int(half_e2e * sizes.rate_seconds),
                "concurrency": 256,
                "e2e_latency": True,
                "prefix": run.next_prefix(kind),
            }
        )
        out[name] = {"max": top, "half_ack": at_ack, "half_e2e": at_e2e}

    time.sleep(1.0)
    out["rss_before_kib"] = fleet.rss_kib()
    half = sizes.stream_count // 2
    say(
        f"  streaming {sizes.stream_count:,} messages ({half:,} each way)"
        f"{f' [--quick: the full run streams {FULL.stream_count:,}]' if run.quick else ''}"
    )
    started = time.monotonic()
    specs = [
        {
            **spec,
            "mode": "stream",
            "count": half,
            "window": sizes.window,
            "concurrency": 32,
            "prefix": run.next_prefix(kind),
        }
        for spec, kind in ((inbound, "SM"), (outbound, "OB"))
    ]
    streams = [run_async_loadgen(spec) for spec in specs]
    cpu_before = {p.name: cpu_seconds(p.pid) for p in watch}
    xacts = run.transactions()
    pg_before = postgres_cpu(run.database) if run.database else {}
    every = 30.0 if sizes.stream_count > 50_000 else math.inf
    while any(p.poll() is None for p in streams):
        time.sleep(0.2)
        if time.monotonic() - started >= every:
            every += 30.0
            arrived = sum(arrivals(spec) for spec in specs)
            seconds = time.monotonic() - started
            say(
                f"    {arrived:,} arrived in {seconds:.0f}s ({arrived / seconds:,.0f}/s),"
                f" RSS {fleet.rss_kib() / 1024:.1f} MiB"
            )
    results = [collect(p) for p in streams]
    fleet.quiesce()
    elapsed = time.monotonic() - started
    time.sleep(2.0)
    out["rss_after_kib"] = fleet.rss_kib()
    cpu = {p.name: (cpu_seconds(p.pid) - cpu_before[p.name]) / elapsed for p in watch}
    if run.database:
        for kind, used in postgres_cpu_since(pg_before, run.database).items():
            cpu[kind] = used / elapsed
    out["stream"] = {
        "count": sizes.stream_count,
        "seconds": elapsed,
        "rate": sum(r.get("arrived", 0) for r in results) / elapsed,
        "results": results,
        "cpu": cpu,
    }
    if xacts is not None:
        out["stream"]["pg_transactions"] = (run.transactions() or 0) - xacts  # 2 s settled
    say(
        f"    {out['stream']['rate']:,.0f} messages/s; RSS"
        f" {out['rss_before_kib'] / 1024:.1f} → {out['rss_after_kib'] / 1024:.1f} MiB"
    )
    for proc in (*fleet.procs, twilio, sandbox):
        proc.stop()
    return out


def run_async_loadgen(spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PY, str(BENCH / "loadgen.py"), json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


def arrivals(spec: dict[str, Any]) -> int:
    """How many of a phase's messages arrived at its collector so far."""
    url = f"{spec['collector']}/bench/count?prefix={spec['prefix']}"
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - our own peer
        count: int = json.loads(resp.read())["count"]
    return count


def collect(popen: subprocess.Popen[bytes]) -> dict[str, Any]:
    stdout, stderr = popen.communicate()
    if popen.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{stderr.decode()}")
    result: dict[str, Any] = json.loads(stdout)
    return result


# -- report -----------------------------------------------------------------------------------
def ratio(value: float, floor: float) -> str:
    if not floor or math.isnan(value) or math.isnan(floor):
        return "-"
    return f"{value / floor:.2f}x"


def lat(d: dict[str, float]) -> str:
    return " / ".join(f"{d[k]:.1f}" for k in ("p50", "p95", "p99"))


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def fleet_label(env: dict[str, Any]) -> str:
    """`` (2 instances x 2 workers)``, ``(2 workers)`` or nothing for one process."""
    instances, workers = int(env.get("instances") or 1), int(env.get("workers") or 1)
    parts = [f"{instances} instances"] if instances > 1 else []
    parts += [f"{workers} workers"] if workers > 1 else []
    return f" ({' x '.join(parts)})" if parts else ""


def report(data: dict[str, Any]) -> list[str]:
    env = data["environment"]
    # With PostgreSQL, the second floor is (c), a PostgreSQL commit, in (b)'s column.
    postgres = env.get("store") == "postgres"
    fl, db = ("c", "PostgreSQL") if postgres else ("b", "SQLite")
    a, x = data["floor_bare"], data["extmsg"]
    b = data["floor_postgres"] if postgres else data["floor_sqlite"]
    fa, fb = a["max"]["ack_rate"], b["max"]["ack_rate"]
    rows: list[tuple[str, str, str, str, str]] = []

    def row(name: str, value: str, ra: str = "", rb: str = "", target: str = "") -> None:
        rows.append((name, value, ra, rb, target))

    row("floor (a) bare aiohttp: acked req/s", f"{fa:,.0f}", "1.00x", ratio(fa, fb))
    # SQLite names its synchronous setting; PostgreSQL's server settings decide there.
    sync = "" if postgres else f" ({str(env.get('synchronous', 'normal')).upper()})"
    row(f"floor ({fl}) + {db} commit{sync}: acked req/s", f"{fb:,.0f}", ratio(fb, fa), "1.00x")
    n = int(env.get("workers") or 1) * int(env.get("instances") or 1)
    # The floors are one process each; with N workers (of every instance), "whole machine"
    # compares all of extmsg with one floor process, "per process" a worker's share (÷N).
    ack_target, e2e_target = (1.2, 0.4) if n > 1 else (1.0, 0.25)

    def per_process(rate: float) -> None:
        if n > 1:
            row(
                f"  per process (/{n})",
                f"{rate / n:,.0f}",
                ratio(rate / n, fa),
                ratio(rate / n, fb),
            )

    for name in ("inbound", "outbound"):
        top = x[name]["max"]
        row(
            f"extmsg {name}: acked req/s" + fleet_label(env),
            f"{top['ack_rate']:,.0f}",
            ratio(top["ack_rate"], fa),
            ratio(top["ack_rate"], fb),
            f">= {ack_target}x (b): {verdict(top['ack_rate'] >= ack_target * fb)}"
            if name == "inbound" and not postgres  # the targets are (b)'s, SQLite's
            else "",
        )
        per_process(top["ack_rate"])
    for name, where in (("inbound", "sandbox sendMessage"), ("outbound", "Twilio fake send")):
        top = x[name]["max"]
        row(
            f"extmsg {name} end to end: msg/s ({where})",
            f"{top['e2e_rate']:,.0f}",
            ratio(top["e2e_rate"], fa),
            ratio(top["e2e_rate"], fb),
            f">= {e2e_target}x (a): {verdict(top['e2e_rate'] >= e2e_target * fa)}",
        )
        per_process(top["e2e_rate"])
    row("latency, ms p50 / p95 / p99", "", "", "", "")
    row(f"  floor (a) ack @ {a['half']['rate']:,.0f}/s", lat(a["half"]["ack_latency_ms"]))
    row(f"  floor ({fl}) ack @ {b['half']['rate']:,.0f}/s", lat(b["half"]["ack_latency_ms"]))
    for name in ("inbound", "outbound"):
        half = x[name]["half_ack"]
        p99 = half["ack_latency_ms"]["p99"]
        row(
            f"  extmsg {name} ack @ {half['rate']:,.0f}/s (half ack max)",
            lat(half["ack_latency_ms"]),
            ratio(p99, a["half"]["ack_latency_ms"]["p99"]),
            ratio(p99, b["half"]["ack_latency_ms"]["p99"]),
            f"p99 <= 15 ms: {verdict(p99 <= 15)}"
            + (" (above the e2e max)" if half["rate"] > x[name]["max"]["e2e_rate"] else ""),
        )
        half = x[name]["half_e2e"]
        p99 = half["ack_latency_ms"]["p99"]
        row(
            f"  extmsg {name} ack @ {half['rate']:,.0f}/s (half e2e max)",
            lat(half["ack_latency_ms"]),
            ratio(p99, a["half"]["ack_latency_ms"]["p99"]),
            ratio(p99, b["half"]["ack_latency_ms"]["p99"]),
            f"p99 <= 15 ms: {verdict(p99 <= 15)}",
        )
        row(
            f"  extmsg {name} end to end @ {half['rate']:,.0f}/s",
            lat(half.get("e2e_latency_ms", {"p50": math.nan, "p95": math.nan, "p99": math.nan})),
        )
    growth = (x["rss_after_kib"] - x["rss_before_kib"]) / x["rss_before_kib"]
    stream = x["stream"]
    row(
        "RSS of extmsg serve, MiB"
        + (f" (all {env['instances']} instances)" if int(env.get("instances") or 1) > 1 else ""),
        "",
        "",
        "",
        "",
    )
    row("  idle after start", f"{x['rss_idle_kib'] / 1024:.1f}")
    row("  after warm-up", f"{x['rss_warm_kib'] / 1024:.1f}")
    row(
        f"  before / after {stream['count']:,} messages",
        f"{x['rss_before_kib'] / 1024:.1f} / {x['rss_after_kib'] / 1024:.1f}",
        "",
        "",
        f"growth {growth * 100:+.1f}% <= 10%: {verdict(growth <= 0.10)}",
    )
    row(
        "time to ready, ms (start -> /readyz 200"
        + (" on every instance)" if int(env.get("instances") or 1) > 1 else ")"),
        f"{x['ready_seconds'] * 1000:.0f}",
        ratio(x["ready_seconds"], a["ready_seconds"]),
        "",
    )
    head = ("figure", "value", "vs (a)", f"vs ({fl})", "target")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    lines = []
    for r in [head, None, *rows]:
        if r is None:
            lines.append("  ".join("-" * w for w in widths))
            continue
        cells = zip(r, widths, strict=True)
        lines.append(
            "  ".join(
                (c.ljust(w) if i in (0, 4) else c.rjust(w)) for i, (c, w) in enumerate(cells)
            ).rstrip()
        )
    return lines


def other_load(data: dict[str, Any]) -> float:
    """The most CPU other processes of the machine used during a measured phase."""
    found = [0.0]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "other_cpu" in node:
                found.append(node["other_cpu"])
            for value in node.values():
                walk(value)

    walk(data)
    return max(found)


def cpu_lines(data: dict[str, Any]) -> list[str]:
    x = data["extmsg"]
    lines = ["CPU used per process during each phase (1.00 = one core busy):"]
    phases = [
        ("inbound max", x["inbound"]["max"]),
        ("outbound max", x["outbound"]["max"]),
        ("stream", x["stream"]),
    ]
    for name, result in phases:
        cpu = {k: v for k, v in result["cpu"].items() if not k.startswith("postgres")}
        lines.append(f"  {name:<14}" + "  ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    if data["environment"].get("store") == "postgres":
        lines += postgres_cpu_lines(data, phases)
    else:
        lines += cpu_budget_lines(data)
    return lines


def _server_cpu_us(result: dict[str, Any]) -> float | None:
    """CPU µs the server (extmsg serve and its workers, or the floor) used per request or
    message of a phase, from its first request until its last job finished."""
    count = _counted(result)
    if not count:
        return None
    used = sum(v for k, v in result["cpu"].items() if k.startswith(("serve", "floor-")))
    return used * _phase_seconds(result) * 1e6 / count


def cpu_budget_lines(data: dict[str, Any]) -> list[str]:
    """What a message costs the server against what a bare request costs the floor: the ratio
    that bounds end to end against floor (a), whatever the machine's speed."""
    x = data["extmsg"]
    rows = [
        ("floor (a), a request", data["floor_bare"]["max"]),
        ("floor (b), a request", data["floor_sqlite"]["max"]),
        ("extmsg, an inbound message", x["inbound"]["max"]),
        ("extmsg, an outbound message", x["outbound"]["max"]),
    ]
    base = _server_cpu_us(rows[0][1])
    if not base:
        return []
    lines = [
        "server CPU per request (floors) or per message (extmsg, acknowledged and delivered),"
        " µs; vs (a):"
    ]
    for name, result in rows:
        used = _server_cpu_us(result)
        if used is None:
            continue
        lines.append(f"  {name:<29}{used:>7,.0f}  {used / base:>5.2f}x")
    return lines


def _phase_seconds(result: dict[str, Any]) -> float:
    """The seconds a phase's ``cpu`` rates are per (as :func:`loadgen` divides them)."""
    if "ack_seconds" not in result:
        return float(result["seconds"])  # the stream
    seconds = result.get("e2e_seconds") or result["ack_seconds"]
    return float(result["ack_seconds"] if not seconds or math.isnan(seconds) else seconds)


def _counted(result: dict[str, Any]) -> int:
    """The requests or messages a phase's CPU and transaction counts cover."""
    return int(result.get("requests_counted") or result.get("acked") or result.get("count") or 0)


def postgres_cpu_lines(data: dict[str, Any], phases: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The PostgreSQL server's CPU per phase, and CPU per message of extmsg and of it."""
    phases = [("floor (c) max", data["floor_postgres"]["max"]), *phases]
    lines = [
        "PostgreSQL server during each phase (1.00 = one core): the run database's backends;"
        " shared: WAL writer,",
        "checkpointer and background writer, which also work for the server's other databases",
    ]
    for name, result in phases:
        cpu = result["cpu"]
        lines.append(
            f"  {name:<14}backends {cpu['postgres']:.2f}  shared {cpu['postgres_shared']:.2f}"
        )
    lines.append(
        "CPU ms per message (floor (c): per request): extmsg (every instance) / PostgreSQL backends"
    )
    for name, result in phases:
        count = _counted(result)
        if not count:
            continue
        per = _phase_seconds(result) * 1000 / count
        cpu = result["cpu"]
        ours = sum(v for k, v in cpu.items() if k.startswith(("serve", "floor-"))) * per
        lines.append(f"  {name:<14}{ours:.2f} / {cpu['postgres'] * per:.2f}")
    lines.append(
        "PostgreSQL transactions per message (floor (c): per request; pg_stat_database, the"
        " drain included):"
    )
    lines.append(
        "  "
        + "  ".join(
            f"{name} {result['pg_transactions'] / count:.1f}"
            for name, result in phases
            if "pg_transactions" in result and (count := _counted(result))
        )
    )
    return lines


def environment(
    quick: bool,
    status_callbacks: bool,
    workers: int = 1,
    event_loop: str = "auto",
    synchronous: str = "normal",
    store: str = "sqlite",
    instances: int = 1,
) -> dict[str, Any]:
    commit = None
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, check=True, text=True
        ).stdout.strip()
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": "quick" if quick else "full",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "commit": commit,
        "twilio_status_callbacks": status_callbacks,
        "workers": workers,
        "event_loop": event_loop,
        "synchronous": synchronous,
        "store": store,
        "instances": instances,
    }


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    if keep:
        path = Path(tempfile.mkdtemp(prefix="extmsg-bench-"))
        print(f"keeping the run's files in {path}")
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="extmsg-bench-") as tmp:
            yield Path(tmp)


DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def bench_database(server_dsn: str) -> Iterator[tuple[str, str]]:
    """A new database on the server ``server_dsn`` reaches, for this run alone: its DSN and
    name. It is dropped afterwards, also when the run fails or is interrupted."""
    import asyncpg

    name = f"extmsg_bench_{secrets.token_hex(4)}"
    url = urllib.parse.urlsplit(server_dsn)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server_dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE DATABASE {name}"))
    try:
        yield urllib.parse.urlunsplit(url._replace(path=f"/{name}")), name
    finally:
        # FORCE: a backend some killed instance left behind must not keep the database.
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="far fewer messages, about a minute (the figures are rougher)",
    )
    parser.add_argument(
        "--status-callbacks",
        action="store_true",
        help="let the Twilio fake post its status callbacks to extmsg",
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs and databases")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample extmsg serve with py-spy during the maximum-rate phases"
        " and write the stacks (collapsed) to DIR",
    )
    parser.add_argument(
        "--profile-rate",
        type=int,
        default=250,
        metavar="HZ",
        help="py-spy samples per second (--profile; default 250)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run extmsg serve with N worker processes (default 1); the report gives the"
        " whole machine's and one process's share against the floors",
    )
    parser.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="extmsg serve's [server] event_loop (default auto: uvloop when installed)",
    )
    parser.add_argument(
        "--synchronous",
        choices=("normal", "full"),
        default="normal",
        help="[store] synchronous for extmsg serve, and PRAGMA synchronous for floor (b)"
        " (default normal)",
    )
    parser.add_argument(
        "--stream",
        type=int,
        metavar="N",
        help=f"messages streamed for the RSS figure (default {FULL.stream_count:,},"
        f" --quick {QUICK.stream_count:,})",
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="extmsg's store (default sqlite); postgres: a database of the run's own on the"
        " --pg-dsn server, and floor (c), a PostgreSQL commit per request, instead of (b)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        metavar="N",
        help="with --store postgres: N extmsg serve instances on the one database, the"
        " requests spread over them in turn (default 1)",
    )
    parser.add_argument(
        "--pg-dsn",
        default=os.environ.get("EXTMSG_BENCH_POSTGRES_DSN")
        or os.environ.get("EXTMSG_TEST_POSTGRES_DSN")
        or DEFAULT_PG_DSN,
        metavar="URL",
        help="the PostgreSQL server to create the run's database on, as a postgresql:// URL"
        " naming any database the role may connect to (default $EXTMSG_BENCH_POSTGRES_DSN,"
        f" else $EXTMSG_TEST_POSTGRES_DSN, else {DEFAULT_PG_DSN})",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args(argv)
    postgres = args.store == "postgres"
    if args.instances < 1 or (args.instances > 1 and not postgres):
        parser.error("--instances N needs --store postgres (SQLite is for one instance)")
    if postgres and "://" not in args.pg_dsn:
        parser.error("--pg-dsn: give a postgresql:// URL")
    if postgres and args.synchronous != "normal":
        parser.error("--synchronous is SQLite's; PostgreSQL's server settings decide there")
    if postgres:
        # SIGTERM ends the run like Ctrl-C: the processes stopped, the database dropped.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    sizes = QUICK if args.quick else FULL
    if args.stream is not None:
        sizes = replace(sizes, stream_count=args.stream)
    started = time.monotonic()
    data: dict[str, Any] = {
        "environment": environment(
            args.quick,
            args.status_callbacks,
            args.workers,
            args.event_loop,
            args.synchronous,
            args.store,
            args.instances,
        )
    }
    with workspace(args.keep) as workdir, contextlib.ExitStack() as stack:
        run = Run(
            workdir,
            sizes,
            args.quick,
            args.status_callbacks,
            args.profile,
            args.profile_rate,
            args.workers,
            args.event_loop,
            args.synchronous,
            instances=args.instances,
        )
        if postgres:
            from extmsg.store.postgres import describe_dsn

            run.dsn, run.database = stack.enter_context(bench_database(args.pg_dsn))
            run.server_dsn = args.pg_dsn
            say(f"PostgreSQL: database {run.database} on {describe_dsn(args.pg_dsn)}")
        try:
            say("floors")
            data["floor_bare"] = floor_phase(run, "bare")
            if postgres:
                data["floor_postgres"] = floor_phase(run, "postgres")
            else:
                data["floor_sqlite"] = floor_phase(run, "sqlite")
            say("extmsg serve with the Unblu sandbox and the Twilio fake")
            data["extmsg"] = extmsg_phases(run)
        finally:
            run.stop_all()
    data["seconds"] = time.monotonic() - started
    data["other_cpu_max"] = other = other_load(data)
    args.out.mkdir(parents=True, exist_ok=True)
    kind = data["environment"]["mode"] + ("-postgres" if postgres else "")
    path = args.out / f"bench-{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2))
    print()
    mode = "quick run: rough figures" if args.quick else "full run"
    store = f"PostgreSQL, {args.instances} instance(s) of " if postgres else ""
    sync = "" if postgres else f" SQLite synchronous {args.synchronous.upper()};"
    print(
        f"extmsg benchmark ({mode}; {os.cpu_count()} CPUs; {store}extmsg serve --workers"
        f" {args.workers}, event loop {args.event_loop};{sync} Twilio status callbacks"
        f" {'on' if args.status_callbacks else 'off'}; {data['seconds']:.0f}s)"
    )
    for line in report(data):
        print(line)
    print()
    for line in cpu_lines(data):
        print(line)
    print(f"other processes on the machine used up to {other:.2f} CPUs during a phase", end="")
    print(": the figures are disturbed, run again on a quiet machine" if other > 0.15 else "")
    print(f"\nwritten to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
