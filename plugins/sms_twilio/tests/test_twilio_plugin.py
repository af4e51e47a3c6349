"""The plugin as the core loads it: declarations, declining other messengers, settings."""

from __future__ import annotations

from importlib import metadata

import pytest
from twilio_testkit import ACCOUNT_SID, make_channel

from extmsg.config import parse_config
from extmsg.errors import ConfigError, PluginError
from extmsg.models import Channel, Contact, InboundRequest, OutboundMessage
from extmsg.plugins import Hooks, build_hooks
from extmsg_sms_twilio import plugin
from extmsg_sms_twilio.fake import create_twilio_fake
from extmsg_sms_twilio.settings import TwilioSettings


def test_messenger_type_and_routes(hooks: Hooks) -> None:
    mtype = hooks.messenger_types()["sms_twilio"]
    assert mtype.settings is TwilioSettings
    assert mtype.contact_identifier_type == "PHONE_NUMBER"
    assert [(r.name, r.path, r.kind, r.scope) for r in mtype.routes] == [
        ("inbound", "inbound", "events", "channel"),
        ("status", "status", "events", "channel"),
    ]
    assert mtype.max_text_length == 1600


def test_provider_fake_declared(hooks: Hooks) -> None:
    [fake] = hooks.provider_fakes()
    assert (fake.messenger, fake.name) == ("sms_twilio", "twilio")
    assert fake.factory is create_twilio_fake


def test_loads_through_entry_point() -> None:
    others = {ep.name for ep in metadata.entry_points(group="extmsg.plugins")} - {"sms_twilio"}
    hooks = build_hooks(entry_points=True, disabled=others)
    assert "sms_twilio" in hooks.messenger_types()


async def test_other_messengers_are_declined(hooks: Hooks) -> None:
    other = Channel(
        name="wa", messenger="whatsapp", settings=None, public_url="https://x", webhook_secret="s"
    )
    request = InboundRequest(method="POST", url="https://x/", path="/", route="inbound")
    message = OutboundMessage(
        id="1",
        unblu_message_id="u",
        conversation_id="c",
        contact=Contact(address="+14155550123"),
        text="hi",
        sender_name="Anna",
    )
    assert await hooks.verify_inbound("whatsapp", request, [other]) is None
    assert await hooks.parse_inbound("whatsapp", request, [other]) is None
    assert (await hooks.render_ack("whatsapp", request, [])).content_type == "text/plain"
    # the core's defaults answer where the plugin declines
    assert [m.text for m in await hooks.render_outbound(other, message)] == ["Anna: hi"]
    assert (await hooks.validate_contact(other, "anything")).address == "anything"
    assert await hooks.mark_read(other, "x") is False
    with pytest.raises(PluginError):
        await hooks.send(other, message)


async def test_mark_read_is_unsupported(hooks: Hooks) -> None:
    assert await hooks.mark_read(make_channel(), "SM1") is False


def _config(settings: dict[str, object]) -> dict[str, object]:
    return {
        "channels": [
            {"name": "sms", "messenger": "sms_twilio", "webhook_secret": "w", "settings": settings}
        ]
    }


def test_settings_validate_in_config(hooks: Hooks) -> None:
    ok = parse_config(
        _config({"account_sid": ACCOUNT_SID, "auth_token": "t", "from_number": "+15005550006"}),
        hooks.messenger_types(),
    )
    settings = ok.channel_settings["sms"]
    assert settings.max_segments == 20
    assert settings.status_callback is True
    with pytest.raises(ConfigError) as info:
        parse_config(
            _config({"account_sid": "nope", "auth_token": "t", "from_nmuber": "+1"}),
            hooks.messenger_types(),
        )
    text = str(info.value)
    assert "channels[0].settings.account_sid" in text
    assert "from_number" in text  # the typo is pointed out
    with pytest.raises(ConfigError, match="exactly one of from_number and messaging_service_sid"):
        parse_config(
            _config({"account_sid": ACCOUNT_SID, "auth_token": "t"}), hooks.messenger_types()
        )


async def test_session_lifecycle() -> None:
    first = plugin.sessions.get()
    assert plugin.sessions.get() is first
    await plugin.sessions.close()
    assert first.closed
    assert plugin.sessions.get() is not first
