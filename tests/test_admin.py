"""The admin listener of a real ``extmsg serve``: metrics, plugins and readiness details only
there, never on the public port the providers and Unblu call; its bearer token when set."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from extmsg.admin import create_admin_app
from extmsg.app import create_app
from extmsg.config import parse_config
from extmsg.plugins import build_hooks
from extmsg.runtime import RUNTIME
from extmsg.testing.helpers import ServeProcess as BareServeProcess
from extmsg.testing.helpers import eventually

from . import loopback_plugin
from .helpers import ServeProcess, free_port

TOKEN = "admin-token-5f0c2d9e71a84b36"

CONFIG = """
[server]
port = {port}

[admin]
listen = "127.0.0.1:{admin}"
token = "${{EXTMSG_ADMIN_TOKEN}}"

[store]
path = "store.sqlite3"

[[channels]]
name = "loop"
messenger = "loopback"
webhook_secret = "whsec-admin"
[channels.settings]
token = "tok"
"""

ADMIN_ONLY = ("/metrics", "/-/plugins")


@pytest.fixture
async def serve_with_token(tmp_path: Path):  # type: ignore[no-untyped-def]
    port, admin = free_port(), free_port()
    config = tmp_path / "extmsg.toml"
    config.write_text(CONFIG.format(port=port, admin=admin))
    proc = ServeProcess(
        config, env={"EXTMSG_PLUGINS": "tests.loopback_plugin", "EXTMSG_ADMIN_TOKEN": TOKEN}
    )
    proc.start()
    base = f"http://127.0.0.1:{port}"
    try:
        await proc.wait_ready(base)
        yield proc, base
    finally:
        proc.kill()


async def test_public_port_serves_no_admin_route(serve_with_token) -> None:  # type: ignore[no-untyped-def]
    _, base = serve_with_token
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session:
        for path in ADMIN_ONLY:
            # not served at all, the token changes nothing
            for headers in ({}, bearer):
                async with session.get(base + path, headers=headers) as resp:
                    assert resp.status == 404, path
        async with session.get(f"{base}/readyz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ready"}  # nothing a stranger can use
        async with session.get(f"{base}/healthz") as resp:
            assert resp.status == 200


async def test_admin_listener_requires_its_token(serve_with_token) -> None:  # type: ignore[no-untyped-def]
    proc, _ = serve_with_token
    admin = proc.admin_url  # [admin] listen of the config: nothing overrides it
    assert "--admin-listen" not in proc.args
    refused = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer " + "x" * len(TOKEN)},  # same length, wrong
        {"Authorization": "Bearer " + TOKEN[:-1]},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer " + TOKEN + "\u00e9"},
    ]
    async with aiohttp.ClientSession() as session:
        for path in (*ADMIN_ONLY, "/readyz", "/healthz"):
            for headers in refused:
                async with session.get(admin + path, headers=headers) as resp:
                    assert resp.status == 401, (path, headers)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                    assert TOKEN not in await resp.text()
        ok = {"Authorization": f"Bearer {TOKEN}"}
        async with session.get(f"{admin}/metrics", headers=ok) as resp:
            assert resp.status == 200
            assert "extmsg_dead_letters 0.0" in await resp.text()
        async with session.get(f"{admin}/-/plugins", headers=ok) as resp:
            assert "loopback" in (await resp.json())["messengers"]
        async with session.get(
            f"{admin}/readyz", headers={"authorization": f"bearer {TOKEN}"}
        ) as resp:
            body = await resp.json()
            assert body["checks"]["store"] is True
            assert set(body["channels"]) == {"loop"}
    assert TOKEN not in proc.log()


async def test_a_taken_admin_port_stops_serve_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "extmsg.toml"
    config.write_text(f"[server]\nport = {free_port()}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = ServeProcess(config, args=("--admin-listen", f"127.0.0.1:{port}"))
        proc.start()
        assert proc.proc is not None
        assert proc.proc.wait(30) == 2
    [line] = proc.log().strip().splitlines()[-1:]
    assert line.startswith(f"error: admin.listen: cannot listen on 127.0.0.1:{port}: ")
    assert line.endswith("(choose another with --admin-listen HOST:PORT)")
    assert "Traceback" not in proc.log()


async def test_sandbox_prints_where_the_admin_listener_is(tmp_path: Path) -> None:
    """``extmsg serve --sandbox`` in an empty folder, as after a fresh clone."""
    port = free_port()
    proc = BareServeProcess(
        tmp_path / "extmsg.toml",  # absent: the sandbox's own configuration
        args=("--sandbox", "--sandbox-port", str(free_port()), "--port", str(port)),
    )
    proc.start()
    try:
        base = f"http://127.0.0.1:{port}"
        await proc.wait_ready(base)
        line = await eventually(lambda: _line_with(proc, "extmsg: http"))
        assert line.endswith(f": {proc.admin_url}")
        assert line.startswith(f"extmsg: {base} ")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{proc.admin_url}/metrics") as resp:
                assert resp.status == 200
            async with session.get(f"{base}/metrics") as resp:
                assert resp.status == 404
    finally:
        proc.kill()


async def _line_with(proc: BareServeProcess, text: str) -> str | None:
    return next((line for line in proc.log().splitlines() if text in line), None)


async def test_not_ready_says_only_that_on_the_public_port(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    """Unblu unreachable, the channel not provisioned: both ports answer 503; the reason (the
    failing check) only on the admin listener."""
    hooks = build_hooks(entry_points=False, extra=[loopback_plugin], disabled=())
    raw = {
        "store": {"path": str(tmp_path / "store.sqlite3")},
        "unblu": {"base_url": f"http://127.0.0.1:{free_port()}/app/rest", "timeout": 0.5},
        "channels": [
            {"name": "loop", "messenger": "loopback", "webhook_secret": "whsec-admin",
             "settings": {"token": "tok"}}
        ],
    }  # fmt: skip
    app = create_app(parse_config(raw, hooks.messenger_types()), hooks)
    public = await aiohttp_client(app)
    admin = await aiohttp_client(create_admin_app(app[RUNTIME]))
    resp = await public.get("/readyz")
    assert (resp.status, await resp.json()) == (503, {"status": "not ready"})
    resp = await admin.get("/readyz")
    body = await resp.json()
    assert resp.status == 503
    assert body["checks"]["channels"] is False
    assert body["channels"] == {"loop": {"unblu_channel_id": None, "ended_webhook_id": None}}
