"""UnbluClient behaviour that does not depend on the vendor spec: URL handling, error mapping,
retry classification, idempotent provisioning and keeping secrets out of text."""

from __future__ import annotations

import asyncio
import base64
import functools
import socket
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from aiohttp import web

from extmsg.metrics import Metrics
from extmsg.unblu import (
    ApiVersion,
    Channel,
    ChannelSpec,
    ContactRef,
    RecordedCall,
    UnbluClient,
    UnbluError,
    UnbluNotFound,
    virtual_person_source_id,
)
from extmsg.unblu.client import _fill_path
from extmsg.unblu.errors import parse_retry_after

PASSWORD = "pa55-W0rd!"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MakeClient = Callable[..., Awaitable[UnbluClient]]


def error(status: int, message: str, **headers: str) -> web.Response:
    body = {
        "$_type": "Error",
        "statusCode": status,
        "statusDescription": "x",
        "errorMessage": message,
    }
    return web.Response(
        status=status,
        body=msgspec.json.encode(body),
        content_type="application/json",
        headers=headers,
    )


@pytest.fixture
async def make_client(aiohttp_server: Any) -> Any:
    """Start a server whose every route is ``handler`` and return a v4 client for it."""
    clients: list[UnbluClient] = []

    async def make(handler: Handler, version: ApiVersion = "v4", **kwargs: Any) -> UnbluClient:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = await aiohttp_server(app)
        client = UnbluClient(
            str(server.make_url("/app/rest")),
            "admin",
            PASSWORD,
            version,
            **kwargs,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


# -- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "version", "root"),
    [
        ("https://u.example.com/app/rest", "v4", "https://u.example.com/app/rest/v4"),
        ("https://u.example.com/app/rest/", "v3", "https://u.example.com/app/rest/v3"),
        ("https://u.example.com/app/rest/v4", "v4", "https://u.example.com/app/rest/v4"),
        ("https://u.example.com/app/rest/v3/", "v3", "https://u.example.com/app/rest/v3"),
    ],
)
def test_base_url(base: str, version: ApiVersion, root: str) -> None:
    assert UnbluClient(base, "u", "p", version).base_url == root


