"""``extmsg channels list`` and ``sync`` against the Unblu sandbox, on SQLite and PostgreSQL;
commands that only look never create a store."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from . import pg
from .helpers import ROOT

CONFIG = """
[server]
public_url = "https://connector.bank.test"

[store]
{store}

[unblu]
base_url = "{unblu}"
username = "admin"
password = "admin"

[[channels]]
name = "loop"
messenger = "loopback"
webhook_secret = "whsec-channels"
[channels.settings]
token = "tok"
"""


@dataclass
class Backend:
    store: str  # the [store] table's lines
    exists: Callable[[], Awaitable[bool]]  # whether extmsg's store is there


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "var" / "store.sqlite3"

        async def file_exists() -> bool:
            return path.exists() or path.parent.exists()

        yield Backend(f'path = "{path}"', file_exists)
        return
    async with pg.fresh_schema() as schema:
        sep = "&" if "?" in pg.DSN else "?"
        dsn = f"{pg.DSN}{sep}search_path={schema}"

        async def tables_exist() -> bool:
            conn = await asyncpg.connect(pg.DSN)
            try:
                count = await conn.fetchval(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
                    schema,
                )
            finally:
                await conn.close()
            return bool(count)

        yield Backend(f'backend = "postgres"\ndsn = "{dsn}"', tables_exist)


async def extmsg(*args: str) -> tuple[int, str, str]:
    """Run the real ``extmsg`` command (the sandbox keeps serving in this process meanwhile)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXTMSG_PLUGINS": "tests.loopback_plugin"}
    env.pop("EXTMSG_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "extmsg",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def sandbox_channels(sandbox: Any) -> list[Any]:
    return [c for c in sandbox.sandbox.state.channels.values() if c.name == "loop"]


async def test_list_and_sync(backend: Backend, unblu_sandbox: Any, tmp_path: Path) -> None:
    config = tmp_path / "extmsg.toml"
    config.write_text(CONFIG.format(store=backend.store, unblu=unblu_sandbox.base_url))

    # Before anything ran: the configured channel, not provisioned; no store made for that.
    code, out, err = await extmsg("channels", "list", "--json", "-c", str(config))
    assert code == 0, err
    assert json.loads(out) == [
        {
            "name": "loop",
            "messenger": "loopback",
            "unblu_channel_id": None,
            "webhook_status": None,
            "endpoint": "https://connector.bank.test/unblu/loop",
        }
    ]
    assert "no channel is provisioned yet" in err
    assert not await backend.exists()
    code, out, err = await extmsg("outbox", "list", "-c", str(config))
    assert (code, out) == (2, "")
    assert err.startswith("error: there is no ")
    assert not await backend.exists()

    # sync creates the channel in Unblu, and again finds the same one.
    code, out, err = await extmsg("channels", "sync", "-c", str(config))
    assert code == 0, err
    [channel] = sandbox_channels(unblu_sandbox)
    assert out == f"loop: Unblu channel {channel.id}\n"
    assert channel.webhook_endpoint == "https://connector.bank.test/unblu/loop"
    code, again, err = await extmsg("channels", "sync", "-c", str(config))
    assert (code, again) == (0, out), err
    assert [c.id for c in sandbox_channels(unblu_sandbox)] == [channel.id]

    code, out, err = await extmsg("channels", "list", "--json", "-c", str(config))
    assert code == 0, err
    [row] = json.loads(out)
    assert row["unblu_channel_id"] == channel.id
    assert row["webhook_status"] == channel.webhook_status
    code, out, err = await extmsg("channels", "list", "-c", str(config))
    assert code == 0, err
    assert out.split() == [
        "loop",
        "loopback",
        f"unblu={channel.id}",
        f"webhook={channel.webhook_status}",
        "https://connector.bank.test/unblu/loop",
    ]


async def test_sync_needs_an_unblu_server(tmp_path: Path) -> None:
    config = tmp_path / "extmsg.toml"
    text = CONFIG.format(store=f'path = "{tmp_path / "s.sqlite3"}"', unblu="x")
    config.write_text(text.replace('base_url = "x"\n', ""))
    code, out, err = await extmsg("channels", "sync", "-c", str(config))
    assert (code, out, err) == (2, "", "error: unblu.base_url: required to sync channels\n")
