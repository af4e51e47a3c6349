"""``extmsg serve --workers 2`` between the Unblu sandbox and the Twilio fake, over real HTTP.

Both workers take connections on the one port; the server is ready only while both are; a
worker killed with SIGKILL is started again by the supervisor and nothing it acknowledged is
lost; the channel is provisioned once; the admin listener's metrics add up both workers; SIGTERM
stops them all.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
from crash_harness import Traffic, metric_total, serve_config

from extmsg.testing.helpers import ServeProcess, eventually, free_port
from extmsg_sms_twilio.fake import FakeTwilio


def workers_of(pid: int) -> list[int]:
    """The child processes of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: the command may hold spaces and parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def connections_held(pid: int, port: int) -> int:
    """Established TCP connections to local ``port`` whose socket ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            local_port = int(cols[1].rsplit(":", 1)[1], 16)
            if local_port == port and cols[3] == "01" and cols[9] in inodes:
                held += 1
    return held


def _labels(values: dict[str, str]) -> dict[str, str]:
    return {key: value for value, key in values.items()}


async def status(session: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=0.25)) as resp:
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return None


async def test_two_workers_share_the_port_survive_a_kill_and_stop_on_sigterm(
    tmp_path: Path, sandbox: Any, twilio: tuple[str, FakeTwilio]
) -> None:
    fake_url, fake = twilio
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = serve_config(
        tmp_path / "extmsg.toml",
        port=port,
        public=base,
        unblu=sandbox.base_url,
        fake=fake_url,
        store=f'path = "{tmp_path / "store.sqlite3"}"',
        workers=4,
        # asyncio's own loop here; the other runs of a real serve take uvloop when installed.
        event_loop="asyncio",
    )
    proc = ServeProcess(config, args=("--workers", "2"))
    proc.start()
    assert proc.proc is not None
    try:
        async with aiohttp.ClientSession() as session:
            await proc.wait_ready(base, limit=30)
            # Ready on the public port means ready in both workers.
            async with session.get(f"{proc.admin_url}/readyz") as resp:
                detail = await resp.json()
            assert detail["workers"] == {"0": True, "1": True}, detail
            first = workers_of(proc.proc.pid)
            assert len(first) == 2, first

            # Connections are spread over both workers.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=24)) as many:
                await asyncio.gather(*(status(many, f"{base}/healthz") for _ in range(24)))
                held = {pid: connections_held(pid, port) for pid in first}
            assert all(held.values()), f"connections per worker: {held}"

            traffic = Traffic(
                inbound_url=f"{base}/channels/sms/inbound",
                sandbox_url=sandbox.url,
                fake=fake,
                session=session,
                contacts=6,
                per_contact=20,
            )
            await traffic.open_conversations()
            flowing = asyncio.get_running_loop().create_task(traffic.everyone())
            # A new connection for each look: the kernel hands it to either worker's socket
            # (one that waits for a worker being started again is given up on).
            probe = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
            for victim in reversed(first):  # worker 1, then worker 0 (the admin listener's)
                await asyncio.sleep(0.5)
                os.kill(victim, signal.SIGKILL)
                # One worker down: the server says it is not ready until it is back.
                seen = set()
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    # Several looks at once: a look that lands on the dead worker's socket waits,
                    # the others reach the living one, which must say "not ready".
                    looks = [status(probe, f"{base}/readyz") for _ in range(8)]
                    seen.update(await asyncio.gather(*looks))
                    now = workers_of(proc.proc.pid)
                    if 503 in seen and len(now) == 2 and victim not in now and 200 in seen:
                        break
                    await asyncio.sleep(0.02)
                assert 503 in seen, f"/readyz answered {seen} while a worker was down\n{proc.log()}"
                await proc.wait_ready(base, limit=30)
                assert victim not in workers_of(proc.proc.pid)
            await probe.close()
            await flowing
            result = await traffic.settle()
            assert not result.problems(), result.line()

            async with session.get(f"{proc.admin_url}/metrics") as resp:
                text = await resp.text()
            # Counted by both workers, shown as one server's: every acknowledged webhook.
            acked = metric_total(
                text, "extmsg_inbound_requests_total", {"route": "inbound", "status": "200"}
            )
            assert acked >= 6 * 20, acked
            # Provisioned by worker 0 alone: at the start and when it was started again.
            calls = {"unblu": "remote", "externalmessengers/getByName": "call"}
            assert metric_total(text, "extmsg_remote_calls_total", _labels(calls)) == 2, text
            calls["externalmessengers/create"] = calls.pop("externalmessengers/getByName")
            assert metric_total(text, "extmsg_remote_calls_total", _labels(calls)) == 1, text
        last = workers_of(proc.proc.pid)
        assert proc.terminate() == 0, proc.log()

        async def gone() -> bool:
            return not alive(last)

        await eventually(gone)
        assert proc.log().count("extmsg stopped") >= 3, proc.log()  # both workers and supervisor
    finally:
        proc.kill()
