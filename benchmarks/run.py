"""How fast extmsg is, as ratios to floors measured in the same run.

    python3 dev.py bench [--quick] [--workers N] [--synchronous full] [--stream N]
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
   state; the sandbox and the Twilio fake keep every receipt (some hundred MiB for a million).

``--synchronous full`` runs floor (b) with ``PRAGMA synchronous=FULL`` and extmsg with
``[store] synchronous = "full"`` (power-loss durability: a sync of the log per commit); the
report's heading says which was used. To see what FULL costs, run once with and once without,
back to back, and compare the two reports: each compares extmsg with a floor that syncs alike.

After every phase the runner waits until extmsg has no ready or running job left, so phases
do not overlap. The Twilio fake's status callbacks are off unless ``--status-callbacks``. The
CPU each process used is recorded per phase, and so is what other processes of the machine
used: a run that shared the machine says so.

Prints a table and writes everything measured to ``benchmarks/results/`` as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
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
    rss_kib,
)

PY = sys.executable
INBOUND_PATH = f"/channels/{CHANNEL}/inbound"
OUTBOUND_PATH = f"/unblu/{CHANNEL}"

CONFIG = """\
[server]
port = {port}
public_url = "http://127.0.0.1:{port}"
shutdown_timeout = 5.0
workers = {workers}
event_loop = "{event_loop}"

[admin]
listen = "127.0.0.1:{admin_port}"

[store]
path = "{store}"
synchronous = "{synchronous}"

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


def loadgen(spec: dict[str, Any], watch: list[Proc]) -> dict[str, Any]:
    """Run one phase in a generator process; add the CPU each watched process used."""
    before = {p.name: cpu_seconds(p.pid) for p in watch}
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
    proc = run.start(f"floor-{kind}", args)
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
    top = loadgen(
        {
            **common,
            "mode": "max",
            "count": run.sizes.floor_count,
            "concurrency": run.sizes.concurrency,
            "warmup": 2000,
            "warmup_prefix": run.next_prefix("SM"),
            "prefix": run.next_prefix("SM"),
        },
        [proc],
    )
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
    )
    proc.stop()
    return {"ready_seconds": ready, "max": top, "half": half}


