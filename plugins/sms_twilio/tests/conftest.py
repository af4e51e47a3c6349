"""Fixtures for the Twilio plugin's tests: hooks, the fake on a real port, a closed port, and
the Unblu sandbox and Twilio fake that ``extmsg serve`` processes run between (crash_harness)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from crash_harness import running_sandbox, running_twilio
from twilio_testkit import ACCOUNT_SID, AUTH_TOKEN

from extmsg.plugins import Hooks, build_hooks
from extmsg_sms_twilio import plugin
from extmsg_sms_twilio.fake import TWILIO_FAKE, FakeTwilio, create_twilio_fake


@pytest.fixture
def hooks() -> Hooks:
    return build_hooks(entry_points=False, extra=[plugin], disabled=())


@pytest.fixture(autouse=True)
async def _close_plugin_session() -> AsyncIterator[None]:
    yield
    await plugin.sessions.close()


@pytest.fixture
async def twilio_fake() -> AsyncIterator[tuple[TestServer, FakeTwilio]]:
    """The fake Twilio API on a real port."""
    app = create_twilio_fake(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, callback_delay=0)
    server = TestServer(app)
    await server.start_server()
    try:
        yield server, app[TWILIO_FAKE]
    finally:
        await server.close()


@pytest.fixture
def closed_port_url() -> str:
    """A URL nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def sandbox() -> AsyncIterator[Any]:
    """The Unblu sandbox for a served extmsg, retrying its deliveries until they arrive."""
    async with running_sandbox(delivery_retries=10_000) as server:
        yield server


@pytest.fixture
async def twilio() -> AsyncIterator[tuple[str, FakeTwilio]]:
    """The Twilio fake for a served extmsg: its URL and the fake."""
    async with running_twilio() as fake:
        yield fake
