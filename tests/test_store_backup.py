"""``extmsg store backup``: an online copy of the SQLite store, taken while ``extmsg serve``
accepts messages, opens, checks out and holds every message acknowledged before it began."""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp
from click.testing import CliRunner

from extmsg.cli import main
from extmsg.sandbox import run_sandbox

from .helpers import ServeProcess, free_port
from .loopback_fake import LoopbackProvider, signed

CONFIG = """
[server]
port = {port}
public_url = "http://127.0.0.1:{port}"
shutdown_timeout = 2.0

[store]
path = "store.sqlite3"

[unblu]
base_url = "{unblu}"
username = "admin"
password = "admin"

[[channels]]
name = "loop"
messenger = "loopback"
webhook_secret = "whsec-123"
[channels.settings]
token = "tok"
api_url = "{provider}"
"""

PLUGINS = {"EXTMSG_PLUGINS": "tests.loopback_plugin"}


async def test_a_backup_under_load_holds_every_acknowledged_message(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    sandbox = await run_sandbox("127.0.0.1", 0)
    provider = LoopbackProvider()
    provider_server = await aiohttp_server(provider.app)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "extmsg.toml"
    config.write_text(
        CONFIG.format(
            port=port,
            unblu=sandbox.base_url,
            provider=str(provider_server.make_url("")).rstrip("/"),
        )
    )
    proc = ServeProcess(config, env=PLUGINS)
    proc.start()
    acked: list[tuple[float, str]] = []  # (when acknowledged, provider message id)
    numbers = itertools.count()
    stop = asyncio.Event()
    enough = asyncio.Event()  # enough acknowledged to start the backup among them
    try:
        async with aiohttp.ClientSession() as session:
            await proc.wait_ready(base)

            async def customer(i: int) -> None:
                while not stop.is_set():
                    message_id = f"in-{i}-{next(numbers)}"
                    body, headers = signed(
                        "tok",
                        {"messages": [{"id": message_id, "from": f"+4179{i:07d}", "text": "hi"}]},
                    )
                    async with session.post(
                        f"{base}/channels/loop/inbound", data=body, headers=headers
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                    acked.append((asyncio.get_running_loop().time(), message_id))
                    if len(acked) >= 200:
                        enough.set()

            customers = [asyncio.create_task(customer(i)) for i in range(4)]
            await asyncio.wait_for(enough.wait(), 60)
            started = asyncio.get_running_loop().time()
            backup = tmp_path / "backup.sqlite3"
            command = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "extmsg", "store", "backup", "-c", str(config), str(backup),
                env={**os.environ, **PLUGINS},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await command.communicate()
            finished = asyncio.get_running_loop().time()
            during = sum(1 for when, _ in acked if started <= when <= finished)
            stop.set()
            await asyncio.gather(*customers)
        assert command.returncode == 0, err.decode()
        assert f"to {backup}" in out.decode()
        assert during > 0, "no message was acknowledged while the backup ran"
    finally:
        stop.set()
        proc.terminate()
        await sandbox.close()

    before = {message_id for when, message_id in acked if when < started}
    db = sqlite3.connect(backup)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = {r[0] for r in db.execute("SELECT provider_message_id FROM messages")}
        jobs = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        # One self-contained file, no log beside it.
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    finally:
        db.close()
    assert before <= stored, f"{len(before - stored)} acknowledged message(s) missing"
    assert jobs >= len(before)


def test_a_postgres_store_is_backed_up_with_pg_dump(tmp_path: Path) -> None:
    config = tmp_path / "extmsg.toml"
    config.write_text('[store]\nbackend = "postgres"\ndsn = "postgresql://u@127.0.0.1:1/x"\n')
    result = CliRunner().invoke(main, ["store", "backup", "-c", str(config), "out.dump"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert "pg_dump" in lines[0]


def test_backup_refuses_to_overwrite_or_to_create_a_store(tmp_path: Path) -> None:
    config = tmp_path / "extmsg.toml"
    config.write_text('[store]\npath = "store.sqlite3"\n')
    target = tmp_path / "copy.sqlite3"
    runner = CliRunner()
    missing = runner.invoke(main, ["store", "backup", "-c", str(config), str(target)])
    assert missing.exit_code == 2
    assert "there is no store" in missing.output
    assert not (tmp_path / "store.sqlite3").exists()
    db = sqlite3.connect(tmp_path / "store.sqlite3")
    db.execute("CREATE TABLE messages (provider_message_id TEXT)")
    db.execute("CREATE TABLE jobs (id INTEGER)")
    db.execute("CREATE TABLE schema_version (version INTEGER)")
    db.commit()
    db.close()
    target.write_text("keep me")
    kept = runner.invoke(main, ["store", "backup", "-c", str(config), str(target)])
    assert kept.exit_code == 2
    assert "exists" in kept.output
    assert target.read_text() == "keep me"
    replaced = runner.invoke(main, ["store", "backup", "-c", str(config), str(target), "--force"])
    assert replaced.exit_code == 0, replaced.output
    assert sqlite3.connect(target).execute("PRAGMA integrity_check").fetchall() == [("ok",)]
