"""The aiohttp application: routes, health, metrics and the lifecycle.

Where requests enter:

* ``POST /channels/{channel}/{path}`` and ``/messengers/{messenger}/{path}`` — providers
  (messenger plugins' routes), handled by :func:`extmsg.flows.accept.provider_request`;
* ``POST /unblu/{channel}`` — Unblu's outbound requests and webhook events for a channel,
  handled by :mod:`extmsg.unblu.endpoint`;
* ``/healthz``, ``/readyz``, ``/metrics``, ``/-/plugins`` — operations.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from .config import Config
from .flows.accept import provider_request
from .media import serve_media
from .metrics import CONTENT_TYPE_LATEST
from .models import Route
from .plugins import Hooks
from .runtime import RUNTIME, Runtime, runtime_context
from .store import Store
from .unblu.endpoint import unblu_request

__all__ = ["create_app"]


def create_app(config: Config, hooks: Hooks, *, store: Store | None = None) -> web.Application:
    """Build the application for ``config``; starting it opens the store and starts the engine."""
    app = web.Application(client_max_size=config.server.max_body_bytes)
    runtime = Runtime(config, hooks, store)
    app[RUNTIME] = runtime
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/plugins", plugins)
    app.router.add_post("/unblu/{channel}", unblu_request)
    app.router.add_get("/media/{channel}/{id}", serve_media)
    _add_messenger_routes(app, runtime)
    app.cleanup_ctx.append(runtime_context)
    return app


def _add_messenger_routes(app: web.Application, runtime: Runtime) -> None:
    used = {ch.messenger for ch in runtime.channels.values()}
    for mtype in runtime.messengers.values():
        if mtype.name not in used:
            continue
        for route in mtype.routes:
            if route.scope == "channel":
                path = f"/channels/{{channel}}/{route.path.lstrip('/')}"
            else:
                path = f"/messengers/{mtype.name}/{route.path.lstrip('/')}"
            app.router.add_route(route.method, path, _provider_handler(mtype.name, route))


def _provider_handler(
    messenger: str, route: Route
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await provider_request(request, messenger, route)

    handle.__name__ = f"{messenger}_{route.name}"
    return handle


async def healthz(request: web.Request) -> web.Response:
    """The process is up and answering."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready to take traffic: store open, plugins started, every channel known in Unblu (the
    engine takes no jobs before), engine running."""
    runtime = request.app[RUNTIME]
    checks = {
        "store": runtime.store.is_open,
        "plugins": runtime.plugins_started,
        "channels": runtime.channels_known,
        "engine": runtime.engine is not None and runtime.engine.running,
    }
    ok = runtime.ready and all(checks.values())
    body = {
        "status": "ready" if ok else "not ready",
        "checks": checks,
        "channels": {
            name: {"unblu_channel_id": runtime.unblu_channel_ids.get(name)}
            for name in runtime.channels
        },
    }
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    runtime = request.app[RUNTIME]
    if runtime.store.is_open:
        counts = await runtime.store.job_counts()
        for state, count in counts.items():
            runtime.metrics.queue_depth.labels(state).set(count)
        runtime.metrics.dead_letters.set(counts.get("dead", 0))
        runtime.metrics.lanes_held.set(counts.get("held", 0))
        now = time.time()
        runtime.metrics.set_oldest_due(await runtime.store.oldest_due_at(now), now)
    resp = web.Response(body=runtime.metrics.render())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def plugins(request: web.Request) -> web.Response:
    """The loaded plugins with their distributions, versions and hooks."""
    runtime = request.app[RUNTIME]
    body = msgspec.json.encode(
        {
            "plugins": runtime.hooks.plugins(),
            "messengers": sorted(runtime.messengers),
        }
    )
    return web.Response(body=body, content_type="application/json")
