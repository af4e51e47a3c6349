"""The messenger contract every plugin keeps (extmsg.testing.contract), for WhatsApp."""

from __future__ import annotations

from types import ModuleType

import msgspec
import pytest
from whatsapp_testkit import MAIN_NUMBER_ID, build_request, load_cases, make_channel

from extmsg.models import Channel, InboundRequest
from extmsg.testing.contract import WebhookContract
from extmsg_whatsapp import plugin as whatsapp_plugin


class TestWhatsAppContract(WebhookContract):
    messenger = "whatsapp"
    quick_timeout = {"timeout": 0.5}

    @pytest.fixture
    def plugin(self) -> ModuleType:
        return whatsapp_plugin

    @pytest.fixture
    def channel(self) -> Channel:
        return make_channel("wa-main", MAIN_NUMBER_ID)

    @pytest.fixture
    def signed_request(self) -> InboundRequest:
        [case] = [c for c in load_cases("inbound_messages.json") if c["name"] == "text"]
        return build_request(case)

    @pytest.fixture
    def unsigned_request(self, signed_request: InboundRequest) -> InboundRequest:
        headers = {k: v for k, v in signed_request.headers.items() if k != "x-hub-signature-256"}
        return msgspec.structs.replace(signed_request, headers=headers)
