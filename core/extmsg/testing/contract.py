"""The contract every messenger plugin keeps, as a test class to subclass.

A plugin's test module subclasses :class:`WebhookContract` (providers that call extmsg over
HTTP) or :class:`MessengerContract` (mail arriving by SMTP or IMAP) and provides a few
fixtures; the inherited tests then check what the core relies on, the same way for every
messenger::

    class TestContract(WebhookContract):
        messenger = "telegram"

        @pytest.fixture
        def plugin(self):
            return extmsg_telegram.plugin

        @pytest.fixture
        def channel(self, channel_factory):
            return channel_factory("telegram", TelegramSettings(bot_token="t"))

        @pytest.fixture
        def signed_request(self, channel):
            return InboundRequest(...)      # a real-shaped, correctly signed message webhook

        @pytest.fixture
        def unsigned_request(self, signed_request):
            return msgspec.structs.replace(signed_request, headers={})
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from ..errors import SignatureError
from ..models import (
    Attachment,
    Channel,
    Contact,
    InboundMessage,
    InboundRequest,
    MessengerType,
    OutboundMessage,
)
from ..plugins import Hooks, build_hooks

__all__ = ["MessengerContract", "WebhookContract"]


class MessengerContract:
    """Inherit and provide the fixtures ``plugin`` (the plugin module or object) and
    ``channel`` (a :class:`~extmsg.models.Channel` of the messenger with valid settings)."""

    #: The messenger type the plugin declares.
    messenger: str = ""
    #: The agent's name is put in front of the text (False when it goes elsewhere, e.g. a
    #: mail's From line).
    prefixes_text: bool = True

    @pytest.fixture
    def hooks(self, plugin: Any) -> Hooks:
        return build_hooks(entry_points=False, extra=[plugin], disabled=())

    @pytest.fixture
    def other_channel(self, channel: Channel) -> Channel:
        return msgspec.structs.replace(channel, name="elsewhere", messenger="some-other-messenger")

    # -- declaration -------------------------------------------------------------------------
    def test_declares_its_messenger_type(self, hooks: Hooks, channel: Channel) -> None:
        mtype = hooks.messenger_types()[self.messenger]
        assert isinstance(mtype, MessengerType)
        assert isinstance(channel.settings, mtype.settings)
        assert mtype.contact_identifier_type in ("PHONE_NUMBER", "EMAIL", "NUMBER", "OTHER")
        for route in mtype.routes:
            if route.kind == "handler":
                assert route.handler is not None, f"route {route.name} has no handler"

    # -- first-result hooks decline other messengers -----------------------------------------
    async def test_leaves_other_messengers_alone(
        self, hooks: Hooks, other_channel: Channel
    ) -> None:
        h: Any = hooks.pm.hook
        message = _outbound()
        contact = Contact(address="someone")
        attachment = Attachment(file_name="a.bin", url="x:1")
        inbound = InboundRequest(method="POST", url="http://x/", path="/", route="inbound")
        for name, kwargs in (
            ("extmsg_send", {"channel": other_channel, "message": message}),
            ("extmsg_find_sent", {"channel": other_channel, "message": message}),
            ("extmsg_render_outbound", {"channel": other_channel, "message": message}),
            ("extmsg_mark_read", {"channel": other_channel, "provider_message_id": "p"}),
            ("extmsg_fetch_attachment", {"channel": other_channel, "attachment": attachment}),
            ("extmsg_validate_contact", {"channel": other_channel, "identifier": "x"}),
            ("extmsg_map_contact", {"channel": other_channel, "contact": contact}),
            (
                "extmsg_verify_inbound",
                {"messenger": "some-other-messenger", "request": inbound, "channels": []},
            ),
            (
                "extmsg_parse_inbound",
                {"messenger": "some-other-messenger", "request": inbound, "channels": []},
            ),
        ):
            caller = getattr(h, name)
            for impl in caller.get_hookimpls():
                if impl.plugin_name.startswith("extmsg.defaults."):
                    continue
                result = impl.function(*(kwargs[arg] for arg in impl.argnames))
                assert result is None, f"{impl.plugin_name}.{name} answered for another messenger"

    # -- outbound ------------------------------------------------------------------------------
    async def test_renders_the_agent_message_with_the_channel_prefix(
        self, hooks: Hooks, channel: Channel
    ) -> None:
        parts = await hooks.render_outbound(channel, _outbound(sender_name="Anna Agent"))
        assert parts, "rendering must produce at least one message"
        assert all(p.id == "m-contract" for p in parts), "parts keep the message's id"
        text = "".join(p.text or "" for p in parts)
        if self.prefixes_text:
            assert text.startswith("Anna Agent: ")
        assert "Hello from the contract" in text

    async def test_validates_contact_identifiers(self, hooks: Hooks, channel: Channel) -> None:
        check = await hooks.validate_contact(channel, "   ")
        assert not check.valid
        assert check.error


class WebhookContract(MessengerContract):
    """For providers that call extmsg over HTTP. Also provide ``signed_request`` (a real-shaped,
    correctly signed webhook carrying a contact's message) and ``unsigned_request`` (the same
    without its signature)."""

    def test_has_an_events_route(self, hooks: Hooks) -> None:
        routes = hooks.messenger_types()[self.messenger].routes
        assert any(route.kind == "events" for route in routes)

    # -- inbound -------------------------------------------------------------------------------
    async def test_refuses_an_unsigned_request(
        self, hooks: Hooks, channel: Channel, unsigned_request: InboundRequest
    ) -> None:
        with pytest.raises(SignatureError):
            await hooks.verify_inbound(self.messenger, unsigned_request, [channel])

    async def test_a_signed_message_verifies_and_parses_to_stable_events(
        self, hooks: Hooks, channel: Channel, signed_request: InboundRequest
    ) -> None:
        signed = signed_request
        assert await hooks.verify_inbound(self.messenger, signed, [channel]) is True
        events = await hooks.parse_inbound(self.messenger, signed, [channel])
        assert events is not None
        messages = [e for e in events if isinstance(e, InboundMessage)]
        assert messages, "the signed request should carry a contact's message"
        for message in messages:
            assert message.provider_message_id
            assert message.contact.address
        # A provider's retry of the same request must parse to the same ids (dedup key).
        again = await hooks.parse_inbound(self.messenger, signed, [channel])
        assert again is not None
        assert [e.provider_message_id for e in again if isinstance(e, InboundMessage)] == [
            m.provider_message_id for m in messages
        ]
        reply = await hooks.render_ack(self.messenger, signed, events)
        assert 200 <= reply.status < 300


def _outbound(**kw: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "id": "m-contract",
        "unblu_message_id": "u-contract",
        "conversation_id": "c-contract",
        "contact": Contact(address="+41790000000"),
        "text": "Hello from the contract",
        "last_inbound_at": time.time(),  # the contact just wrote: reply windows are open
    }
    fields.update(kw)
    return OutboundMessage(**fields)
