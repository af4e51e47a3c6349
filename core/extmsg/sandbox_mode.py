"""``extmsg serve --sandbox``: the Unblu sandbox and the provider fakes, in-process.

The config's ``[unblu]`` section is pointed at the sandbox. Without channels in the config,
one channel per messenger that ships a provider fake is added, talking to that fake, so a fresh
clone has a complete system to play with and no account anywhere; the console shows each fake
as that channel's customer. The fakes listen on loopback
and hand out file URLs there, so loopback is added to ``[server] fetch_allowed_networks``.
Each fake is built with ``extmsg_url`` and ``webhook_url``, the URL of its channel's first
``events`` route, where it posts a customer's messages (a factory that does not take
``webhook_url`` gets ``extmsg_url`` only).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from typing import Any

from aiohttp import web

from .fetch import LOOPBACK
from .plugins import Hooks
from .testing.fakes import call_factory, sandbox_webhook_url

__all__ = ["start_sandbox"]

log = logging.getLogger("extmsg.sandbox")


async def start_sandbox(
    stack: contextlib.AsyncExitStack, raw: dict[str, Any], hooks: Hooks, port: int
) -> dict[str, Any]:
    """Start the sandbox (and fakes) on ``stack``; return ``raw`` pointed at them."""
    from .sandbox import run_sandbox

    server = await run_sandbox("127.0.0.1", port)
    stack.push_async_callback(server.close)
    unblu = dict(raw.get("unblu") or {})
    unblu.update(base_url=server.base_url, username="admin", password="admin")  # noqa: S106
    server_raw = dict(raw.get("server") or {})
    allowed = server_raw.get("fetch_allowed_networks") or []
    if isinstance(allowed, list):  # anything else is left for the config check to report
        server_raw["fetch_allowed_networks"] = allowed + [n for n in LOOPBACK if n not in allowed]
    raw = {**raw, "unblu": unblu, "server": server_raw}
    lines = [f"Unblu sandbox: console {server.url}/sandbox/  web API {server.base_url}"]
    extmsg_url = server_raw.get("public_url") or (
        f"http://127.0.0.1:{server_raw.get('port', 8080)}"
    )
    if not raw.get("channels"):
        channels = []
        messengers = hooks.messenger_types()
        for fake in hooks.provider_fakes():
            if fake.channel_settings is None:
                continue
            name = f"{fake.messenger.replace('_', '-')}-sandbox"
            fake_app = call_factory(
                fake.factory,
                extmsg_url=extmsg_url,
                webhook_url=sandbox_webhook_url(extmsg_url, messengers.get(fake.messenger), name),
            )
            runner = web.AppRunner(fake_app, access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            fake_port = runner.addresses[0][1]
            url = f"http://127.0.0.1:{fake_port}"
            server.sandbox.customers.add(name, fake.messenger, fake.name, url)
            channels.append(
                {
                    "name": name,
                    "messenger": fake.messenger,
                    "webhook_secret": secrets.token_hex(16),
                    "settings": fake.channel_settings(url, fake_app),
                }
            )
            lines.append(f"{fake.name} fake ({fake.messenger}): {url}")
        raw["channels"] = channels
    for line in lines:
        print(line, flush=True)
    return raw
