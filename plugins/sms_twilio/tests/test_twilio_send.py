"""Sends and media downloads over real HTTP against the Twilio fake and small test servers."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from twilio_testkit import ACCOUNT_SID, AUTH_TOKEN, case_params, make_channel, text_of

from extmsg import errors
from extmsg.errors import DeliveryError
from extmsg.models import Attachment, Contact, OutboundMessage
from extmsg.plugins import Hooks
from extmsg_sms_twilio.fake import FakeTwilio
from extmsg_sms_twilio.media import sends_credentials

FakeServer = tuple[TestServer, FakeTwilio]


def _message(spec: dict[str, Any], message_id: str = "msg-01HZX3") -> OutboundMessage:
    attachment = spec.get("attachment")
    return OutboundMessage(
        id=message_id,
        unblu_message_id="u-1",
        conversation_id="c-1",
        contact=Contact(address=spec["to"]),
        text=text_of(spec["text"]) if "text" in spec else None,
        attachment=msgspec.convert(attachment, Attachment) if attachment else None,
    )


def _fill(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, replacement in mapping.items():
            value = value.replace("{" + key + "}", replacement)
    return value


@case_params("send")
async def test_send(
    hooks: Hooks, twilio_fake: FakeServer, closed_port_url: str, case: dict[str, Any]
) -> None:
    server, fake = twilio_fake
    fake.callbacks_enabled = False
    api = str(server.make_url("")).rstrip("/")
    settings = {"api_base_url": api, "timeout": 5.0}
    settings.update(
        {k: _fill(v, {"closed": closed_port_url}) for k, v in case.get("settings", {}).items()}
    )
    channel = make_channel(settings)
    message = _message(case["message"])
    if "scenario" in case:
        fake.fail(message.contact.address, case["scenario"])
    expect = case["expect"]

    if "error" in expect:
        with pytest.raises(DeliveryError) as info:
            await hooks.send(channel, message)
        error = info.value
        assert type(error).__name__ == expect["error"]
        assert error.retryable is (expect["error"] == "RetryableError")
        for field in ("status", "code", "retry_after"):
            if field in expect:
                assert getattr(error, field) == expect[field], field
        assert expect.get("contains", "") in error.message
        if "sent" in expect:
            assert len(fake.messages) == expect["sent"]
        return

    result = await hooks.send(channel, message)
    assert result.provider_message_id.startswith(expect["sid_prefix"])
    assert len(result.provider_message_id) == 34
    [record] = fake.messages
    assert record["sid"] == result.provider_message_id
    status_url = channel.route_url("status")
    for key, value in expect["recorded"].items():
        assert record[key] == _fill(value, {"status_url": status_url, "id": message.id}), key


async def test_send_uses_basic_auth_and_form(hooks: Hooks, twilio_fake: FakeServer) -> None:
    """Exactly the documented request: form fields, Accept JSON, Basic auth."""
    seen: list[web.Request] = []
    bodies: list[dict[str, str]] = []

    async def create(request: web.Request) -> web.Response:
        seen.append(request)
        bodies.append({k: str(v) for k, v in (await request.post()).items()})
        return web.json_response({"sid": "SM" + "0" * 32, "status": "queued"}, status=201)

    app = web.Application()
    app.router.add_post(f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json", create)
    server = TestServer(app)
    await server.start_server()
    try:
        channel = make_channel({"api_base_url": str(server.make_url("/"))})
        result = await hooks.send(channel, _message({"to": "+14155550123", "text": "Hi"}, "a b/c"))
    finally:
        await server.close()
    assert result.provider_message_id == "SM" + "0" * 32
    [request] = seen
    expected_auth = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected_auth}"
    assert request.headers["Accept"] == "application/json"
    assert bodies == [
        {
            "To": "+14155550123",
            "From": "+15005550006",
            "Body": "Hi",
            "StatusCallback": "https://extmsg.example.com/channels/sms/status?ref=a%20b%2Fc",
        }
    ]


async def test_retry_after_scripted_once(hooks: Hooks, twilio_fake: FakeServer) -> None:
    """A throttled send succeeds when tried again, as the engine's retry would."""
    server, fake = twilio_fake
    fake.callbacks_enabled = False
    channel = make_channel({"api_base_url": str(server.make_url(""))})
    fake.fail("+14155550123", "throttled", times=1)
    message = _message({"to": "+14155550123", "text": "Hi"})
    with pytest.raises(DeliveryError) as info:
        await hooks.send(channel, message)
    assert info.value.retryable
    result = await hooks.send(channel, message)
    assert [m["sid"] for m in fake.messages] == [result.provider_message_id]


