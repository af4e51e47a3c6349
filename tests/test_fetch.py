"""The guarded fetch for URLs from outside (extmsg.fetch): where credentials go, redirects,
addresses, size and time limits, and how its failures are classified."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from extmsg import fetch as fetch_module
from extmsg.config import parse_config
from extmsg.errors import ConfigError, FetchRefused, FetchTooLarge, RetryableError
from extmsg.fetch import LOOPBACK, fetch, mask_url

from . import loopback_plugin

AUTH = {"Authorization": "Basic c2VjcmV0OnRva2Vu"}


@dataclass
class Host:
    """One HTTP server on loopback that records what it was sent."""

    server: TestServer
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    streamed: list[int] = field(default_factory=list)

    @property
    def port(self) -> int:
        port = self.server.port
        assert port is not None
        return port

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    @property
    def origin(self) -> str:
        return self.url("")

    def auths(self) -> list[str | None]:
        return [auth for _, auth in self.seen]


def _app(host: list[Host]) -> web.Application:
    async def record(request: web.Request) -> None:
        host[0].seen.append((request.path_qs, request.headers.get("Authorization")))

    async def echo(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(body=b"file-bytes", content_type="image/png")

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound(request.query["to"])

    async def loop(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound("/loop")

    async def endless(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"\0" * 65536
        sent = 0
        try:
            while sent < 512 * 1024 * 1024:
                await response.write(chunk)
                sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            host[0].streamed.append(sent)
        return response

    async def announced(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(body=b"\0" * 4096, content_type="video/mp4")

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        await asyncio.sleep(10)
        return web.Response(text="late")

    async def missing(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=404, body=b"x" * 200_000)

    app = web.Application()
    app.router.add_get("/echo", echo)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/loop", loop)
    app.router.add_get("/endless", endless)
    app.router.add_get("/announced", announced)
    app.router.add_get("/slow", slow)
    app.router.add_get("/missing", missing)
    return app


@contextlib.asynccontextmanager
async def _host() -> AsyncIterator[Host]:
    holder: list[Host] = []
    server = TestServer(_app(holder), host="127.0.0.1")
    await server.start_server()
    holder.append(Host(server))
    try:
        yield holder[0]
    finally:
        await server.close()


@pytest.fixture
async def api() -> AsyncIterator[Host]:
    """Stands for the provider's API: its origin is the one that gets the credentials."""
    async with _host() as host:
        yield host


@pytest.fixture
async def evil() -> AsyncIterator[Host]:
    """Another port on the same machine: a URL an attacker chose."""
    async with _host() as host:
        yield host


async def _get(url: str, api: Host, **kw: Any) -> fetch_module.Fetched:
    options: dict[str, Any] = {
        "max_bytes": 1024 * 1024,
        "time_limit": 10.0,
        "credentials": AUTH,
        "credential_origins": [api.origin],
        "allowed_networks": LOOPBACK,
    }
    options.update(kw)
    return await fetch(url, **options)


# --- credentials --------------------------------------------------------------------------------
async def test_credentials_go_to_the_configured_origin(api: Host) -> None:
    fetched = await _get(api.url("/echo"), api)
    assert (fetched.status, fetched.data, fetched.content_type) == (200, b"file-bytes", "image/png")
    assert api.auths() == [AUTH["Authorization"]]


async def test_no_credentials_for_another_port_of_the_same_host(api: Host, evil: Host) -> None:
    fetched = await _get(evil.url("/echo"), api)
    assert fetched.data == b"file-bytes"
    assert evil.auths() == [None]
    assert api.seen == []


async def test_no_credentials_when_only_the_scheme_differs(api: Host) -> None:
    """The API is configured as https; the same host and port over http gets nothing."""
    await _get(api.url("/echo"), api, credential_origins=[f"https://127.0.0.1:{api.port}"])
    assert api.auths() == [None]


async def test_no_credentials_for_another_name_of_the_same_server(api: Host) -> None:
    await _get(api.url("/echo", host="localhost"), api)
    assert api.auths() == [None]


