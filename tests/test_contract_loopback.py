"""The messenger contract (extmsg.testing.contract), kept by the core's loopback test plugin."""

from __future__ import annotations

import json
from types import ModuleType

import msgspec
import pytest

from extmsg.models import Channel, InboundRequest
from extmsg.testing.contract import WebhookContract

from . import loopback_plugin
from .conftest import make_channel


class TestLoopbackContract(WebhookContract):
    messenger = "loopback"

    @pytest.fixture
    def plugin(self) -> ModuleType:
        return loopback_plugin

    @pytest.fixture
    def channel(self) -> Channel:
        return make_channel(
            "loop", "loopback", settings=loopback_plugin.LoopbackSettings(token="t")
        )

    @pytest.fixture
    def signed_request(self) -> InboundRequest:
        body = json.dumps({"messages": [{"id": "p1", "from": "+41790000001", "text": "hi"}]})
        raw = body.encode()
        return InboundRequest(
            method="POST",
            url="https://connector.example.com/channels/loop/inbound",
            path="/channels/loop/inbound",
            route="inbound",
            headers={"x-loopback-signature": loopback_plugin.sign("t", raw)},
            body=raw,
        )

    @pytest.fixture
    def unsigned_request(self, signed_request: InboundRequest) -> InboundRequest:
        return msgspec.structs.replace(signed_request, headers={})