def extmsg_phases(run: Run) -> dict[str, Any]:
    sizes = run.sizes
    out: dict[str, Any] = {}
    sandbox_port, twilio_port, port = free_port(), free_port(), free_port()
    admin_port = free_port()
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

    config = run.workdir / "extmsg.toml"
    config.write_text(
        CONFIG.format(
            port=port,
            admin_port=admin_port,
            store=run.workdir / "extmsg.sqlite3",
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
            synchronous=run.synchronous,
        )
    )
    base = f"http://127.0.0.1:{port}"
    admin = f"http://127.0.0.1:{admin_port}"
    serve = run.start(
        "serve",
        [PY, "-m", "extmsg", "serve", "--config", str(config)],
        env={
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            )
        },
    )
    out["ready_seconds"] = wait_http(serve, f"{base}/readyz", limit=60)
    out["rss_idle_kib"] = rss_kib(serve.pid)
    say(
        f"  extmsg serve ready in {out['ready_seconds'] * 1000:.0f} ms,"
        f" idle RSS {out['rss_idle_kib'] / 1024:.1f} MiB"
    )
    wait_http(
        serve,
        f"{admin}/readyz",
        limit=60,
        ok=lambda body: bool(body["channels"][CHANNEL]["unblu_channel_id"]),
    )
    watch = [serve, sandbox, twilio]

    def phase(spec: dict[str, Any]) -> dict[str, Any]:
        """One generator run, then wait until extmsg finished every job it caused."""
        result = loadgen(spec, watch)
        result["drain_seconds"] = quiesce(serve, admin)
        return result

    inbound = {
        "direction": "inbound",
        "target": base,
        "public_url": base,
        "path": INBOUND_PATH,
        "contacts": sizes.contacts,
        "collector": sandbox_url,
    }
    outbound = {
        "direction": "outbound",
        "target": base,
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
    out["rss_warm_kib"] = rss_kib(serve.pid)

    for name, spec in (("inbound", inbound), ("outbound", outbound)):
        kind = "SM" if name == "inbound" else "OB"
        say(f"  {name}: {sizes.count:,} as fast as possible")
        with profiled(run, serve, f"{name}-max"):
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
    out["rss_before_kib"] = rss_kib(serve.pid)
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
    every = 30.0 if sizes.stream_count > 50_000 else math.inf
    while any(p.poll() is None for p in streams):
        time.sleep(0.2)
        if time.monotonic() - started >= every:
            every += 30.0
            arrived = sum(arrivals(spec) for spec in specs)
            seconds = time.monotonic() - started
            say(
                f"    {arrived:,} arrived in {seconds:.0f}s ({arrived / seconds:,.0f}/s),"
                f" RSS {rss_kib(serve.pid) / 1024:.1f} MiB"
            )
    results = [collect(p) for p in streams]
    quiesce(serve, admin)
    elapsed = time.monotonic() - started
    time.sleep(2.0)
    out["rss_after_kib"] = rss_kib(serve.pid)
    out["stream"] = {
        "count": sizes.stream_count,
        "seconds": elapsed,
        "rate": sum(r.get("arrived", 0) for r in results) / elapsed,
        "results": results,
        "cpu": {p.name: (cpu_seconds(p.pid) - cpu_before[p.name]) / elapsed for p in watch},
    }
    say(
        f"    {out['stream']['rate']:,.0f} messages/s; RSS"
        f" {out['rss_before_kib'] / 1024:.1f} → {out['rss_after_kib'] / 1024:.1f} MiB"
    )
    for proc in (serve, twilio, sandbox):
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


def report(data: dict[str, Any]) -> list[str]:
    a, b, x = data["floor_bare"], data["floor_sqlite"], data["extmsg"]
    fa, fb = a["max"]["ack_rate"], b["max"]["ack_rate"]
    rows: list[tuple[str, str, str, str, str]] = []

    def row(name: str, value: str, ra: str = "", rb: str = "", target: str = "") -> None:
        rows.append((name, value, ra, rb, target))

    row("floor (a) bare aiohttp: acked req/s", f"{fa:,.0f}", "1.00x", ratio(fa, fb))
    sync = str(data["environment"].get("synchronous", "normal")).upper()
    row(f"floor (b) + SQLite commit ({sync}): acked req/s", f"{fb:,.0f}", ratio(fb, fa), "1.00x")
    n = int(data["environment"].get("workers") or 1)
    # The floors are one process each; with N workers, "whole machine" compares all of
    # extmsg with one floor process, "per process" a worker's share (÷N) with it.
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
            f"extmsg {name}: acked req/s" + (f" ({n} workers)" if n > 1 else ""),
            f"{top['ack_rate']:,.0f}",
            ratio(top["ack_rate"], fa),
            ratio(top["ack_rate"], fb),
            f">= {ack_target}x (b): {verdict(top['ack_rate'] >= ack_target * fb)}"
            if name == "inbound"
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
    row(f"  floor (b) ack @ {b['half']['rate']:,.0f}/s", lat(b["half"]["ack_latency_ms"]))
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
    row("RSS of extmsg serve, MiB", "", "", "", "")
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
        "time to ready, ms (start -> /readyz 200)",
        f"{x['ready_seconds'] * 1000:.0f}",
        ratio(x["ready_seconds"], a["ready_seconds"]),
        "",
    )
    head = ("figure", "value", "vs (a)", "vs (b)", "target")
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
        cpu = result["cpu"]
        lines.append(f"  {name:<14}" + "  ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    return lines


def environment(
    quick: bool,
    status_callbacks: bool,
    workers: int = 1,
    event_loop: str = "auto",
    synchronous: str = "normal",
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
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.stream is not None:
        sizes = replace(sizes, stream_count=args.stream)
    started = time.monotonic()
    data: dict[str, Any] = {
        "environment": environment(
            args.quick, args.status_callbacks, args.workers, args.event_loop, args.synchronous
        )
    }
    with workspace(args.keep) as workdir:
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
        )
        try:
            say("floors")
            data["floor_bare"] = floor_phase(run, "bare")
            data["floor_sqlite"] = floor_phase(run, "sqlite")
            say("extmsg serve with the Unblu sandbox and the Twilio fake")
            data["extmsg"] = extmsg_phases(run)
        finally:
            run.stop_all()
    data["seconds"] = time.monotonic() - started
    data["other_cpu_max"] = other = other_load(data)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{data['environment']['mode']}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2))
    print()
    mode = "quick run: rough figures" if args.quick else "full run"
    print(
        f"extmsg benchmark ({mode}; {os.cpu_count()} CPUs; extmsg serve --workers {args.workers},"
        f" event loop {args.event_loop}; SQLite synchronous {args.synchronous.upper()};"
        f" Twilio status callbacks"
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
