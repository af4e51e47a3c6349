"""The Twilio fake end to end: its callbacks and inbound webhooks pass the plugin's own
signature check and parse, over real HTTP, through a stand-in for the core's routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from twilio_testkit import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, deliver, make_channel

from extmsg.errors import PermanentError
from extmsg.models import Contact, InboundRequest, OutboundMessage
from extmsg.plugins import Hooks
from extmsg_sms_twilio.fake import FakeTwilio, inbound_params, send_inbound
from extmsg_sms_twilio.plugin import TWIML_EMPTY
from extmsg_sms_twilio.session import basic_auth

FakeServer = tuple[TestServer, FakeTwilio]
Receiver = tuple[TestServer, list[dict[str, Any]]]
#: Settings overrides for the receiver's channel (``{"channel": {...}}``).
RECEIVER_SETTINGS = web.AppKey("receiver_settings", dict[str, Any])


@pytest.fixture
async def receiver(hooks: Hooks) -> AsyncIterator[Receiver]:
    """``/channels/sms/{route}`` answered like the core does: verify → parse → ack."""
    outcomes: list[dict[str, Any]] = []
    holder: dict[str, str] = {}
    settings: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.Response:
        inbound = InboundRequest(
            method=request.method,
            url=str(request.url),
            path=request.path,
            route=request.match_info["route"],
            query=tuple(request.query.items()),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.read(),
        )
        channel = make_channel(settings.get("channel"), public_url=holder["base"])
        outcome = await deliver(hooks, channel, inbound)
        outcomes.append(outcome)
        if outcome["status"] != 200:
            return web.Response(status=outcome["status"], text=outcome["error"])
        body, content_type = outcome["reply"]
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app[RECEIVER_SETTINGS] = settings
    app.router.add_post("/channels/sms/{route}", handle)
    server = TestServer(app)
    await server.start_server()
    holder["base"] = str(server.make_url("")).rstrip("/")
    try:
        yield server, outcomes
    finally:
        await server.close()


def _message(to: str, message_id: str = "msg-7f3a") -> OutboundMessage:
    return OutboundMessage(
        id=message_id,
        unblu_message_id="u",
        conversation_id="c",
        contact=Contact(address=to),
        text="Anna: Hello",
    )


def _events(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert all(o["status"] == 200 for o in outcomes), outcomes
    return [e for o in outcomes for e in o["events"]]


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        (None, [("sent", None), ("delivered", None)]),
        ("unreachable", [("sent", None), ("failed", "30003")]),
        ("carrier_filtered", [("sent", None), ("failed", "30007")]),
        ("carrier_failed", [("failed", "30008")]),
    ],
)
async def test_status_callbacks_verify_and_parse(
    hooks: Hooks,
    twilio_fake: FakeServer,
    receiver: Receiver,
    scenario: str | None,
    expected: list[tuple[str, str | None]],
) -> None:
    server, fake = twilio_fake
    rx, outcomes = receiver
    to = "+14155550123"
    if scenario:
        fake.fail(to, scenario)
    channel = make_channel(
        {"api_base_url": str(server.make_url(""))}, public_url=str(rx.make_url("")).rstrip("/")
    )
    result = await hooks.send(channel, _message(to))
    await fake.wait_idle()
    record = fake.messages[0]
    assert [c.get("http_status") for c in record["callbacks"]] == [200] * len(record["callbacks"])
    events = _events(outcomes)
    assert [(e["state"], e.get("error_code")) for e in events] == expected
    assert {e["provider_message_id"] for e in events} == {result.provider_message_id}
    assert {e["message_ref"] for e in events} == {"msg-7f3a"}
    assert all(e.get("error_text") for e in events if e["state"] == "failed")


async def test_messaging_service_flow(
    hooks: Hooks, twilio_fake: FakeServer, receiver: Receiver
) -> None:
    server, fake = twilio_fake
    rx, outcomes = receiver
    channel = make_channel(
        {
            "api_base_url": str(server.make_url("")),
            "from_number": None,
            "messaging_service_sid": "MG00b3618dbcf346eaaae304b097f41c13",
        },
        public_url=str(rx.make_url("")).rstrip("/"),
    )
    await hooks.send(channel, _message("+14155550123"))
    await fake.wait_idle()
    assert [e["state"] for e in _events(outcomes)] == ["sent", "delivered"]


async def test_send_inbound_helper(hooks: Hooks, receiver: Receiver) -> None:
    rx, outcomes = receiver
    url = str(rx.make_url("/channels/sms/inbound"))
    params = inbound_params(
        from_="+41791234567",
        to=FROM_NUMBER,
        body="Grüezi 👋",
        account_sid=ACCOUNT_SID,
        media=[
            ("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1", "image/jpeg")
        ],
    )
    answer = await send_inbound(url, AUTH_TOKEN, params)
    assert (answer.status, answer.content_type) == (200, "text/xml")
    assert answer.body.encode() == TWIML_EMPTY
    [event] = _events(outcomes)
    assert event["provider_message_id"] == params["MessageSid"]
    assert event["contact"]["address"] == "+41791234567"
    assert event["text"] == "Grüezi 👋"
    assert [a["mime_type"] for a in event["attachments"]] == ["image/jpeg"]

    forged = await send_inbound(url, "not-the-token", {"From": "+41791234567", "Body": "hi"})
    assert forged.status == 403


async def test_control_endpoints(hooks: Hooks, twilio_fake: FakeServer, receiver: Receiver) -> None:
    server, fake = twilio_fake
    rx, outcomes = receiver
    async with aiohttp.ClientSession() as http:
        async with http.post(
            server.make_url("/fake/failures"),
            json={"to": "+14155550199", "scenario": "opted_out", "times": 1},
        ) as response:
            assert response.status == 200
        async with http.post(
            server.make_url("/fake/failures"), json={"to": "+1", "scenario": "nope"}
        ) as response:
            assert response.status == 400
        channel = make_channel({"api_base_url": str(server.make_url(""))})
        with pytest.raises(PermanentError, match="replied STOP"):
            await hooks.send(channel, _message("+14155550199"))
        fake.callbacks_enabled = False
        result = await hooks.send(channel, _message("+14155550199"))
        async with http.get(server.make_url("/fake/messages")) as response:
            listing = await response.json()
        assert [m["sid"] for m in listing["messages"]] == [result.provider_message_id]
        auth = {"Authorization": basic_auth(ACCOUNT_SID, AUTH_TOKEN)}
        path = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{result.provider_message_id}.json"
        async with http.get(server.make_url(path), headers=auth) as response:
            fetched = await response.json()
        assert fetched["sid"] == result.provider_message_id
        assert "status_callback" not in fetched
        async with http.post(
            server.make_url("/fake/inbound"),
            json={
                "url": str(rx.make_url("/channels/sms/inbound")),
                "params": {"From": "+14155550123", "To": FROM_NUMBER, "Body": "STOP"},
            },
        ) as response:
            delivered = await response.json()
        assert delivered["status"] == 200
    assert [e["type"] for e in _events(outcomes)] == ["contact", "message"]


async def test_sandbox_declaration_and_inbound_console(hooks: Hooks, receiver: Receiver) -> None:
    """``extmsg serve --sandbox`` builds the fake with ``extmsg_url`` only and configures the
    channel from ``channel_settings``; the fake's console texts that channel."""
    rx, outcomes = receiver
    [declared] = hooks.provider_fakes()
    assert declared.channel_settings is not None
    base = str(rx.make_url("")).rstrip("/")
    app = declared.factory(extmsg_url=base)
    fake_server = TestServer(app)
    await fake_server.start_server()
    try:
        settings = declared.channel_settings(str(fake_server.make_url("")).rstrip("/"), app)
        rx.app[RECEIVER_SETTINGS]["channel"] = settings
        async with aiohttp.ClientSession() as http:
            async with http.get(fake_server.make_url("/")) as response:
                assert "Twilio fake" in await response.text()
            async with http.post(
                fake_server.make_url("/fake/inbound"),
                json={"channel": "sms", "from": "+41791234567", "body": "Hi sandbox"},
            ) as response:
                assert (await response.json())["status"] == 200
        [event] = _events(outcomes)
        assert (event["contact"]["address"], event["text"]) == ("+41791234567", "Hi sandbox")
        channel = make_channel(settings)
        result = await hooks.send(channel, _message("+14155550123"))
        assert result.provider_message_id.startswith("SM")
    finally:
        await fake_server.close()


async def test_a_failure_can_wait_for_sends_that_go_through(
    hooks: Hooks, twilio_fake: FakeServer
) -> None:
    """``after``: the first sends to the number go through, the next one fails (part two of a
    split message refused, as Twilio's 429 does)."""
    server, fake = twilio_fake
    fake.callbacks_enabled = False
    channel = make_channel({"api_base_url": str(server.make_url(""))})
    async with aiohttp.ClientSession() as http:
        async with http.post(
            server.make_url("/fake/failures"),
            json={"to": "+14155550199", "scenario": "opted_out", "times": 1, "after": 1},
        ) as response:
            assert response.status == 200
        async with http.post(
            server.make_url("/fake/failures"),
            json={"to": "+14155550199", "scenario": "opted_out", "after": "x"},
        ) as response:
            assert response.status == 400
    await hooks.send(channel, _message("+14155550199"))
    with pytest.raises(PermanentError, match="replied STOP"):
        await hooks.send(channel, _message("+14155550199"))
    await hooks.send(channel, _message("+14155550199"))
    assert len(fake.messages) == 2
