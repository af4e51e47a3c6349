"""Fixtures of the WhatsApp plugin's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from whatsapp_testkit import ACCESS_TOKEN, APP_SECRET, default_channels, make_channel

from extmsg.config import Config
from extmsg.models import Channel
from extmsg.plugins import Hooks, build_hooks
from extmsg_whatsapp import plugin
from extmsg_whatsapp.fake import FAKE, GraphFake, create_graph_fake


@pytest.fixture
def hooks() -> Hooks:
    """The plugin loaded exactly as the core loads it (with the core's defaults)."""
    return build_hooks(entry_points=False, extra=[plugin], disabled=())


@pytest.fixture
def channels() -> list[Channel]:
    return default_channels()


@pytest.fixture
async def started(hooks: Hooks) -> AsyncIterator[Hooks]:
    """The plugin between ``extmsg_startup`` and ``extmsg_shutdown`` (its HTTP session open)."""
    app, config = web.Application(), Config()
    await hooks.startup(app, config)
    yield hooks
    await hooks.shutdown(app, config)


@pytest.fixture
async def graph_server(
    aiohttp_server: Callable[..., Any],
) -> TestServer:
    """The Graph API fake on a real port."""
    app = create_graph_fake(access_token=ACCESS_TOKEN, app_secret=APP_SECRET)
    server: TestServer = await aiohttp_server(app)
    return server


@pytest.fixture
def fake(graph_server: TestServer) -> GraphFake:
    return graph_server.app[FAKE]


@pytest.fixture
def graph_channel(graph_server: TestServer) -> Callable[..., Channel]:
    """Builds a channel whose Graph API is the fake."""
    base = str(graph_server.make_url("/")).rstrip("/")

    def build(**settings: Any) -> Channel:
        settings.setdefault("api_base_url", base)
        return make_channel(
            settings.pop("name", "wa-main"),
            settings.pop("phone_number_id", "106540352242922"),
            **settings,
        )

    return build
