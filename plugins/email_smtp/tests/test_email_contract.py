"""The messenger contract every plugin keeps (extmsg.testing.contract), for email."""

from __future__ import annotations

from types import ModuleType

import pytest
from email_testkit import channel as email_channel

from extmsg.models import Channel
from extmsg.testing.contract import MessengerContract
from extmsg_email_smtp import plugin as email_plugin


class TestEmailContract(MessengerContract):
    messenger = "email_smtp"
    contacts = ("kim@example.org", "lee@example.org")
    quick_timeout = {"smtp_timeout": 0.5}
    honours_retry_after = False  # SMTP has no Retry-After
    prefixes_text = False  # the agent's name goes in the From line

    @pytest.fixture
    def plugin(self) -> ModuleType:
        return email_plugin

    @pytest.fixture
    def channel(self) -> Channel:
        return email_channel()
