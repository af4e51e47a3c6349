"""The admin listener: what operators read, kept off the port the internet calls.

The public listener (``[server]``) carries the providers' and Unblu's routes, ``/healthz`` and a
bare ``/readyz`` (``{"status": "ready"}`` or 503 ``{"status": "not ready"}``, nothing else) for
load balancers. Everything that tells more about the instance is served here, on
``[admin] listen`` (``127.0.0.1:8081`` by default, as Prometheus-scraped services usually keep
their metrics port apart):

* ``/metrics`` — Prometheus text format (with ``serve --workers N``, all workers added up);
* ``/readyz`` — readiness with each check and every channel's Unblu id (and, with
  ``serve --workers N``, each worker's readiness: this listener is worker 0's);
* ``/-/plugins`` — the loaded plugins, their distributions, versions and hooks;
* ``/healthz``.

With ``[admin] token`` set, every request here needs ``Authorization: Bearer <token>``
(compared in constant time); without one, 401. A listener on an address other than loopback
needs a token unless ``allow_unauthenticated`` says the network guards it (see
:class:`extmsg.config.AdminConfig`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web
from aiohttp.typedefs import Middleware

from . import constant_time
from .metrics import CONTENT_TYPE_LATEST
from .runtime import RUNTIME, Runtime

__all__ = ["create_admin_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_admin_app(runtime: Runtime) -> web.Application:
    """The admin application for ``runtime``; the public application (:func:`extmsg.app.
    create_app`) starts and stops the runtime, this one only reads it."""
    token = runtime.config.admin.token
    app = web.Application(middlewares=[_bearer(token)] if token else [])
    app[RUNTIME] = runtime
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/plugins", plugins)
    return app


def _bearer(token: str) -> Middleware:
    expected = token.encode()

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Compared even when the scheme is wrong, so that no answer comes sooner.
        same = constant_time.equal(given.strip(), expected)
        if not (same and scheme.lower() == "bearer"):
            return web.json_response(
                {"error": "a bearer token is required ([admin] token)"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="extmsg admin"'},
            )
        return await handler(request)

    return require_token


async def healthz(request: web.Request) -> web.Response:
    """The process is up and answering."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness with its checks and every channel's Unblu id."""
    runtime = request.app[RUNTIME]
    ok, checks = runtime.readiness()
    body = {
        "status": "ready" if ok else "not ready",
        "checks": checks,
        "channels": {
            name: {
                "unblu_channel_id": runtime.unblu_channel_ids.get(name),
                "ended_webhook_id": runtime.ended_webhook_ids.get(name),
            }
            for name in runtime.channels
        },
    }
    workers = runtime.worker_states()
    if workers is not None:
        body["workers"] = workers
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; the queue's gauges are read from the store at each scrape."""
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
