"""The fake's contact side over real HTTP: signed webhooks, the handshake, automatic statuses.

A small stand-in for the core's provider routes serves the plugin's routes the way the core
does (events: verify → parse → ack; handler: answered directly), so the fake's helpers and the
plugin meet on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from whatsapp_testkit import APP_SECRET, MAIN_NUMBER_ID, run_inbound

from extmsg.models import (
    Attachment,
    Channel,
    Contact,
    InboundEvent,
    InboundMessage,
    InboundRequest,
    OutboundMessage,
    StatusUpdate,
)
from extmsg.plugins import Hooks
from extmsg_whatsapp import fake as wa
from extmsg_whatsapp.fake import GraphFake

MakeChannel = Callable[..., Channel]


class MiniCore:
    """The plugin's messenger routes, served like the core serves them."""

    def __init__(self, hooks: Hooks, channels: list[Channel]) -> None:
        self.hooks, self.channels = hooks, channels
        self.events: list[InboundEvent] = []
        self.app = web.Application()
        for route in hooks.messenger_types()["whatsapp"].routes:
            self.app.router.add_route(
                route.method, f"/messengers/whatsapp/{route.path}", self._handler(route)
            )

    def _handler(self, route: Any) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            inbound = InboundRequest(
                method=request.method,
                url=str(request.url),
                path=request.path,
                route=route.name,
                query=tuple(request.query.items()),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=await request.read(),
            )
            if route.kind == "handler":
                reply = await route.handler(inbound, self.channels)
                return web.Response(
                    status=reply.status, body=reply.body, content_type=reply.content_type
                )
            status, events = await run_inbound(self.hooks, inbound, self.channels)
            self.events.extend(events)
            return web.Response(status=status)

        return handle


@pytest.fixture
async def core(
    aiohttp_server: Callable[..., Any],
    started: Hooks,
    graph_channel: MakeChannel,
    fake: GraphFake,
) -> tuple[MiniCore, str]:
    mini = MiniCore(started, [graph_channel(verify_token="main-verify-token")])
    server: TestServer = await aiohttp_server(mini.app)
    url = str(server.make_url("/messengers/whatsapp/webhook"))
    fake.webhook_url = url
    return mini, url


async def test_signed_webhook_is_accepted(core: tuple[MiniCore, str]) -> None:
    mini, url = core
    message = wa.text_message("16505551234", "Hallo 👋", wamid="wamid.ONE")
    payload = wa.webhook_payload(
        wa.entry(
            wa.value(
                MAIN_NUMBER_ID, contacts=[wa.contact("16505551234", "Sheena")], messages=[message]
            )
        )
    )
    assert await wa.send_webhook(url, APP_SECRET, payload) == 200
    (event,) = mini.events
    assert isinstance(event, InboundMessage)
    assert (event.channel, event.text, event.provider_message_id) == (
        "wa-main",
        "Hallo 👋",
        "wamid.ONE",
    )
    assert event.contact == Contact(address="16505551234", name="Sheena", phone="+16505551234")


async def test_webhook_signed_with_another_secret_is_refused(core: tuple[MiniCore, str]) -> None:
    mini, url = core
    payload = wa.webhook_payload(
        wa.entry(wa.value(MAIN_NUMBER_ID, messages=[wa.text_message("16505551234", "x")]))
    )
    assert await wa.send_webhook(url, "someone-else", payload) == 403
    assert mini.events == []


async def test_handshake_over_http(core: tuple[MiniCore, str]) -> None:
    _, url = core
    assert await wa.verify_webhook(url, "main-verify-token", "8820") == (200, "8820")
    status, _ = await wa.verify_webhook(url, "wrong-token", "8820")
    assert status == 403


async def test_fake_plays_the_contact(core: tuple[MiniCore, str], graph_server: TestServer) -> None:
    mini, _ = core
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            graph_server.make_url("/fake/inbound"),
            json={
                "phone_number_id": MAIN_NUMBER_ID,
                "from": "+41791234567",
                "name": "Lea",
                "text": "Grüezi",
            },
        ) as resp,
    ):
        answer = await resp.json()
    assert answer["status"] == 200
    (event,) = mini.events
    assert isinstance(event, InboundMessage)
    assert (event.provider_message_id, event.text, event.contact.address) == (
        answer["wamid"],
        "Grüezi",
        "41791234567",
    )


async def test_statuses_follow_a_send(
    core: tuple[MiniCore, str],
    fake: GraphFake,
    graph_channel: MakeChannel,
    started: Hooks,
    graph_server: TestServer,
) -> None:
    mini, _ = core
    fake.auto_statuses = ("sent", "delivered", "read")
    message = OutboundMessage(
        id="out-42",
        unblu_message_id="ub-42",
        conversation_id="c-1",
        contact=Contact(address="16505551234"),
        text="Anna: Hello",
    )
    result = await started.send(graph_channel(), message)
    for _ in range(200):
        if len(mini.events) == 3:
            break
        await asyncio.sleep(0.01)
    assert [
        (e.state, e.provider_message_id, e.message_ref, e.channel)
        for e in mini.events
        if isinstance(e, StatusUpdate)
    ] == [
        (state, result.provider_message_id, "out-42", "wa-main")
        for state in ("sent", "delivered", "read")
    ]
    async with (
        aiohttp.ClientSession() as session,
        session.get(graph_server.make_url("/fake/messages")) as resp,
    ):
        recorded = (await resp.json())["messages"]
    assert [r["wamid"] for r in recorded] == [result.provider_message_id]


async def test_contact_media_from_webhook_to_bytes(
    core: tuple[MiniCore, str],
    fake: GraphFake,
    graph_channel: MakeChannel,
    started: Hooks,
) -> None:
    mini, url = core
    data = b"%PDF-1.7\n" + b"0" * 3000
    media_id = fake.add_media(data, "application/pdf", "offer.pdf")
    message = wa.media_message(
        "16505551234",
        "document",
        media_id,
        mime_type="application/pdf",
        filename="offer.pdf",
        caption="the offer",
    )
    payload = wa.webhook_payload(
        wa.entry(wa.value(MAIN_NUMBER_ID, messages=[message], contacts=[wa.contact("16505551234")]))
    )
    assert await wa.send_webhook(url, APP_SECRET, payload) == 200
    (event,) = mini.events
    assert isinstance(event, InboundMessage)
    (attachment,) = event.attachments
    assert attachment == Attachment(
        file_name="offer.pdf",
        mime_type="application/pdf",
        url=f"whatsapp-media:{media_id}",
        caption="the offer",
    )
    fetched = await started.fetch_attachment(graph_channel(), attachment)
    assert fetched.data == data
