"""The webhook's GET verification handshake and the routes the messenger declares."""

from __future__ import annotations

from typing import Any

import pytest
from whatsapp_testkit import build_request, case_ids, load_cases

from extmsg.models import Channel
from extmsg.plugins import Hooks

CASES = load_cases("handshake.json")


def _route(hooks: Hooks, method: str) -> Any:
    mtype = hooks.messenger_types()["whatsapp"]
    return next(r for r in mtype.routes if r.method == method)


def test_routes_are_messenger_scoped(hooks: Hooks) -> None:
    """Meta calls one URL per app: /messengers/whatsapp/webhook, GET and POST."""
    post, get = _route(hooks, "POST"), _route(hooks, "GET")
    assert (post.scope, post.kind, post.path) == ("messenger", "events", "webhook")
    assert (get.scope, get.kind, get.path) == ("messenger", "handler", "webhook")
    assert get.handler is not None


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
async def test_handshake(hooks: Hooks, channels: list[Channel], case: dict[str, Any]) -> None:
    reply = await _route(hooks, "GET").handler(build_request(case), channels)
    assert reply.status == case["expect"]["status"]
    if "body" in case["expect"]:
        assert reply.body.decode() == case["expect"]["body"]
        assert reply.content_type == case["expect"]["content_type"]
    else:
        assert reply.body != build_request(case).query_value("hub.challenge")
