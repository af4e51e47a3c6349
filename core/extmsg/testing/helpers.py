"""Small helpers for end-to-end tests of extmsg and its plugins."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import msgspec
from aiohttp import web

from ..app import create_app
from ..config import parse_config
from ..plugins import Hooks
from ..runtime import RUNTIME, Runtime

__all__ = ["RunningExtmsg", "eventually", "free_port", "running_extmsg"]

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 10.0) -> T:  # noqa: ASYNC109
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g}s")
        await asyncio.sleep(0.05)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RunningExtmsg(msgspec.Struct, frozen=True, kw_only=True):
    """The core's application serving on ``base``, every channel provisioned in Unblu."""

    base: str
    channel_ids: dict[str, str]
    session: aiohttp.ClientSession
    runtime: Runtime
    """The server's parts (store, Unblu client, engine, metrics), for tests that drive a flow
    directly or look inside."""


@contextlib.asynccontextmanager
async def running_extmsg(
    raw: dict[str, Any], hooks: Hooks, *, port: int | None = None
) -> AsyncIterator[RunningExtmsg]:
    """Serve extmsg for the config ``raw`` (a TOML-shaped dict) on ``127.0.0.1:port`` (a free
    port by default; ``server.public_url`` defaults to it) until every channel has its Unblu id.
    """
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    server = {"public_url": base, **raw.get("server", {}), "port": port}
    config = parse_config({**raw, "server": server}, hooks.messenger_types())
    app = create_app(config, hooks)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        async with aiohttp.ClientSession() as session:

            async def provisioned() -> dict[str, str] | None:
                async with session.get(f"{base}/readyz") as resp:
                    body = await resp.json()
                ids = {name: ch["unblu_channel_id"] for name, ch in body["channels"].items()}
                return ids if resp.status == 200 and all(ids.values()) else None

            ids = await eventually(provisioned)
            yield RunningExtmsg(base=base, channel_ids=ids, session=session, runtime=app[RUNTIME])
    finally:
        await runner.cleanup()