async def test_redirect_to_another_origin_drops_the_credentials_for_good(
    api: Host, evil: Host
) -> None:
    """api → evil → back to api: only the first request carries them."""
    back = api.url("/echo")
    via_evil = evil.url(f"/redirect?to={back}")
    fetched = await _get(api.url(f"/redirect?to={via_evil}"), api)
    assert fetched.data == b"file-bytes"
    assert str(fetched.url) == back
    assert api.auths() == [AUTH["Authorization"], None]
    assert evil.auths() == [None]


async def test_same_origin_redirect_keeps_the_credentials(api: Host) -> None:
    await _get(api.url("/redirect?to=/echo"), api)
    assert api.auths() == [AUTH["Authorization"]] * 2


async def test_at_most_three_redirects(api: Host) -> None:
    with pytest.raises(FetchRefused, match="more than 3 redirect") as info:
        await _get(api.url("/loop"), api)
    assert not info.value.retryable
    assert len(api.seen) == 4  # the request and three redirects, no more


# --- addresses ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("[::1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("localhost", "loopback"),  # a name: refused on what it resolves to
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),  # noqa: S104
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "not a public address"),
        ("2130706433", "not a canonical IP address"),
    ],
)
async def test_non_public_addresses_are_refused(host: str, reason: str, evil: Host) -> None:
    url = f"http://{host}:{evil.port}/echo"
    with pytest.raises(FetchRefused, match=reason) as info:
        await fetch(url, max_bytes=1024, time_limit=5.0)
    assert not info.value.retryable
    assert "fetch_allowed_networks" in info.value.message or "canonical" in info.value.message
    assert evil.seen == []


async def test_allowed_networks_let_a_private_address_through(evil: Host) -> None:
    with pytest.raises(FetchRefused):
        await fetch(
            evil.url("/echo"), max_bytes=1024, time_limit=5.0, allowed_networks=["10.0.0.0/8"]
        )
    fetched = await fetch(
        evil.url("/echo"), max_bytes=1024, time_limit=5.0, allowed_networks=["127.0.0.1"]
    )
    assert fetched.data == b"file-bytes"


async def test_configured_origins_are_not_address_checked_but_their_redirects_are(
    api: Host, evil: Host
) -> None:
    """An API base URL may be on the internal network; where it redirects to is still checked."""
    fetched = await _get(api.url("/echo"), api, allowed_networks=())
    assert fetched.data == b"file-bytes"
    with pytest.raises(FetchRefused, match=r"localhost resolves to .*loopback"):
        await _get(
            api.url(f"/redirect?to={evil.url('/echo', host='localhost')}"), api, allowed_networks=()
        )
    assert evil.seen == []


class _Answers(AbstractResolver):
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(
                hostname=host, host=address, port=port, family=socket.AF_INET, proto=0, flags=0
            )
            for address in self.answers[host]
        ]

    async def close(self) -> None:
        pass


async def test_every_resolved_address_is_checked(
    monkeypatch: pytest.MonkeyPatch, evil: Host
) -> None:
    """A name with one public and one private address is refused as a whole."""
    answers = _Answers({"files.example.com": ["93.184.215.14", "127.0.0.1"]})
    monkeypatch.setattr(fetch_module, "DefaultResolver", lambda: answers)
    with pytest.raises(FetchRefused, match=r"resolves to 127\.0\.0\.1, a loopback address"):
        await fetch(f"http://files.example.com:{evil.port}/echo", max_bytes=1024, time_limit=5.0)
    assert evil.seen == []


async def test_the_connection_goes_to_the_checked_address(
    monkeypatch: pytest.MonkeyPatch, evil: Host
) -> None:
    """Resolved once, checked, connected to: nothing resolves the name a second time, so a
    rebinding DNS answer cannot slip another address in after the check."""
    answers = _Answers({"files.example.com": ["127.0.0.1"]})
    monkeypatch.setattr(fetch_module, "DefaultResolver", lambda: answers)
    fetched = await fetch(
        f"http://files.example.com:{evil.port}/echo",
        max_bytes=1024,
        time_limit=5.0,
        allowed_networks=LOOPBACK,
    )
    assert fetched.data == b"file-bytes"
    assert answers.asked == ["files.example.com"]


