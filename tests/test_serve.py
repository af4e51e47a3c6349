"""``extmsg serve`` as a user runs it: health, readiness, metrics, plugins (on the admin
listener), graceful stop."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiohttp
import pytest

from extmsg.testing.helpers import eventually

from .helpers import ServeProcess, free_port
from .loopback_fake import signed

CONFIG = """
[server]
port = {port}
log_level = "INFO"

[store]
path = "store.sqlite3"

[[channels]]
name = "loop"
messenger = "loopback"
webhook_secret = "whsec"
[channels.settings]
token = "tok"
"""


@pytest.fixture
def serve(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    config = tmp_path / "extmsg.toml"
    config.write_text(CONFIG.format(port=port))
    proc = ServeProcess(config, env={"EXTMSG_PLUGINS": "tests.loopback_plugin"})
    proc.start()
    yield proc, f"http://127.0.0.1:{port}"
    proc.kill()


async def test_serve_answers_health_ready_metrics_and_plugins(serve) -> None:  # type: ignore[no-untyped-def]
    proc, base = serve
    await proc.wait_ready(base)
    admin = proc.admin_url
    async with aiohttp.ClientSession() as session:
        for url in (base, admin):
            async with session.get(f"{url}/healthz") as resp:
                assert resp.status == 200
                assert await resp.json() == {"status": "ok"}
        async with session.get(f"{admin}/readyz") as resp:
            body = await resp.json()
            assert body["status"] == "ready"
            assert body["checks"] == {
                "store": True,
                "plugins": True,
                "channels": True,
                "engine": True,
            }
        async with session.get(f"{admin}/metrics") as resp:
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
            assert 'extmsg_jobs{state="dead"} 0.0' in text
            assert "extmsg_dead_letters 0.0" in text
        async with session.get(f"{admin}/-/plugins") as resp:
            listing = await resp.json()
            names = {p["name"] for p in listing["plugins"]}
            assert {"tests.loopback_plugin", "extmsg.defaults.routing"} <= names
            assert "loopback" in listing["messengers"]


async def test_sigterm_stops_gracefully_and_closes_the_store(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proc, base = serve
    await proc.wait_ready(base)
    assert proc.terminate() == 0
    log = proc.log()
    assert "shutting down" in log
    assert "extmsg stopped" in log
    assert "Traceback" not in log
    # Closed cleanly: the WAL was checkpointed away and the schema is in place.
    assert not (tmp_path / "store.sqlite3-wal").exists()
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        versions = [row[0] for row in db.execute("SELECT version FROM schema_version")]
    assert versions[:2] == [1, 2]


async def test_bad_config_stops_serve_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "extmsg.toml"
    config.write_text('[[channels]]\nname = "x"\nmessenger = "nope"\nwebhook_secret = "s"\n')
    proc = ServeProcess(config)
    proc.start()
    assert proc.proc is not None
    assert proc.proc.wait(30) == 2
    assert proc.log().strip().startswith("error: channels[0].messenger: unknown messenger type")


async def test_no_value_writes_a_log_line_of_its_own(tmp_path: Path) -> None:
    """``extmsg serve --sandbox`` escapes control characters in everything it logs: a signed
    status whose id carries a line break and a terminal escape stays on its log line."""
    port = free_port()
    config = tmp_path / "extmsg.toml"
    # DEBUG: a status that matches no sent message waits for one without a warning
    config.write_text(CONFIG.format(port=port).replace('log_level = "INFO"', 'log_level = "DEBUG"'))
    proc = ServeProcess(
        config,
        env={"EXTMSG_PLUGINS": "tests.loopback_plugin"},
        args=("--sandbox", "--sandbox-port", str(free_port())),
    )
    proc.start()
    try:
        base = f"http://127.0.0.1:{port}"
        await proc.wait_ready(base)
        forged = "SM1\n2026-01-01 00:00:00,000 ERROR extmsg: forged\x1b[2J\u2028end"
        body, headers = signed("tok", {"statuses": [{"id": forged, "state": "delivered"}]})
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{base}/channels/loop/inbound", data=body, headers=headers) as resp,
        ):
            assert resp.status == 200
        await eventually(lambda: _logged(proc, "failed on attempt 1"))
    finally:
        proc.kill()
    lines = proc.log().splitlines()
    [line] = [line for line in lines if "failed on attempt 1" in line]
    assert "SM1\\n" in line
    assert "forged\\x1b[2J\\u2028end" in line
    assert not [line for line in lines if line.startswith(("2026-01-01", "end"))]


async def _logged(proc: ServeProcess, text: str) -> bool:
    return text in proc.log()
