"""``/webhookregistrations/*`` of both web API generations (role ADMIN in the specs).

v4 names the registration in the path (``{registrationId}/read``, ``/delete``, ``/sendPing``)
and answers ``getByName`` for an unknown name with an error; v3 takes ``?id=`` (``read``,
``delete``), pings with ``POST /ping {id}``, and answers an unknown name or id with ``null``
("or null if none exists"). ``readMultiple`` answers a ``WebhookRegistrationList`` in v4 and
a bare array in v3. The sandbox emits ``conversation.ended`` to the registrations that list
it, and a ``WebhookPingEvent`` on a ping.
"""

from __future__ import annotations

from aiohttp import web

from . import render
from .bodies import Body, read_body
from .errors import ApiError
from .rest_common import equals_filter, page, parse_webhook_fields, query_param, result, sandbox_of
from .state import WebhookRegistration

__all__ = ["v3_routes", "v4_routes"]

v4_routes = web.RouteTableDef()
v3_routes = web.RouteTableDef()


def _version(body: Body) -> int:
    version = body.opt_int("version")
    if version is None:
        raise ApiError.bad_request("version: is required to update")
    return version


async def _create(request: web.Request, api: str) -> web.Response:
    body = await read_body(request)
    w = sandbox_of(request).create_webhook(parse_webhook_fields(body, api))
    return web.json_response(render.webhook(w))


async def _update(request: web.Request, api: str) -> web.Response:
    body = await read_body(request)
    fields = parse_webhook_fields(body, api)
    w = sandbox_of(request).update_webhook(
        body.req_str("id"), _version(body), body.req_str("accountId"), fields
    )
    return web.json_response(render.webhook(w))


async def _search(request: web.Request) -> web.Response:
    body = await read_body(request)
    body.type_tag("WebhookRegistrationQuery")
    name = equals_filter(body, "NAME")
    found: list[WebhookRegistration] = sorted(
        (w for w in sandbox_of(request).state.webhooks.values() if name is None or w.name == name),
        key=lambda w: w.creation_timestamp,
    )
    items, more, next_offset = page(body, found)
    rendered = [render.webhook(w) for w in items]
    return web.json_response(result("WebhookRegistrationResult", rendered, more, next_offset))


async def _read_multiple(request: web.Request) -> list[WebhookRegistration]:
    ids = await request.json()
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ApiError.bad_request("body: must be an array of registration ids")
    webhooks = sandbox_of(request).state.webhooks
    return [webhooks[i] for i in ids if i in webhooks]


# -- v4 -----------------------------------------------------------------------------------------
@v4_routes.post("/webhookregistrations/create")
async def create_v4(request: web.Request) -> web.Response:
    return await _create(request, "v4")


@v4_routes.post("/webhookregistrations/update")
async def update_v4(request: web.Request) -> web.Response:
    return await _update(request, "v4")


@v4_routes.get("/webhookregistrations/getByName")
async def by_name_v4(request: web.Request) -> web.Response:
    name = query_param(request, "name")
    w = sandbox_of(request).webhook_by_name(name)
    if w is None:
        raise ApiError.not_found(f"no webhook registration named {name!r}")
    return web.json_response(render.webhook(w))


@v4_routes.get("/webhookregistrations/{registrationId}/read")
async def read_v4(request: web.Request) -> web.Response:
    w = sandbox_of(request).webhook(request.match_info["registrationId"])
    return web.json_response(render.webhook(w))


@v4_routes.delete("/webhookregistrations/{registrationId}/delete")
async def delete_v4(request: web.Request) -> web.Response:
    sandbox_of(request).delete_webhook(request.match_info["registrationId"])
    return web.Response(status=204)


@v4_routes.post("/webhookregistrations/readMultiple")
async def read_multiple_v4(request: web.Request) -> web.Response:
    found = await _read_multiple(request)
    return web.json_response(
        {"$_type": "WebhookRegistrationList", "items": [render.webhook(w) for w in found]}
    )


@v4_routes.post("/webhookregistrations/search")
async def search_v4(request: web.Request) -> web.Response:
    return await _search(request)


@v4_routes.post("/webhookregistrations/{registrationId}/sendPing")
async def ping_v4(request: web.Request) -> web.Response:
    sandbox_of(request).ping_webhook(request.match_info["registrationId"])
    return web.Response(status=204)


# -- v3 -----------------------------------------------------------------------------------------
@v3_routes.post("/webhookregistrations/create")
async def create_v3(request: web.Request) -> web.Response:
    return await _create(request, "v3")


@v3_routes.post("/webhookregistrations/update")
async def update_v3(request: web.Request) -> web.Response:
    return await _update(request, "v3")


@v3_routes.get("/webhookregistrations/getByName")
async def by_name_v3(request: web.Request) -> web.Response:
    w = sandbox_of(request).webhook_by_name(query_param(request, "name"))
    return web.json_response(render.webhook(w) if w is not None else None)


@v3_routes.get("/webhookregistrations/read")
async def read_v3(request: web.Request) -> web.Response:
    w = sandbox_of(request).state.webhooks.get(query_param(request, "id"))
    return web.json_response(render.webhook(w) if w is not None else None)


@v3_routes.delete("/webhookregistrations/delete")
async def delete_v3(request: web.Request) -> web.Response:
    sandbox_of(request).delete_webhook(query_param(request, "id"))
    return web.Response(status=204)


@v3_routes.post("/webhookregistrations/readMultiple")
async def read_multiple_v3(request: web.Request) -> web.Response:
    found = await _read_multiple(request)
    return web.json_response([render.webhook(w) for w in found])


@v3_routes.post("/webhookregistrations/search")
async def search_v3(request: web.Request) -> web.Response:
    return await _search(request)


@v3_routes.post("/webhookregistrations/ping")
async def ping_v3(request: web.Request) -> web.Response:
    body = await read_body(request)
    sandbox_of(request).ping_webhook(body.req_str("id"))
    return web.Response(status=204)
