"""The messenger contract every plugin keeps (extmsg.testing.contract), for Twilio."""

from __future__ import annotations

from types import ModuleType

import msgspec
import pytest
from twilio_testkit import build_request, load_cases, make_channel

from extmsg.models import Channel, InboundRequest
from extmsg.testing.contract import WebhookContract
from extmsg_sms_twilio import plugin as twilio_plugin


class TestTwilioContract(WebhookContract):
    messenger = "sms_twilio"
    quick_timeout = {"timeout": 0.5}

    @pytest.fixture
    def plugin(self) -> ModuleType:
        return twilio_plugin

    @pytest.fixture
    def channel(self) -> Channel:
        return make_channel()

    @pytest.fixture
    def signed_request(self) -> InboundRequest:
        [case] = [c for c in load_cases("inbound") if c["name"] == "sms_plain"]
        return build_request(case)

    @pytest.fixture
    def unsigned_request(self, signed_request: InboundRequest) -> InboundRequest:
        headers = {k: v for k, v in signed_request.headers.items() if k != "x-twilio-signature"}
        return msgspec.structs.replace(signed_request, headers=headers)