@pytest.mark.parametrize(
    ("base", "version", "match"),
    [
        ("https://u.example.com/app/rest/v3", "v4", "ends in /v3"),
        ("https://u.example.com/app/rest/v4", "v3", "ends in /v4"),
        ("u.example.com/app/rest", "v4", "http"),
    ],
)
def test_bad_base_url(base: str, version: ApiVersion, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UnbluClient(base, "u", "p", version)


def test_bad_api_version() -> None:
    with pytest.raises(ValueError, match="api_version"):
        UnbluClient("https://x/app/rest", "u", "p", "v5")  # type: ignore[arg-type]


def test_password_not_in_reprs() -> None:
    client = UnbluClient("https://x/app/rest", "admin", PASSWORD)
    assert PASSWORD not in repr(client)
    assert PASSWORD not in str(client)
    spec = ChannelSpec(name="c", webhook_endpoint="https://e", webhook_secret="hook-secret")
    assert "hook-secret" not in repr(spec)
    channel = Channel(id="ch1", name="c", webhook_secret="hook-secret")
    assert "hook-secret" not in repr(channel)
    assert "'***'" in repr(channel)


# -- error mapping -----------------------------------------------------------------------------


async def test_error_body_is_mapped(make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return error(400, "Invalid value for conversationId")

    client = await make_client(handler)
    with pytest.raises(UnbluError) as info:
        await client.get_conversation("c1")
    err = info.value
    assert err.status == 400
    assert err.error_message == "Invalid value for conversationId"
    assert err.operation == "GET /conversations/{conversationId}/read"
    assert not err.retryable
    assert err.retry_after is None
    assert "HTTP 400" in str(err)
    assert "Invalid value" in str(err)
    assert not isinstance(err, UnbluNotFound)


async def test_404_is_not_found(make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return error(404, "Conversation not found")

    client = await make_client(handler)
    with pytest.raises(UnbluNotFound) as info:
        await client.get_conversation("c1")
    assert info.value.status == 404
    assert not info.value.retryable
    # the look-ups that may legitimately find nothing answer None instead
    assert await client.get_channel_by_name("nope") is None
    assert await client.find_active_conversation("ch", "thread") is None


async def test_not_found_text_on_400_means_no_active_conversation(make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return error(400, "No active conversation found for sourceId")

    client = await make_client(handler)
    assert await client.find_active_conversation("ch", "thread") is None


async def test_ended_conversation_is_not_active(make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"$_type": "ConversationData", "id": "c1", "state": "ENDED"})

    client = await make_client(handler)
    assert await client.find_active_conversation("ch", "thread") is None


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [(503, "7", 7.0), (429, "0.5", 0.5), (500, None, None), (502, "soon", None)],
)
async def test_server_errors_are_retryable(
    make_client: MakeClient, status: int, retry_after: str | None, expected: float | None
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"Retry-After": retry_after} if retry_after else {}
        return error(status, "busy", **headers)

    client = await make_client(handler)
    with pytest.raises(UnbluError) as info:
        await client.ping("ch1")
    assert info.value.status == status
    assert info.value.retryable
    assert info.value.retry_after == expected


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("-3") is None
    assert parse_retry_after("") is None


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    recorder: list[RecordedCall] = []
    async with UnbluClient(
        f"http://127.0.0.1:{port}/app/rest", "admin", PASSWORD, recorder=recorder
    ) as client:
        with pytest.raises(UnbluError) as info:
            await client.ping("ch1")
    err = info.value
    assert err.status is None
    assert err.retryable
    assert "cannot connect" in str(err)
    assert recorder[-1].status is None


async def test_timeout_is_retryable(make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2)
        return web.json_response({})

    client = await make_client(handler, timeout=0.05)
    with pytest.raises(UnbluError) as info:
        await client.get_conversation("c1")
    assert info.value.status is None
    assert info.value.retryable
    assert "timed out" in str(info.value)


async def test_html_instead_of_json_is_explained(make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>login</html>", content_type="text/html")

    client = await make_client(handler)
    with pytest.raises(UnbluError, match="expected JSON, got text/html") as info:
        await client.get_conversation("c1")
    assert not info.value.retryable


async def test_redirect_is_not_followed(make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/login")

    client = await make_client(handler)
    with pytest.raises(UnbluError, match="redirect") as info:
        await client.get_conversation("c1")
    assert info.value.status == 302
    assert not info.value.retryable


async def test_unexpected_shape_is_an_error(make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"$_type": "SendMessageResult", "messageId": 12})

    client = await make_client(handler)
    with pytest.raises(UnbluError, match="unexpected response") as info:
        await client.send_text("ch", "conv", ContactRef("p", "c"), "s", "hello secret text")
    assert not info.value.retryable
    assert "hello secret text" not in str(info.value)


async def test_secrets_and_bodies_never_in_errors(make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return error(401, f"Bad credentials for admin/{PASSWORD}")

    client = await make_client(handler)
    with pytest.raises(UnbluError) as info:
        await client.send_text("ch", "conv", ContactRef("p", "c"), "s", "my private message")
    text = str(info.value) + repr(info.value)
    assert PASSWORD not in text
    assert "my private message" not in text
    assert info.value.status == 401
    assert not info.value.retryable


async def test_basic_auth_and_json_headers(make_client: MakeClient) -> None:
    seen: dict[str, str] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.update(request.headers)
        seen["path"] = request.raw_path
        seen["query"] = request.query_string
        return web.json_response({"$_type": "PingResponse", "pingId": "p1"})

    client = await make_client(handler)
    assert await client.ping("ch/1") == "p1"
    expected = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    assert seen["Authorization"] == f"Basic {expected}"
    assert seen["Accept"] == "application/json"
    assert seen["path"] == "/app/rest/v4/externalmessengers/ch%2F1/sendPing"


async def test_recorder_keeps_last_n(make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204)

    recorder: list[RecordedCall] = []
    client = await make_client(handler, recorder=recorder, record_limit=3)
    for i in range(5):
        await client.message_sent("ch", "conv", f"m{i}")
    assert [c.request["messageId"] for c in recorder] == ["m2", "m3", "m4"]
    assert recorder[0].path == "/externalmessengers/{channelId}/messageSentSuccessfully"
    assert recorder[0].url_path == "/externalmessengers/ch/messageSentSuccessfully"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ('"action-42"', "application/json"),
        ("action-42", "text/plain"),
        ("action-42", "application/json"),
    ],
)
async def test_v3_send_message_returns_the_bare_id(
    make_client: MakeClient, body: str, content_type: str
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=body, content_type=content_type)

    client = await make_client(handler, version="v3")
    assert await client.send_text("ch", "conv", ContactRef("p"), "s", "x") == "action-42"


async def test_v4_needs_contact_ids() -> None:
    client = UnbluClient("https://x/app/rest", "u", "p")
    with pytest.raises(ValueError, match="ExternalMessengerContact"):
        await client.send_text("ch", "conv", ContactRef("p"), "s", "x")
    with pytest.raises(ValueError, match="ExternalMessengerContact"):
        await client.create_conversation("ch", "t", ContactRef("p"))
    await client.close()


# -- provisioning ------------------------------------------------------------------------------


class ChannelServer:
    """Just enough of /externalmessengers to test provisioning."""

    def __init__(self) -> None:
        self.channel: dict[str, Any] | None = None
        self.writes: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        op = request.path.rsplit("/", 1)[-1]
        if op == "getByName":
            assert request.query["expand"] == "metadata"
            if self.channel is None or self.channel["name"] != request.query["name"]:
                return error(404, "not found")
            return web.json_response(self.channel)
        body = await request.json()
        self.writes.append(op)
        if op == "create":
            self.channel = {**body, "id": "ch1", "version": 1, "accountId": "a1"}
        else:
            assert self.channel is not None
            assert (body["id"], body["version"], body["accountId"]) == ("ch1", 1, "a1")
            self.channel = {**self.channel, **body, "version": body["version"] + 1}
        return web.json_response(self.channel)


@pytest.mark.parametrize("version", ["v4", "v3"])
async def test_provisioning_is_idempotent(make_client: MakeClient, version: ApiVersion) -> None:
    server = ChannelServer()
    client = await make_client(server.handle, version=version)
    spec = ChannelSpec(
        name="sms", webhook_endpoint="https://e/unblu/sms", webhook_secret="s", metadata={"k": "v"}
    )
    first = await client.provision_channel(spec)
    second = await client.provision_channel(spec)
    assert server.writes == ["create"]
    assert first == second
    assert first.id == "ch1"

    moved = msgspec.structs.replace(spec, webhook_endpoint="https://e2/unblu/sms")
    assert client.channel_differences(second, moved) == ["webhookEndpoint"]
    third = await client.provision_channel(moved)
    assert server.writes == ["create", "update"]
    assert third.webhook_endpoint == "https://e2/unblu/sms"
    assert third.version == 2
    await client.provision_channel(moved)
    assert server.writes == ["create", "update"]


async def test_unmanaged_fields_are_kept_on_update(make_client: MakeClient) -> None:
    server = ChannelServer()
    server.channel = {
        "$_type": "CustomExternalMessengerChannel",
        "id": "ch1",
        "version": 1,
        "accountId": "a1",
        "name": "sms",
        "type": "CUSTOM",
        "description": "set by an admin",
        "sourceId": "src",
        "webhookEndpoint": "https://old",
        "webhookApiVersion": "V4",
        "supportsMultipleConversationsPerContact": False,
        "metadata": {"admin": "note"},
    }
    client = await make_client(server.handle)
    channel = await client.provision_channel(
        ChannelSpec(name="sms", webhook_endpoint="https://new")
    )
    assert server.writes == ["update"]
    assert channel.description == "set by an admin"
    assert channel.metadata == {"admin": "note"}
    assert channel.source_id == "src"
    assert channel.supports_multiple_conversations_per_contact is False


def test_virtual_person_source_id_is_stable_and_bounded() -> None:
    assert virtual_person_source_id("ch1", "+41790000000") == "extmsg:ch1:+41790000000"
    long = virtual_person_source_id("ch1", "x" * 400)
    assert len(long) <= 250
    assert long == virtual_person_source_id("ch1", "x" * 400)
    assert long != virtual_person_source_id("ch2", "x" * 400)


# -- contacts and files ------------------------------------------------------------------------


async def test_get_contact(make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.path == "/app/rest/v4/externalmessengercontacts/c1/read"
        return web.json_response(
            {"$_type": "ExternalMessengerContact", "id": "c1", "sourceId": "+41", "personId": "p"}
        )

    client = await make_client(handler)
    contact = await client.get_contact("c1")
    assert contact.source_id == "+41"
    assert contact.person_id == "p"
    v3 = await make_client(handler, version="v3")
    with pytest.raises(UnbluError, match="no external messenger contacts"):
        await v3.get_contact("c1")


def file_server(seen: list[str], status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.raw_path)
        assert request.headers["Authorization"].startswith("Basic ")
        if status != 200:
            return error(status, "File is being reviewed")
        return web.Response(body=b"\x89PNG-data", content_type="image/png")

    return handler


async def test_download_from_the_unblu_origin(make_client: MakeClient) -> None:
    seen: list[str] = []
    client = await make_client(file_server(seen))
    origin = client.base_url.split("/app/", 1)[0]
    data, mime = await client.download(f"{origin}/app/rest/v4/files/f1?x=1")
    assert data == b"\x89PNG-data"
    assert mime == "image/png"
    # a link built from Unblu's public host is fetched from the configured origin instead
    await client.download("https://unblu.public.example/app/rest/v4/files/f2")
    await client.download("/app/rest/v4/files/f3")
    assert seen == ["/app/rest/v4/files/f1?x=1", "/app/rest/v4/files/f2", "/app/rest/v4/files/f3"]


async def test_download_never_sends_credentials_elsewhere(make_client: MakeClient) -> None:
    seen: list[str] = []
    client = await make_client(file_server(seen))
    with pytest.raises(UnbluError, match="refusing to send Unblu credentials") as info:
        await client.download("https://evil.example/steal")
    assert not info.value.retryable
    assert seen == []


async def test_download_under_review_is_retryable(make_client: MakeClient) -> None:
    client = await make_client(file_server([], status=403))
    with pytest.raises(UnbluError, match="not available") as info:
        await client.download("/app/rest/v4/files/f1")
    assert info.value.status == 403
    assert info.value.retryable


async def test_download_size_limit(make_client: MakeClient) -> None:
    client = await make_client(file_server([]))
    with pytest.raises(UnbluError, match="larger than 4 bytes") as info:
        await client.download("/app/rest/v4/files/f1", max_bytes=4)
    assert not info.value.retryable


# -- metrics -----------------------------------------------------------------------------------
async def test_every_call_is_counted_by_name_and_outcome_and_a_cancelled_one_not(
    make_client: MakeClient,
) -> None:
    answers = [error(503, "down"), error(403, "no role"), error(404, "gone")]
    hang = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/hang/read"):
            await hang.wait()
        if answers:
            return answers.pop(0)
        return web.json_response(None)

    metrics = Metrics()
    client = await make_client(handler, observer=functools.partial(metrics.observe_call, "unblu"))
    for _ in range(3):
        with pytest.raises(UnbluError):
            await client.get_conversation("c-123")
    await client.message_read("ch-1", "conv-1", "msg-1")
    task = asyncio.create_task(client.get_conversation("hang"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    hang.set()

    def count(call: str, outcome: str) -> float:
        value = metrics.registry.get_sample_value(
            "extmsg_remote_calls_total", {"remote": "unblu", "call": call, "outcome": outcome}
        )
        return value or 0.0

    read = "conversations/read"
    assert [count(read, o) for o in ("retryable", "permanent", "not_found", "ok")] == [1, 1, 1, 0]
    assert count("externalmessengers/messageRead", "ok") == 1  # v4's {channelId} left out
    timed = metrics.registry.get_sample_value(
        "extmsg_remote_call_seconds_count", {"remote": "unblu", "call": read}
    )
    assert timed == 3  # the cancelled call is neither counted nor timed


@pytest.mark.parametrize(
    "value", ["ch-1_A.b~", "a b/c%2F?#é😀", "+41 79", "x" * 300, "conv:1", "a/b", "%"]
)
def test_paths_are_filled_with_each_value_quoted(value: str) -> None:
    one = "/externalmessengers/{channelId}/sendMessage"
    two = "/conversations/{conversationId}/participants/{personId}"
    for _ in range(2):  # once made, once kept
        assert _fill_path(one, {"channelId": value}) == (
            f"/externalmessengers/{quote(value, safe='')}/sendMessage"
        )
        assert _fill_path(two, {"conversationId": value, "personId": "p"}) == (
            f"/conversations/{quote(value, safe='')}/participants/p"
        )
    assert _fill_path(one, {"channelId": "other"}) == "/externalmessengers/other/sendMessage"
    with pytest.raises(ValueError, match="missing path parameter 'channelId'"):
        _fill_path(one, {})
    with pytest.raises(ValueError, match="empty path parameter 'channelId'"):
        _fill_path(one, {"channelId": ""})
    with pytest.raises(ValueError, match="empty path parameter 'personId'"):
        _fill_path(two, {"conversationId": value, "personId": ""})