# --- media -------------------------------------------------------------------------------------
@pytest.fixture
async def media_server() -> AsyncIterator[tuple[TestServer, dict[str, Any]]]:
    """Serves ``/media`` as the current case says, recording the Authorization header."""
    state: dict[str, Any] = {"serve": {}, "auth": []}

    async def media(request: web.Request) -> web.StreamResponse:
        serve = state["serve"]
        state["auth"].append(request.headers.get("Authorization"))
        if serve.get("status", 200) != 200:
            return web.Response(status=serve["status"], text="no")
        body = b"\x89" * serve["size"]
        if serve.get("chunked"):
            response = web.StreamResponse(headers={"Content-Type": serve["content_type"]})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(body), 65536):
                await response.write(body[start : start + 65536])
            await response.write_eof()
            return response
        return web.Response(body=body, content_type=serve["content_type"])

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/media")

    async def redirect_other_host(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{request.url.port}/media")

    app = web.Application()
    app.router.add_get("/media", media)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/redirect-other-host", redirect_other_host)
    server = TestServer(app)
    await server.start_server()
    try:
        yield server, state
    finally:
        await server.close()


@case_params("media")
async def test_fetch_attachment(
    hooks: Hooks,
    media_server: tuple[TestServer, dict[str, Any]],
    closed_port_url: str,
    case: dict[str, Any],
) -> None:
    server, state = media_server
    state["serve"] = case.get("serve", {})
    base = str(server.make_url("")).rstrip("/")
    places = {"server": base, "closed": closed_port_url}
    settings = {k: _fill(v, places) for k, v in case.get("settings", {}).items()}
    channel = make_channel(settings)
    url = _fill(case.get("url", "{server}/redirect"), places)
    attachment = Attachment(
        file_name="ME123.bin",
        mime_type=case.get("attachment_mime", "application/octet-stream"),
        url=url,
    )
    expect = case["expect"]
    if "error" in expect:
        with pytest.raises(DeliveryError) as info:
            await hooks.fetch_attachment(channel, attachment)
        assert isinstance(info.value, getattr(errors, expect["error"]))
        assert expect.get("contains", "") in info.value.message
        return
    fetched = await hooks.fetch_attachment(channel, attachment)
    assert fetched.data is not None
    assert len(fetched.data) == expect["size"]
    assert fetched.mime_type == expect["mime_type"]
    if "auth" in expect:
        assert (state["auth"][-1] is not None) is expect["auth"]


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1", True),
        ("https://API.twilio.com:443/2010-04-01/Accounts/AC1/Media/ME1", True),
        # the same host over http or on another port, or another Twilio host, gets nothing
        ("http://api.twilio.com/2010-04-01/Accounts/AC1/Media/ME1", False),
        ("https://api.twilio.com:8443/2010-04-01/Accounts/AC1/Media/ME1", False),
        ("https://media.twiliocdn.com/AC1/abc?Signature=x", False),
        ("https://evil.twilio.com/collect", False),
        ("https://api.twilio.com.evil.example/collect", False),
    ],
)
def test_credentials_only_for_the_api_origin(url: str, sent: bool) -> None:
    assert sends_credentials(url, make_channel().settings) is sent


async def test_credentials_not_sent_to_another_port_or_scheme(
    hooks: Hooks, media_server: tuple[TestServer, dict[str, Any]], twilio_fake: FakeServer
) -> None:
    """A MediaUrl on another port of the API's host, or on the API's port over the other
    scheme, is fetched without the account's credentials."""
    server, state = media_server
    state["serve"] = {"content_type": "image/png", "size": 3}
    api, _ = twilio_fake
    elsewhere = Attachment(file_name="a.png", url=str(server.make_url("/media")))
    await hooks.fetch_attachment(make_channel({"api_base_url": str(api.make_url(""))}), elsewhere)
    https_api = str(server.make_url("")).replace("http://", "https://")
    await hooks.fetch_attachment(make_channel({"api_base_url": https_api}), elsewhere)
    assert state["auth"] == [None, None]


async def test_media_on_a_private_address_is_refused_unless_allowed(
    hooks: Hooks, media_server: tuple[TestServer, dict[str, Any]]
) -> None:
    server, state = media_server
    state["serve"] = {"content_type": "image/png", "size": 3}
    attachment = Attachment(file_name="a.png", url=str(server.make_url("/media")))
    with pytest.raises(errors.FetchRefused, match="loopback address") as info:
        await hooks.fetch_attachment(make_channel(fetch_allowed_networks=()), attachment)
    assert not info.value.retryable
    assert state["auth"] == []
    fetched = await hooks.fetch_attachment(make_channel(), attachment)  # tests allow loopback
    assert fetched.data == b"\x89" * 3


async def test_fetch_media_from_fake_with_redirect(hooks: Hooks, twilio_fake: FakeServer) -> None:
    """Twilio's media URL (Basic auth, 302 to storage) as the fake serves it."""
    server, fake = twilio_fake
    base = str(server.make_url("")).rstrip("/")
    url = base + fake.add_media(b"GIF89a-bytes", "image/gif")
    attachment = Attachment(file_name="ME1.gif", mime_type="image/gif", url=url)
    fetched = await hooks.fetch_attachment(make_channel({"api_base_url": base}), attachment)
    assert fetched.data == b"GIF89a-bytes"
    wrong = make_channel({"api_base_url": base, "auth_token": "wrong"})
    with pytest.raises(DeliveryError, match="refused") as info:
        await hooks.fetch_attachment(wrong, attachment)
    assert not info.value.retryable


async def test_fetch_skips_attachments_with_data(hooks: Hooks) -> None:
    attachment = Attachment(file_name="a.txt", data=b"x", url="https://example.invalid/a")
    assert await hooks.fetch_attachment(make_channel(), attachment) is attachment


async def test_network_timeout_is_retryable(hooks: Hooks) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})

    app = web.Application()
    app.router.add_post(f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json", slow)
    server = TestServer(app)
    await server.start_server()
    try:
        channel = make_channel({"api_base_url": str(server.make_url("")), "timeout": 0.2})
        with pytest.raises(DeliveryError, match="Could not reach Twilio") as info:
            await hooks.send(channel, _message({"to": "+14155550123", "text": "Hi"}))
        assert info.value.retryable
    finally:
        await server.close()


async def test_fake_rejects_bad_credentials_shape(twilio_fake: FakeServer) -> None:
    server, _ = twilio_fake
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            server.make_url(f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"),
            data={"To": "+14155550123", "From": "+15005550006", "Body": "x"},
        ) as response,
    ):
        assert response.status == 401
        body = await response.json()
    assert body["code"] == 20003
    assert body["more_info"] == "https://www.twilio.com/docs/errors/20003"
