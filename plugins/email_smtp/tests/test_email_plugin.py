"""The plugin through the hook facade: registration, contacts, lifecycle, the sandbox fake."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import aiosmtplib
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from email_testkit import SECRET, FakeRuntime, channel, load_case

from extmsg.models import Channel, Contact, OutboundMessage
from extmsg.plugins import Hooks
from extmsg.runtime import RUNTIME
from extmsg.testing.helpers import free_port
from extmsg_email_smtp import plugin
from extmsg_email_smtp.settings import EmailSettings


class _Runtime(FakeRuntime):
    """The part of the core's runtime the plugin's start-up uses."""

    def __init__(self, channels: list[Channel]) -> None:
        super().__init__()
        self._channels = channels

    def channels_of(self, messenger: str) -> list[Channel]:
        return [ch for ch in self._channels if ch.messenger == messenger]


def _app(runtime: _Runtime) -> web.Application:
    app = web.Application()
    app[RUNTIME] = runtime  # type: ignore[assignment]
    return app


def test_messenger_type(hooks: Hooks) -> None:
    mt = hooks.messenger_types()["email_smtp"]
    assert mt.settings is EmailSettings
    assert mt.contact_identifier_type == "EMAIL"
    assert mt.routes == ()


def test_settings_validation() -> None:
    base = {"address": "support@acme.example", "smtp_host": "smtp.acme.example"}
    settings = msgspec.convert(base, EmailSettings)
    assert settings.domain == "acme.example"
    assert settings.inbound == ["smtp"]
    with pytest.raises(msgspec.ValidationError, match="imap_host"):
        msgspec.convert({**base, "inbound": ["imap"]}, EmailSettings)
    with pytest.raises(msgspec.ValidationError, match="smtp_password"):
        msgspec.convert({**base, "smtp_username": "u"}, EmailSettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({**base, "address": "not-an-address"}, EmailSettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({**base, "typo_field": 1}, EmailSettings)


@pytest.mark.parametrize(
    ("typed", "valid", "address", "name"),
    [
        ("Jane.Doe@Example.COM", True, "jane.doe@example.com", None),
        ("  Jane Doe <jane.doe@example.com> ", True, "jane.doe@example.com", "Jane Doe"),
        ("jane.doe@", False, "", None),
        ("not an address", False, "", None),
        ("jane@@example.com", False, "", None),
        ("jane..doe@example.com", False, "", None),
    ],
)
async def test_validate_contact(
    hooks: Hooks, typed: str, valid: bool, address: str, name: str | None
) -> None:
    check = await hooks.validate_contact(channel(), typed)
    assert check.valid is valid
    assert check.address == address
    assert check.name == name
    if not valid:
        assert check.error


async def test_mark_read_and_other_messengers(hooks: Hooks) -> None:
    assert await hooks.mark_read(channel(), "<x@example.org>") is False
    other = Channel(
        name="sms", messenger="sms_other", settings=None, public_url="http://x", webhook_secret="s"
    )
    message = OutboundMessage(
        id="1", unblu_message_id="u", conversation_id="c", contact=Contact(address="+4179"),
        text="hi", sender_name="Anna",
    )  # fmt: skip
    # Not ours: the core's default renderer (with the prefix) answers, not the email one.
    [rendered] = await hooks.render_outbound(other, message)
    assert rendered.text == "Anna: hi"
    assert (await hooks.validate_contact(other, "x y")).address == "x y"  # the core's default


async def test_startup_listens_and_shutdown_stops(hooks: Hooks) -> None:
    ch = channel("support", listen_port=free_port())
    runtime = _Runtime([ch, Channel(name="o", messenger="x", settings=None, public_url="",
                                    webhook_secret="")])  # fmt: skip
    app = _app(runtime)
    await hooks.startup(app, None)  # type: ignore[arg-type]
    raw, _ = load_case("gmail_reply")
    port = ch.settings.listen_port
    await aiosmtplib.send(
        raw, sender="jane.doe@gmail.com", recipients=["support@acme.example"],
        hostname="127.0.0.1", port=port, timeout=5,
    )  # fmt: skip
    assert [m.contact.address for m in runtime.messages()] == ["jane.doe@gmail.com"]
    await hooks.shutdown(app, None)  # type: ignore[arg-type]
    with pytest.raises(aiosmtplib.SMTPConnectError):
        await aiosmtplib.send(
            raw, sender="jane.doe@gmail.com", recipients=["support@acme.example"],
            hostname="127.0.0.1", port=port, timeout=5,
        )  # fmt: skip


async def test_startup_fails_when_the_port_is_taken(hooks: Hooks) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ch = channel("support", listen_port=busy.getsockname()[1])
        with pytest.raises(OSError, match="address already in use"):
            await hooks.startup(_app(_Runtime([ch])), None)  # type: ignore[arg-type]
    assert plugin.state.listeners == []


async def test_sandbox_fake_round_trip(hooks: Hooks) -> None:
    """The fake as ``extmsg serve --sandbox`` uses it: settings from its URL, a customer
    writing in through it, and the agent's answer recorded by it."""
    [fake] = hooks.provider_fakes()
    assert fake.messenger == "email_smtp"
    assert fake.channel_settings is not None
    fake_app = fake.factory()
    server = TestServer(fake_app)
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        raw_settings: dict[str, Any] = fake.channel_settings(url, fake_app)
        settings = msgspec.convert(raw_settings, EmailSettings)
        ch = Channel(
            name="email-sandbox", messenger="email_smtp", settings=settings,
            public_url=url, webhook_secret=SECRET,
        )  # fmt: skip
        runtime = _Runtime([ch])
        app = _app(runtime)
        await hooks.startup(app, None)  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}/fake/inbound",
                json={"from": "Kim <kim@example.org>", "subject": "Hi", "text": "Is it open?"},
            ) as resp:
                assert resp.status == 200
            [message] = runtime.messages()
            assert message.text == "Subject: Hi\n\nIs it open?"
            await hooks.send(
                ch,
                OutboundMessage(
                    id="m1",
                    unblu_message_id="u1",
                    conversation_id="c1",
                    contact=message.contact,
                    text="Yes, until 6 pm.",
                    sender_name="Anna",
                    thread=message.thread,
                ),
            )
            async with http.get(f"{url}/fake/messages") as resp:
                [sent] = (await resp.json())["messages"]
        assert sent["rcpt_tos"] == ["kim@example.org"]
        assert sent["headers"]["subject"] == "Re: Hi"
        assert sent["headers"]["in-reply-to"].strip() == message.provider_message_id
        assert sent["text"].strip() == "Yes, until 6 pm."
        await hooks.shutdown(app, None)  # type: ignore[arg-type]
    finally:
        await server.close()


async def test_no_addresses_in_info_logs(hooks: Hooks, caplog: pytest.LogCaptureFixture) -> None:
    """aiosmtpd's own INFO lines carry full addresses; ours mask them and never log bodies."""
    caplog.set_level(logging.INFO)
    logging.getLogger("mail.log").setLevel(logging.NOTSET)
    ch = channel("support", listen_port=free_port())
    runtime = _Runtime([ch])
    app = _app(runtime)
    await hooks.startup(app, None)  # type: ignore[arg-type]
    raw, _ = load_case("gmail_reply")
    await aiosmtplib.send(
        raw, sender="jane.doe@gmail.com", recipients=["support@acme.example"],
        hostname="127.0.0.1", port=ch.settings.listen_port, timeout=5,
    )  # fmt: skip
    await hooks.shutdown(app, None)  # type: ignore[arg-type]
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "j…e@gmail.com" in logged
    assert "jane.doe@gmail.com" not in logged
    assert "reset link" not in logged
