"""The running system for end-to-end tests: serve ⇄ Unblu sandbox ⇄ loopback provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from extmsg.testing.helpers import eventually

from .helpers import ServeProcess, free_port
from .loopback_fake import LoopbackProvider, signed

T = TypeVar("T")

CONFIG = """
[server]
port = {port}
public_url = "http://127.0.0.1:{port}"

[store]
path = "store.sqlite3"

[unblu]
base_url = "{unblu}"
api_version = "{version}"
username = "admin"
password = "admin"

[engine]
backoff_initial = 0.05
backoff_max = 0.5
max_attempts = 20

[[channels]]
name = "loop"
messenger = "loopback"
webhook_secret = "whsec-123"
sender_fallback = "Support"
[channels.settings]
token = "tok"
api_url = "{provider}"
"""

CUSTOMER = "+41790000001"


@dataclass
class World:
    base: str
    sandbox: Any
    provider: LoopbackProvider
    session: aiohttp.ClientSession
    proc: ServeProcess
    channel_id: str
    version: str

    @property
    def admin(self) -> str:
        """The admin listener: ``/metrics``, the detailed ``/readyz``."""
        return self.proc.admin_url

    async def inbound(self, payload: dict[str, Any], token: str = "tok") -> int:
        body, headers = signed(token, payload)
        async with self.session.post(
            f"{self.base}/channels/loop/inbound", data=body, headers=headers
        ) as resp:
            return resp.status

    async def say(self, message_id: str, text: str, sender: str = CUSTOMER) -> int:
        return await self.inbound({"messages": [{"id": message_id, "from": sender, "text": text}]})

    async def agent(self, path: str, method: str = "GET", **body: Any) -> Any:
        url = f"{self.sandbox.url}/sandbox/api/{path}"
        async with self.session.request(method, url, json=body or None) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def conversations(self) -> list[dict[str, Any]]:
        data = await self.agent(f"conversations?channelId={self.channel_id}")
        return list(data["conversations"] if isinstance(data, dict) else data)

    async def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        data = await self.agent(f"conversations/{conversation_id}/messages")
        return list(data["messages"] if isinstance(data, dict) else data)


@pytest.fixture(params=["v4", "v3"])
async def world(
    request: pytest.FixtureRequest, tmp_path: Path, unblu_sandbox: Any, aiohttp_server: Any
) -> AsyncIterator[World]:
    async with serving(request.param, tmp_path, unblu_sandbox, aiohttp_server) as running:
        yield running


@asynccontextmanager
async def serving(
    version: str,
    tmp_path: Path,
    unblu_sandbox: Any,
    aiohttp_server: Any,
    *,
    max_attempts: int = 20,
    channel_settings: str = "",
    lease_seconds: float = 60.0,
) -> AsyncIterator[World]:
    """``extmsg serve`` (Unblu API ``version``) between the sandbox and a loopback provider;
    ``channel_settings``: TOML lines added to the channel's table."""
    provider = LoopbackProvider()
    provider_server = await aiohttp_server(provider.app)
    port = free_port()
    config = tmp_path / "extmsg.toml"
    config.write_text(
        CONFIG.format(
            port=port,
            unblu=unblu_sandbox.base_url,
            version=version,
            provider=str(provider_server.make_url("")).rstrip("/"),
        )
        .replace("max_attempts = 20", f"max_attempts = {max_attempts}")
        .replace("[channels.settings]", f"{channel_settings}\n[channels.settings]")
        .replace("[engine]\n", f"[engine]\nlease_seconds = {lease_seconds}\n")
    )
    proc = ServeProcess(config, env={"EXTMSG_PLUGINS": "tests.loopback_plugin"})
    proc.start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await proc.wait_ready(base)

            async def provisioned() -> str | None:
                async with session.get(f"{proc.admin_url}/readyz") as resp:
                    body = await resp.json()
                channel_id: str | None = body["channels"]["loop"]["unblu_channel_id"]
                return channel_id

            channel_id = await eventually(provisioned)
            yield World(base, unblu_sandbox, provider, session, proc, channel_id, version)
    finally:
        proc.kill()


async def at_least(items: list[T], n: int) -> list[T] | None:
    return list(items) if len(items) >= n else None
