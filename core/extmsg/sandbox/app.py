"""The sandbox web application and a helper to serve it.

Layout: ``/app/rest/v4/...`` and ``/app/rest/v3/...`` (the emulated web API, basic auth; a
client's base URL is ``http://host:port/app/rest``), ``/app/rest/sandbox/files/{messageId}``
(file downloads, basic auth), ``/sandbox/api/...`` (agent API, see
:mod:`extmsg.sandbox.agent_api`) and ``/sandbox/`` (the console: the customers' side and the
agent's side on one page, its script and style under ``/sandbox/static/``, kept current by
``/sandbox/api/events``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from .agent_api import LIVE_KEY, create_agent_api_app, file_response
from .console_view import console_entities
from .live import LiveFeed
from .rest_common import api_middleware, sandbox_of
from .rest_v3 import create_v3_app
from .rest_v4 import create_v4_app
from .service import FILES_PATH, SANDBOX_KEY, Sandbox

__all__ = ["SandboxServer", "create_sandbox_app", "run_sandbox"]

log = logging.getLogger("extmsg.sandbox")


def create_sandbox_app(
    *,
    username: str = "admin",
    password: str = "admin",  # noqa: S107 - the sandbox's documented default
    account_id: str = "sandbox-account",
    delivery_retries: int = 5,
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 60.0,
    agent_token: str | None = None,
    public_url: str | None = None,
    forbidden: Iterable[str] = (),
) -> web.Application:
    """An aiohttp application emulating Unblu; its :class:`Sandbox` is ``app[SANDBOX_KEY]``.

    ``delivery_retries`` is how many times a failed delivery is retried after the first
    attempt, waiting ``retry_backoff`` seconds doubled per retry (at most ``retry_backoff_max``).
    ``agent_token`` protects the agent API; ``public_url`` is the externally visible base URL
    used in file download links (default: the URL of the request that created the message).
    ``forbidden`` lists web API operations (``"POST /conversationhistory/{conversationId}/…"``)
    answered with 403, as for an API user without the role they need.
    """
    sandbox = Sandbox(
        username=username,
        password=password,
        account_id=account_id,
        delivery_retries=delivery_retries,
        retry_backoff=retry_backoff,
        retry_backoff_max=retry_backoff_max,
        agent_token=agent_token,
        public_url=public_url,
    )
    sandbox.forbid(forbidden)
    app = web.Application()
    app[SANDBOX_KEY] = sandbox
    live = LiveFeed(lambda: console_entities(sandbox))
    app[LIVE_KEY] = live
    sandbox.deliverer.on_change = live.poke
    app.on_response_prepare.append(_changed_by_request)
    app.on_shutdown.append(_end_streams)
    app.add_subapp("/app/rest/v4", create_v4_app())
    app.add_subapp("/app/rest/v3", create_v3_app())
    files = web.Application(middlewares=[api_middleware])
    files.router.add_get("/{messageId}", _download)
    app.add_subapp(FILES_PATH, files)
    app.add_subapp("/sandbox/api", create_agent_api_app())
    app.router.add_get("/sandbox/", _console)
    app.router.add_get("/sandbox", _to_console)
    app.router.add_get("/sandbox/static/{name}", _static)
    app.router.add_get("/favicon.ico", _favicon)
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[SANDBOX_KEY].close()


async def _download(request: web.Request) -> web.Response:
    return file_response(sandbox_of(request), request.match_info["messageId"])


async def _to_console(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/sandbox/")


async def _console(request: web.Request) -> web.Response:
    page = resources.files("extmsg.sandbox").joinpath("static/console.html")
    return web.Response(
        text=page.read_text(encoding="utf-8"),
        content_type="text/html",
        headers={"Cache-Control": "no-cache"},
    )


_STATIC_TYPES = {
    "console.js": "text/javascript",
    "console.css": "text/css",
    "favicon.svg": "image/svg+xml",
}


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC_TYPES:
        raise web.HTTPNotFound
    data = resources.files("extmsg.sandbox").joinpath(f"static/{name}").read_bytes()
    return web.Response(
        body=data, content_type=_STATIC_TYPES[name], headers={"Cache-Control": "no-cache"}
    )


async def _favicon(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/sandbox/static/favicon.svg")


async def _changed_by_request(request: web.Request, response: web.StreamResponse) -> None:
    """Whatever a request may have changed reaches the open consoles right away."""
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        request.config_dict[LIVE_KEY].poke()


async def _end_streams(app: web.Application) -> None:
    await app[LIVE_KEY].close()


@dataclass
class SandboxServer:
    """A running sandbox: ``base_url`` is what an Unblu client is configured with."""

    app: web.Application
    runner: web.AppRunner
    site: web.TCPSite
    host: str
    port: int

    @property
    def sandbox(self) -> Sandbox:
        return self.app[SANDBOX_KEY]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/app/rest"

    async def close(self) -> None:
        await self.runner.cleanup()


async def run_sandbox(host: str = "127.0.0.1", port: int = 0, **kw: Any) -> SandboxServer:
    """Serve a new sandbox on ``host:port`` (0 = any free port) until ``close()``.

    Keyword arguments go to :func:`create_sandbox_app`.
    """
    app = create_sandbox_app(**kw)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            bound = int(addr[1])
            break
    server = SandboxServer(app=app, runner=runner, site=site, host=host, port=bound)
    log.info("Unblu sandbox listening on %s (web API base %s)", server.url, server.base_url)
    return server
