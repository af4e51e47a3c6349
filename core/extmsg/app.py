"""The public aiohttp application: routes, health, bare readiness and the lifecycle.

Where requests enter:

* ``POST /channels/{channel}/{path}`` and ``/messengers/{messenger}/{path}`` — providers
  (messenger plugins' routes), handled by :func:`extmsg.flows.accept.provider_request`;
* ``POST /unblu/{channel}`` — Unblu's outbound requests and webhook events for a channel,
  handled by :mod:`extmsg.unblu.endpoint`;
* ``/healthz`` and a bare ``/readyz`` (status only) — probes and load balancers.

Nothing else answers here: ``/metrics``, ``/-/plugins`` and the detailed readiness are on the
admin listener (:mod:`extmsg.admin`), apart from this port the internet calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from . import logcontext
from .admin import create_admin_app
from .config import Config
from .draining import CUT_OFF_GRACE, IN_FLIGHT, InFlight, drain, refusal
from .flows.accept import provider_request
from .lifecycle import runtime_context
from .media import serve_media
from .models import Route, RouteUrls
from .plugins import Hooks, route_path
from .runtime import RUNTIME, Runtime
from .store import Store
from .unblu.endpoint import unblu_request

__all__ = [
    "admin_runner",
    "announce_listening",
    "create_app",
    "public_middleware",
    "public_runner",
    "route_urls",
    "stop_serving",
]


def create_app(config: Config, hooks: Hooks, *, store: Store | None = None) -> web.Application:
    """Build the public application for ``config``; starting it opens the store and starts the
    engine. Serve :func:`extmsg.admin.create_admin_app` of its runtime beside it."""
    in_flight = InFlight()
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[public_middleware(in_flight)],
    )
    runtime = Runtime(config, hooks, store)
    app[RUNTIME] = runtime
    app[IN_FLIGHT] = in_flight
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/unblu/{channel}", unblu_request)
    app.router.add_get("/media/{channel}/{id}", serve_media)
    _add_messenger_routes(app, runtime)
    app.cleanup_ctx.append(runtime_context)
    return app


def public_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """The runner for :func:`create_app`'s application. Stop it with :func:`stop_serving`
    first: its own cleanup then only cuts off what that gave up on."""
    return web.AppRunner(app, shutdown_timeout=CUT_OFF_GRACE, **kwargs)


def admin_runner(app: web.Application) -> web.AppRunner:
    """The runner for the admin listener of :func:`create_app`'s application. It stops last,
    after the store: its requests (probes, scrapes) are short, so it waits little for them."""
    return web.AppRunner(
        create_admin_app(app[RUNTIME]), shutdown_timeout=CUT_OFF_GRACE, access_log=None
    )


async def stop_serving(app: web.Application, runner: web.AppRunner) -> None:
    """Not ready any more; refuse new connections and requests, and give the requests in
    flight up to ``[server] shutdown_timeout`` to be answered (:mod:`extmsg.draining`)."""
    runtime = app[RUNTIME]
    runtime.ready = False
    await drain(runner, app[IN_FLIGHT], runtime.config.server.shutdown_timeout)


def _add_messenger_routes(app: web.Application, runtime: Runtime) -> None:
    """Serve the routes of every messenger that has a channel.

    Channel routes share one aiohttp route per method and path and are dispatched by the
    channel's messenger, so two messengers may both call a route ``inbound``.
    """
    used = {ch.messenger for ch in runtime.channels.values()}
    by_path: dict[tuple[str, str], dict[str, Route]] = {}
    for mtype in runtime.messengers.values():
        if mtype.name not in used:
            continue
        for route in mtype.routes:
            method, path = route.method.upper(), route_path(mtype.name, route)
            if route.scope == "channel":
                by_path.setdefault((method, path), {})[mtype.name] = route
            else:
                app.router.add_route(method, path, _provider_handler(mtype.name, route))
    for (method, path), routes in by_path.items():
        app.router.add_route(method, path, _channel_handler(runtime, routes))


def _provider_handler(
    messenger: str, route: Route
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await provider_request(request, messenger, route)

    handle.__name__ = f"{messenger}_{route.name}"
    return handle


def public_middleware(in_flight: InFlight) -> Middleware:
    """What every request of the public listener goes through, as one middleware (each one
    more is a call and a coroutine on every request, and aiohttp adds one of its own to any):

    * refused with 503 while the server stops, else counted while in flight
      (:mod:`extmsg.draining`); an answer given once the stop began closes its connection;
    * given an id (the caller's ``X-Request-Id`` when sane, else a new one) that its log lines
      and the jobs it stores carry, and answered with it.
    """

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not in_flight.taking():
            return refusal()
        in_flight._enter()
        try:
            rid = (
                logcontext.sane_request_id(request.headers.get(logcontext.REQUEST_ID_HEADER))
                or logcontext.new_request_id()
            )
            token = logcontext.bind_request_id(rid)
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                exc.headers[logcontext.REQUEST_ID_HEADER] = rid
                raise
            finally:
                logcontext.unbind(token)
        finally:
            in_flight._leave()
        if not response.prepared:
            response.headers[logcontext.REQUEST_ID_HEADER] = rid
            if not in_flight.taking():
                response.force_close()  # this connection takes nothing more
        return response

    return middleware


def _channel_handler(
    runtime: Runtime, routes: dict[str, Route]
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        name = request.match_info["channel"]
        channel = runtime.channels.get(name)
        route = routes.get(channel.messenger) if channel is not None else None
        if channel is None or route is None:
            return web.json_response(
                {"error": f"no channel named {name!r} has this route"}, status=404
            )
        return await provider_request(request, channel.messenger, route)

    handle.__name__ = "channel_" + "_".join(sorted({r.name for r in routes.values()}))
    return handle


def route_urls(runtime: Runtime) -> RouteUrls:
    """The public URLs of every provider route of the configured channels."""
    base = runtime.config.server.base_url
    channels: dict[str, dict[str, str]] = {}
    messengers: dict[str, dict[str, str]] = {}
    for channel in runtime.channels.values():
        mtype = runtime.messengers.get(channel.messenger)
        for route in mtype.routes if mtype is not None else ():
            if route.scope == "channel":
                url = channel.route_url(route.path.strip("/"))
                channels.setdefault(channel.name, {})[route.name] = url
            else:
                url = base + route_path(channel.messenger, route)
                messengers.setdefault(channel.messenger, {})[route.name] = url
    return RouteUrls(base=base, channels=channels, messengers=messengers)


async def announce_listening(app: web.Application) -> None:
    """Call ``extmsg_listening`` once the server's listener is bound."""
    runtime = app[RUNTIME]
    await runtime.hooks.listening(app, runtime.config, route_urls(runtime))


async def healthz(request: web.Request) -> web.Response:
    """The process is up and answering."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready to take traffic, or 503; for load balancers, so nothing but the status (the
    checks are on the admin listener, :mod:`extmsg.admin`)."""
    ok, _ = request.app[RUNTIME].readiness()
    return web.json_response({"status": "ready" if ok else "not ready"}, status=200 if ok else 503)