async def test_only_http_and_https(api: Host) -> None:
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/x"):
        with pytest.raises(FetchRefused, match="only http and https"):
            await _get(url, api)


async def test_a_redirect_to_another_scheme_is_refused(api: Host) -> None:
    with pytest.raises(FetchRefused, match="only http and https"):
        await _get(api.url("/redirect?to=file:///etc/passwd"), api)


# --- limits ---------------------------------------------------------------------------------------
async def test_an_endless_body_stops_at_the_limit(api: Host) -> None:
    started = time.monotonic()
    with pytest.raises(FetchTooLarge) as info:
        await _get(api.url("/endless"), api, max_bytes=256 * 1024)
    assert not info.value.retryable
    assert info.value.limit == 256 * 1024
    assert 256 * 1024 < info.value.size <= 256 * 1024 + 65536
    for _ in range(100):
        if api.streamed:
            break
        await asyncio.sleep(0.05)
    # the server notices the closed connection long before its 512 MiB
    assert api.streamed
    assert api.streamed[0] < 64 * 1024 * 1024
    assert time.monotonic() - started < 5


async def test_an_announced_size_over_the_limit_is_refused_before_reading(api: Host) -> None:
    with pytest.raises(FetchTooLarge) as info:
        await _get(api.url("/announced"), api, max_bytes=1024)
    assert info.value.size == 4096


async def test_the_time_limit_covers_the_whole_fetch_and_is_retryable(api: Host) -> None:
    started = time.monotonic()
    with pytest.raises(RetryableError, match=r"took longer than 0\.3 s"):
        await _get(api.url("/redirect?to=/slow"), api, time_limit=0.3)
    assert time.monotonic() - started < 3


async def test_an_unreachable_host_is_retryable(api: Host) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RetryableError, match="Could not fetch"):
        await _get(f"http://127.0.0.1:{port}/x", api)


async def test_an_error_answer_is_returned_with_a_bounded_body(api: Host) -> None:
    fetched = await _get(api.url("/missing"), api)
    assert fetched.status == 404
    assert not fetched.ok
    assert len(fetched.data) == 64 * 1024


# --- messages and configuration -----------------------------------------------------------------
def test_messages_show_urls_without_secrets() -> None:
    shown = mask_url("https://user:pw@cdn.example.com/a/b.png?X-Amz-Signature=SECRET#frag")
    assert shown == "https://cdn.example.com/a/b.png?…"
    assert len(mask_url("https://cdn.example.com/" + "a" * 500)) <= 121


async def test_a_refusal_names_the_url_without_its_query() -> None:
    with pytest.raises(FetchRefused) as info:
        await fetch("http://u:pw@127.0.0.1:9/x?token=SECRET", max_bytes=1, time_limit=1.0)
    assert "http://127.0.0.1:9/x?…" in info.value.message
    assert "SECRET" not in str(info.value)
    assert "pw" not in str(info.value)


def test_config_passes_allowed_networks_to_every_channel() -> None:
    raw: dict[str, Any] = {
        "server": {"fetch_allowed_networks": ["10.20.0.0/16", "192.0.2.7"]},
        "channels": [
            {
                "name": "a",
                "messenger": "loopback",
                "webhook_secret": "s",
                "settings": {"token": "t"},
            }
        ],
    }
    config = parse_config(raw, {"loopback": loopback_plugin.extmsg_messenger_types()})
    [channel] = config.runtime_channels()
    assert channel.fetch_allowed_networks == ("10.20.0.0/16", "192.0.2.7")
    raw["server"] = {"fetch_allowed_networks": ["10.20.0.0/16", "intranet"]}
    with pytest.raises(ConfigError, match="fetch_allowed_networks: 'intranet' is not an IP"):
        parse_config(raw, {"loopback": loopback_plugin.extmsg_messenger_types()})


def test_nothing_is_allowed_by_default() -> None:
    config = parse_config({}, {})
    assert config.server.fetch_allowed_networks == []
