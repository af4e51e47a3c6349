"""Where the access token goes when a contact's file is downloaded: Graph names the download URL,
and only the channel's configured origins (the API's and ``media_base_urls``) get the token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from whatsapp_testkit import ACCESS_TOKEN, make_channel

from extmsg import errors
from extmsg.fetch import LOOPBACK
from extmsg.models import Attachment
from extmsg.plugins import Hooks

PNG = b"\x89PNG\r\n\x1a\n-contact-file"
MEDIA_ID = "1234567890123456"
TOKEN = f"Bearer {ACCESS_TOKEN}"


@dataclass
class Site:
    server: TestServer
    auth: list[str | None] = field(default_factory=list)

    def url(self, path: str = "", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server.port}{path}"


@dataclass
class Meta:
    graph: Site
    lookaside: Site
    cdn: Site
    download_url: str = ""
    announce_size: bool = True


@pytest.fixture
async def meta() -> AsyncIterator[Meta]:
    """Graph (media info), a lookaside host (needs the token, may redirect) and a CDN host,
    each on its own port of 127.0.0.1."""
    sites: list[Site] = []
    holder: list[Meta] = []

    async def info(request: web.Request) -> web.Response:
        sites[0].auth.append(request.headers.get("Authorization"))
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "url": holder[0].download_url,
                "mime_type": "image/png",
                **({"file_size": len(PNG)} if holder[0].announce_size else {}),
                "id": MEDIA_ID,
            }
        )

    async def lookaside(request: web.Request) -> web.Response:
        sites[1].auth.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != TOKEN:
            return web.Response(status=404)
        if "to" in request.query:
            raise web.HTTPFound(request.query["to"])
        return web.Response(body=PNG, content_type="image/png")

    async def cdn(request: web.Request) -> web.Response:
        sites[2].auth.append(request.headers.get("Authorization"))
        return web.Response(body=PNG, content_type="image/png")

    routes = [
        ("/v25.0/{media_id}", info),
        ("/whatsapp_business/attachments/", lookaside),
        ("/file", cdn),
    ]
    for path, handler in routes:
        app = web.Application()
        app.router.add_get(path, handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        sites.append(Site(server))
    holder.append(Meta(*sites))
    try:
        yield holder[0]
    finally:
        for site in sites:
            await site.server.close()


def _channel(meta: Meta, *, allowed: tuple[str, ...] = ()) -> object:
    return make_channel(
        "wa-main",
        "106540352242922",
        api_base_url=meta.graph.url(),
        media_base_urls=[meta.lookaside.url()],
        fetch_allowed_networks=allowed,
    )


async def _fetch(started: Hooks, meta: Meta, **kw: tuple[str, ...]) -> Attachment:
    incoming = Attachment(file_name="a.png", url=f"whatsapp-media:{MEDIA_ID}")
    return await started.fetch_attachment(_channel(meta, **kw), incoming)  # type: ignore[arg-type]


async def test_the_token_goes_to_a_configured_media_origin(started: Hooks, meta: Meta) -> None:
    meta.download_url = meta.lookaside.url("/whatsapp_business/attachments/?mid=1")
    fetched = await _fetch(started, meta)
    assert fetched.data == PNG
    assert meta.graph.auth == [TOKEN]
    assert meta.lookaside.auth == [TOKEN]


@pytest.mark.parametrize(
    "where",
    [
        "cdn",  # a host that is not one of media_base_urls
        "localhost",  # the media host's port under another name: another origin
    ],
)
async def test_a_download_url_elsewhere_is_refused(started: Hooks, meta: Meta, where: str) -> None:
    meta.download_url = (
        meta.cdn.url("/file")
        if where == "cdn"
        else meta.lookaside.url("/whatsapp_business/attachments/?mid=1", host="localhost")
    )
    with pytest.raises(errors.FetchRefused, match="not one of the channel's media_base_urls"):
        await _fetch(started, meta, allowed=LOOPBACK)
    assert meta.cdn.auth == []
    assert meta.lookaside.auth == []


async def test_a_redirect_away_from_the_media_host_drops_the_token(
    started: Hooks, meta: Meta
) -> None:
    cdn = meta.cdn.url("/file?sig=abc")
    meta.download_url = meta.lookaside.url(f"/whatsapp_business/attachments/?mid=1&to={cdn}")
    fetched = await _fetch(started, meta, allowed=LOOPBACK)
    assert fetched.data == PNG
    assert meta.lookaside.auth == [TOKEN]
    assert meta.cdn.auth == [None]


async def test_a_redirect_to_a_private_address_is_refused(started: Hooks, meta: Meta) -> None:
    """The configured hosts may be internal; where they redirect to must be public."""
    cdn = meta.cdn.url("/file?sig=abc")
    meta.download_url = meta.lookaside.url(f"/whatsapp_business/attachments/?mid=1&to={cdn}")
    with pytest.raises(errors.FetchRefused, match="loopback address") as info:
        await _fetch(started, meta)
    assert "sig=abc" not in str(info.value)
    assert meta.cdn.auth == []


async def test_an_oversized_download_stops_at_the_limit(started: Hooks, meta: Meta) -> None:
    """Graph does not always announce the size: the download itself is bounded."""
    meta.announce_size = False
    meta.download_url = meta.lookaside.url("/whatsapp_business/attachments/?mid=1")
    incoming = Attachment(file_name="a.png", url=f"whatsapp-media:{MEDIA_ID}")
    channel = make_channel(
        "wa-main",
        "106540352242922",
        api_base_url=meta.graph.url(),
        media_base_urls=[meta.lookaside.url()],
        media_max_bytes=len(PNG) + 1,
    )
    assert (await started.fetch_attachment(channel, incoming)).data == PNG
    small = make_channel(
        "wa-main",
        "106540352242922",
        api_base_url=meta.graph.url(),
        media_base_urls=[meta.lookaside.url()],
        media_max_bytes=4,
    )
    with pytest.raises(errors.PermanentError, match="too large"):
        await started.fetch_attachment(small, incoming)
