"""One test per hook, through the typed facade the core uses (the meta-test checks the names)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from extmsg import hookimpl
from extmsg.errors import PermanentError, PluginError, RetryableError, SignatureError
from extmsg.flows import accept
from extmsg.models import (
    Attachment,
    Contact,
    ContactCheck,
    ContactUpdate,
    HttpReply,
    InboundMessage,
    InboundRequest,
    OutboundMessage,
    ProviderFake,
    Recipient,
    Routing,
    StatusUpdate,
)
from extmsg.plugins import Hooks, build_hooks

from . import loopback_plugin
from .conftest import make_channel


def hooks_with(*plugins: object) -> Hooks:
    return build_hooks(entry_points=False, extra=[loopback_plugin, *plugins], disabled=())


def loop_channel(**kw: Any) -> Any:
    settings = loopback_plugin.LoopbackSettings(token="tok", **kw.pop("settings", {}))
    return make_channel("loop", "loopback", settings=settings, **kw)


def request(body: bytes, signature: str | None = None) -> InboundRequest:
    headers = {"x-loopback-signature": signature} if signature is not None else {}
    return InboundRequest(
        method="POST",
        url="https://x/channels/loop/inbound",
        path="/",
        route="inbound",
        headers=headers,
        body=body,
    )


def outbound(**kw: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "id": "m1",
        "unblu_message_id": "u1",
        "conversation_id": "c1",
        "contact": Contact(address="+41790000000"),
        "text": "Hello",
    }
    fields.update(kw)
    return OutboundMessage(**fields)


def test_hook_extmsg_messenger_types() -> None:
    types = hooks_with().messenger_types()
    assert list(types) == ["loopback"]
    assert types["loopback"].settings is loopback_plugin.LoopbackSettings
    assert types["loopback"].routes[0].path == "inbound"


def test_hook_extmsg_provider_fakes() -> None:
    class Fakes:
        @hookimpl
        def extmsg_provider_fakes(self) -> list[ProviderFake]:
            return [
                ProviderFake(
                    messenger="loopback",
                    name="Loopback API",
                    factory=web.Application,
                    channel_settings=lambda url, app: {"token": "t", "api_url": url},
                )
            ]

    [fake] = hooks_with(Fakes()).provider_fakes()
    assert fake.name == "Loopback API"
    assert fake.channel_settings is not None
    settings = fake.channel_settings("http://127.0.0.1:1", web.Application())
    assert settings["api_url"] == "http://127.0.0.1:1"


async def test_hook_extmsg_startup() -> None:
    calls: list[str] = []

    class Sync:
        @hookimpl
        def extmsg_startup(self, app: web.Application, config: Any) -> None:
            calls.append("sync")

    class Async:
        @hookimpl
        async def extmsg_startup(self, app: web.Application, config: Any) -> None:
            await asyncio.sleep(0)
            calls.append("async")

    await hooks_with(Sync(), Async()).startup(web.Application(), None)  # type: ignore[arg-type]
    assert sorted(calls) == ["async", "sync"]


async def test_hook_extmsg_shutdown() -> None:
    calls: list[str] = []

    class Failing:
        @hookimpl(tryfirst=True)
        async def extmsg_shutdown(self, app: web.Application, config: Any) -> None:
            raise RuntimeError("cannot close")

    class Closing:
        @hookimpl
        def extmsg_shutdown(self, app: web.Application, config: Any) -> None:
            calls.append("closed")

    await hooks_with(Failing(), Closing()).shutdown(web.Application(), None)  # type: ignore[arg-type]
    assert calls == ["closed"]


async def test_hook_extmsg_verify_inbound() -> None:
    hooks = hooks_with()
    body = b'{"messages": []}'
    good = hmac.new(b"tok", body, hashlib.sha256).hexdigest()
    assert await hooks.verify_inbound("loopback", request(body, good), [loop_channel()]) is True
    with pytest.raises(SignatureError):
        await hooks.verify_inbound("loopback", request(body, "0" * 64), [loop_channel()])
    assert await hooks.verify_inbound("other", request(body, good), [loop_channel()]) is None


async def test_hook_extmsg_parse_inbound() -> None:
    body = json.dumps(
        {
            "messages": [{"id": "p1", "from": "+41790000001", "text": "hi", "name": "Ann"}],
            "statuses": [{"state": "delivered", "id": "p0"}],
            "optouts": [{"from": "+41790000002"}],
        }
    ).encode()
    events = await hooks_with().parse_inbound("loopback", request(body), [loop_channel()])
    assert events == [
        InboundMessage(
            provider_message_id="p1", contact=Contact(address="+41790000001", name="Ann"), text="hi"
        ),
        StatusUpdate(state="delivered", provider_message_id="p0"),
        ContactUpdate(address="+41790000002", opted_out=True),
    ]
    assert await hooks_with().parse_inbound("other", request(body), []) is None


async def test_hook_extmsg_render_ack() -> None:
    assert await hooks_with().render_ack("loopback", request(b""), []) == HttpReply()

    class Twiml:
        @hookimpl
        def extmsg_render_ack(self, messenger: str, request: Any, events: Any) -> HttpReply | None:
            if messenger != "loopback":
                return None
            return HttpReply(body=b"<Response/>", content_type="text/xml")

    reply = await hooks_with(Twiml()).render_ack("loopback", request(b""), [])
    assert reply.body == b"<Response/>"


@pytest.mark.parametrize(
    "reply",
    [
        HttpReply(),
        HttpReply(status=202, body=b"<Response/>", content_type="text/xml"),
        HttpReply(body=b"{}", content_type="application/json; charset=utf-8"),
        HttpReply(body=b"x", headers={"X-Extra": "1"}),
        HttpReply(body=b"x", content_type="text/xml", headers={"content-type": "a/b; q=1"}),
        HttpReply(body="text", content_type="text/xml"),  # type: ignore[arg-type]
    ],
)
def test_the_ack_is_answered_as_the_reply_says(reply: HttpReply) -> None:
    """The usual reply (no headers of its own) is built in one go: it must come out as the
    general way makes it, the content type set on the response after the headers."""
    got = accept._response(reply)
    general = web.Response(status=reply.status, body=reply.body, headers=dict(reply.headers))
    general.content_type = reply.content_type
    assert got.status == general.status
    if isinstance(reply.body, bytes):
        assert got.body == general.body
    assert list(got.headers.items()) == list(general.headers.items())
    assert got.content_type == general.content_type


async def test_hook_extmsg_map_contact() -> None:
    contact = Contact(address="+41790000001")
    assert await hooks_with().map_contact(loop_channel(), contact) == contact

    class Crm:
        @hookimpl(tryfirst=True)
        def extmsg_map_contact(self, channel: Any, contact: Contact) -> Contact:
            return msgspec.structs.replace(contact, name="Ann from the CRM")

    mapped = await hooks_with(Crm()).map_contact(loop_channel(), contact)
    assert mapped.name == "Ann from the CRM"


async def test_hook_extmsg_route_conversation() -> None:
    message = InboundMessage(provider_message_id="p", contact=Contact(address="a"))
    default = await hooks_with().route_conversation(loop_channel(), message.contact, message)
    assert default == Routing(engagement_type="CHAT_REQUEST")
    team = Recipient(type="TEAM", id="team-1")
    channel = loop_channel(
        engagement_type="OFFLINE_CHAT_REQUEST", recipient=team, topic="SMS from {contact}"
    )
    routed = await hooks_with().route_conversation(
        channel, Contact(address="a", name="Ann"), message
    )
    assert routed == Routing(
        engagement_type="OFFLINE_CHAT_REQUEST", recipient=team, topic="SMS from Ann"
    )


async def test_hook_extmsg_fetch_attachment() -> None:
    attachment = Attachment(file_name="a.jpg", mime_type="image/jpeg", url="loop:1")
    assert await hooks_with().fetch_attachment(loop_channel(), attachment) == attachment

    class Fetcher:
        @hookimpl
        def extmsg_fetch_attachment(self, channel: Any, attachment: Attachment) -> Any:
            async def fetch() -> Attachment:
                return msgspec.structs.replace(attachment, data=b"JPEG")

            return fetch()

    fetched = await hooks_with(Fetcher()).fetch_attachment(loop_channel(), attachment)
    assert fetched.data == b"JPEG"


async def test_hook_extmsg_validate_contact() -> None:
    hooks = hooks_with()
    assert await hooks.validate_contact(loop_channel(), "  +41 79  ") == ContactCheck(
        valid=True, address="+41 79"
    )
    check = await hooks.validate_contact(loop_channel(), "   ")
    assert not check.valid
    assert check.error == "the contact identifier is empty"


@pytest.mark.parametrize(
    ("template", "sender", "expected"),
    [
        ("{sender}: ", "Anna Agent", "Anna Agent: Hello"),
        ("{sender}: ", None, "Support: Hello"),
        ("{sender}: ", "   ", "Support: Hello"),
        ("[{sender}] ", "Bo", "[Bo] Hello"),
        ("", "Bo", "Hello"),
    ],
)
async def test_hook_extmsg_render_outbound(
    template: str, sender: str | None, expected: str
) -> None:
    channel = loop_channel(sender_prefix=template, sender_fallback="Support")
    [rendered] = await hooks_with().render_outbound(channel, outbound(sender_name=sender))
    assert rendered.text == expected


async def test_render_outbound_puts_the_prefix_on_a_file_caption() -> None:
    channel = loop_channel()
    message = outbound(
        text=None, sender_name="Bo", attachment=Attachment(file_name="a.pdf", data=b"%PDF")
    )
    [rendered] = await hooks_with().render_outbound(channel, message)
    assert rendered.attachment is not None
    assert rendered.attachment.caption == "Bo:"


async def test_hook_extmsg_send(aiohttp_server: Any) -> None:
    received: list[dict[str, Any]] = []

    async def send(req: web.Request) -> web.Response:
        body = await req.json()
        received.append(body)
        if body["to"] == "bad":
            return web.json_response({"error": "no such number"}, status=400)
        if body["to"] == "busy":
            return web.json_response({"error": "busy"}, status=503)
        return web.json_response({"id": f"p-{len(received)}"})

    app = web.Application()
    app.router.add_post("/send", send)
    server = await aiohttp_server(app)
    channel = loop_channel(settings={"api_url": str(server.make_url("")).rstrip("/")})
    hooks = hooks_with()
    result = await hooks.send(channel, outbound())
    assert result.provider_message_id == "p-1"
    assert received[0] == {"to": "+41790000000", "text": "Hello", "ref": "m1"}
    with pytest.raises(PermanentError, match="no such number"):
        await hooks.send(channel, outbound(contact=Contact(address="bad")))
    with pytest.raises(RetryableError):
        await hooks.send(channel, outbound(contact=Contact(address="busy")))
    with pytest.raises(PluginError, match="no plugin sends messages for messenger 'nobody'"):
        await hooks.send(make_channel("x", "nobody"), outbound())


async def test_hook_extmsg_find_sent(aiohttp_server: Any) -> None:
    from .loopback_fake import LoopbackProvider

    provider = LoopbackProvider()
    server = await aiohttp_server(provider.app)
    channel = loop_channel(settings={"api_url": str(server.make_url("")).rstrip("/")})
    hooks = hooks_with()
    assert await hooks.find_sent(channel, outbound()) is False  # the provider never got it
    await hooks.send(channel, outbound())
    found = await hooks.find_sent(channel, outbound())
    assert found is not None
    assert not isinstance(found, bool)
    assert found.provider_message_id == "lp-1"
    assert provider.finds[-1] == {"ref": "m1", "text": "Hello", "to": "+41790000000"}
    provider.lookup = "unknown"
    assert await hooks.find_sent(channel, outbound()) is None
    provider.lookup = 503
    with pytest.raises(RetryableError):
        await hooks.find_sent(channel, outbound())
    # Nobody answers for a messenger without a lookup: the core counts a possible double.
    assert await hooks.find_sent(make_channel("x", "nobody"), outbound()) is None


async def test_find_sent_answers_of_the_wrong_type_are_refused() -> None:
    class Odd:
        @hookimpl
        def extmsg_find_sent(self, channel: Any, message: OutboundMessage) -> Any:
            return "yes"

    with pytest.raises(PluginError, match="extmsg_find_sent returned str"):
        await hooks_with(Odd()).find_sent(make_channel("x", "nobody"), outbound())


def test_find_sent_async_def_is_refused_at_load() -> None:
    class Eager:
        @hookimpl
        async def extmsg_find_sent(self, channel: Any, message: OutboundMessage) -> Any:
            return None

    with pytest.raises(PluginError, match="extmsg_find_sent is a first-result hook"):
        hooks_with(Eager())


async def test_hook_extmsg_mark_read(aiohttp_server: Any) -> None:
    reads: list[str] = []

    async def read(req: web.Request) -> web.Response:
        reads.append((await req.json())["id"])
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/read", read)
    server = await aiohttp_server(app)
    channel = loop_channel(settings={"api_url": str(server.make_url("")).rstrip("/")})
    assert await hooks_with().mark_read(channel, "p9") is True
    assert reads == ["p9"]
    assert await hooks_with().mark_read(make_channel("x", "nobody"), "p9") is False


@pytest.mark.parametrize(
    ("error", "retryable", "reason"),
    [
        (PermanentError("invalid number", status=400, code=21211), False, "invalid number"),
        (RetryableError("throttled", status=429, retry_after=7), True, "throttled"),
        (
            aiohttp.ClientResponseError(None, (), status=503, message="Unavailable"),  # type: ignore[arg-type]
            True,
            "HTTP 503",
        ),
        (
            aiohttp.ClientResponseError(None, (), status=404, message="Not Found"),  # type: ignore[arg-type]
            False,
            "HTTP 404",
        ),
        (aiohttp.ClientConnectionError("refused"), True, "network error"),
        (TimeoutError(), True, "network error"),
        (ValueError("odd"), True, "unexpected error: ValueError"),
    ],
)
async def test_hook_extmsg_classify_error(
    error: BaseException, retryable: bool, reason: str
) -> None:
    verdict = await hooks_with().classify_error(None, error)
    assert verdict.retryable is retryable
    assert reason in verdict.reason
    if isinstance(error, RetryableError):
        assert verdict.retry_after == 7


async def test_hook_extmsg_listening(caplog: pytest.LogCaptureFixture) -> None:
    from extmsg.models import RouteUrls

    seen: list[str] = []

    class Registers:
        @hookimpl
        async def extmsg_listening(
            self, app: web.Application, config: Any, urls: RouteUrls
        ) -> None:
            seen.append(urls.of("loop", "inbound"))

    class Fails:
        @hookimpl(tryfirst=True)
        def extmsg_listening(self, app: web.Application, config: Any, urls: RouteUrls) -> None:
            raise RuntimeError("provider refused the webhook")

    urls = RouteUrls(
        base="https://x", channels={"loop": {"inbound": "https://x/channels/loop/inbound"}}
    )
    await hooks_with(Fails(), Registers()).listening(web.Application(), None, urls)  # type: ignore[arg-type]
    assert seen == ["https://x/channels/loop/inbound"]  # a failing plugin does not stop the rest
    assert "failed in extmsg_listening" in caplog.text
    assert "provider refused the webhook" in caplog.text
