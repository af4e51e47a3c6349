"""Sending through a real SMTP server process (aiosmtpd with the recording handler), via the
hooks exactly as the core calls them."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from email_testkit import FakeRuntime, MemoryThreadStore, SmtpSink, channel, load_case

from extmsg.errors import PermanentError, RetryableError
from extmsg.models import Attachment, Channel, Contact, OutboundMessage
from extmsg.plugins import Hooks
from extmsg.store.sqlite import SqliteStore
from extmsg_email_smtp import plugin, threads
from extmsg_email_smtp.fake import RecordingHandler
from extmsg_email_smtp.inbound import MailIntake, events_for
from extmsg_email_smtp.parse import parse_mail

PARSER = BytesParser(policy=policy.default)


def _message(**kw: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "id": "01HZY0OUT0001",
        "unblu_message_id": "unblu-msg-1",
        "conversation_id": "conv-1",
        "contact": Contact(address="jane.doe@gmail.com", name="Jane Doe"),
        "text": "Hello Jane,\nyour new address is saved: https://acme.example/account",
        "sender_name": "Anna",
        "thread": "jane.doe@gmail.com",
    }
    fields.update(kw)
    return OutboundMessage(**fields)


def _sink_channel(sink: SmtpSink, **kw: Any) -> Channel:
    return channel(smtp_port=sink.port, **kw)


def _newest(sink: SmtpSink) -> tuple[EmailMessage, dict[str, Any]]:
    raw, info = sink.messages()[-1]
    mail = PARSER.parsebytes(raw)
    assert isinstance(mail, EmailMessage)
    return mail, info


async def test_text_message(hooks: Hooks, smtp_sink: SmtpSink) -> None:
    ch = _sink_channel(smtp_sink)
    [rendered] = await hooks.render_outbound(ch, _message())
    assert rendered.text == _message().text  # no "Anna: " prefix: the name is in From
    result = await hooks.send(ch, rendered)
    mail, info = _newest(smtp_sink)
    assert info["mail_from"] == "support@acme.example"
    assert info["rcpt_tos"] == ["jane.doe@gmail.com"]
    assert (
        result.provider_message_id
        == mail["Message-ID"]
        == ("<extmsg.c.01HZY0OUT0001@acme.example>")
    )
    assert mail["From"] == "Anna via Acme Support <support@acme.example>"
    assert mail["To"] == "Jane Doe <jane.doe@gmail.com>"
    assert mail["Subject"] == "Your conversation with Acme Support"
    assert mail["Reply-To"] is None  # the contact's own thread needs no token
    assert mail["In-Reply-To"] is None
    assert mail["X-Auto-Response-Suppress"] == "OOF, AutoReply"
    assert mail.get_content_type() == "multipart/alternative"
    plain = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content().replace("\r\n", "\n").rstrip("\n") == _message().text
    assert '<a href="https://acme.example/account">' in html.get_content()
    assert "Hello Jane,<br>" in html.get_content()


async def test_reply_keeps_subject_and_threading_headers(hooks: Hooks, smtp_sink: SmtpSink) -> None:
    ch = _sink_channel(smtp_sink)
    raw, _ = load_case("gmail_reply")
    runtime = FakeRuntime()
    await MailIntake(runtime, plugin.state.book).deliver(ch, raw)
    customer_id = runtime.messages()[0].provider_message_id
    await hooks.send(ch, _message())
    mail, _ = _newest(smtp_sink)
    assert mail["Subject"] == "Re: Your password reset"
    assert str(mail["In-Reply-To"]).strip() == customer_id
    refs = str(mail["References"]).split()
    assert refs == ["<extmsg.c.01HZX4M8W2Q6@acme.example>", customer_id]
    # The next reply refers to this one too.
    await hooks.send(ch, _message(id="01HZY0OUT0002"))
    second, _ = _newest(smtp_sink)
    assert str(second["In-Reply-To"]).strip() == customer_id
    assert str(second["References"]).split() == [*refs, "<extmsg.c.01HZY0OUT0001@acme.example>"]


async def test_thread_memory_survives_a_restart(
    hooks: Hooks, smtp_sink: SmtpSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subject and References come back from the core's store in a new process."""
    store = SqliteStore(tmp_path / "store.sqlite3")
    await store.open()
    try:
        ch = _sink_channel(smtp_sink)
        raw, _ = load_case("gmail_reply")
        runtime = FakeRuntime()
        await MailIntake(runtime, plugin.state.book, store).deliver(ch, raw)
        customer_id = runtime.messages()[0].provider_message_id
        # A new process: nothing in memory, only the store.
        monkeypatch.setattr(plugin.state, "books", {})
        monkeypatch.setattr(plugin.state, "memory", store)
        await hooks.send(ch, _message())
        mail, _ = _newest(smtp_sink)
        assert mail["Subject"] == "Re: Your password reset"
        assert str(mail["In-Reply-To"]).strip() == customer_id
        remembered = await store.thread_meta(ch.name, "jane.doe@gmail.com")
        assert remembered["subject"] == "Your password reset"
        assert str(mail["Message-ID"]) in remembered["references"].split()
    finally:
        await store.close()


async def test_a_reply_answers_the_mail_another_process_received(
    hooks: Hooks, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``serve --workers N`` one process receives the mail and any may send the reply:
    the reply answers the customer's latest mail, whichever process saw it."""
    ch = _sink_channel(smtp_sink)
    store = MemoryThreadStore()
    receiver = threads.ThreadBook()  # the process with the mail listener
    intake = MailIntake(FakeRuntime(), lambda _: receiver, store)
    monkeypatch.setattr(plugin.state, "books", {})  # this process: the one that sends
    monkeypatch.setattr(plugin.state, "memory", store)
    raw, _ = load_case("gmail_reply")
    await intake.deliver(ch, raw)
    await hooks.send(ch, _message())
    first, _ = _newest(smtp_sink)
    later = raw.replace(b"<CAKs7dF3uV6j1Qm9+", b"<CAKs7dF3later+").replace(
        b"In-Reply-To:", b"In-Reply-To: " + str(first["Message-ID"]).encode() + b"\nX-Was:", 1
    )
    await intake.deliver(ch, later)
    await hooks.send(ch, _message(id="01HZY0OUT0002"))
    second, _ = _newest(smtp_sink)
    latest = "<CAKs7dF3later+Yx2bHnFq0N5o_2EtZk3h8wFJzZ1s6c4Kdw@mail.gmail.com>"
    assert str(second["In-Reply-To"]).strip() == latest
    refs = str(second["References"]).split()
    assert refs[-2:] == [str(first["Message-ID"]), latest]


async def test_token_thread_round_trip(hooks: Hooks, smtp_sink: SmtpSink) -> None:
    """What we send carries the thread; the customer's reply to it comes back to it."""
    ch = _sink_channel(smtp_sink, new_mail_rule="new")
    raw, _ = load_case("attachments_new_thread")
    runtime = FakeRuntime()
    await MailIntake(runtime, plugin.state.book).deliver(ch, raw)
    incoming = runtime.messages()[0]
    token = incoming.thread
    assert token is not None
    assert threads.is_token(token)
    contact = incoming.contact
    await hooks.send(ch, _message(contact=contact, thread=token, text="Sorry to hear that!"))
    mail, _ = _newest(smtp_sink)
    assert mail["Reply-To"] == f"Acme Support <support+{token}@acme.example>"
    assert str(mail["Message-ID"]).startswith(f"<extmsg.{token}.")
    assert mail["Subject"] == "Re: Broken screen - photos and receipt"
    # The customer answers from a client that keeps only In-Reply-To (no plus address) ...
    reply = EmailMessage()
    reply["From"] = "Tom Baker <tom.baker@example.co.uk>"
    reply["To"] = "support@acme.example"
    reply["Subject"] = "Re: Something else entirely"
    reply["Message-ID"] = "<reply-1@example.co.uk>"
    reply["In-Reply-To"] = str(mail["Message-ID"])
    reply.set_content("Here is another photo.")
    events, why, _ = events_for(ch, parse_mail(reply.as_bytes(), ch.settings))
    assert events[0].thread == token  # type: ignore[union-attr]
    assert why.endswith("message-id")
    # ... and someone else replying to a forwarded copy does not get into Tom's thread.
    del reply["From"]
    reply["From"] = "eve@example.net"
    events, why, _ = events_for(ch, parse_mail(reply.as_bytes(), ch.settings))
    assert events[0].thread == "eve@example.net"  # type: ignore[union-attr]


async def test_file_message(hooks: Hooks, smtp_sink: SmtpSink) -> None:
    ch = _sink_channel(smtp_sink)
    pdf = b"%PDF-1.4\n%fake\n"
    message = _message(
        text=None,
        attachment=Attachment(
            file_name="Rechnung Mai.pdf", mime_type="application/pdf", data=pdf, caption="Invoice"
        ),
    )
    [rendered] = await hooks.render_outbound(ch, message)
    await hooks.send(ch, rendered)
    mail, _ = _newest(smtp_sink)
    assert mail.get_content_type() == "multipart/mixed"
    plain = mail.get_body(("plain",))
    assert plain is not None
    assert plain.get_content().strip() == "Invoice"
    [part] = list(mail.iter_attachments())
    assert part.get_filename() == "Rechnung Mai.pdf"
    assert part.get_content_type() == "application/pdf"
    assert part.get_content() == pdf


@pytest.mark.parametrize(
    ("sender_prefix", "sender_name", "expected"),
    [
        ("{sender}: ", None, "Agent via Acme Support"),
        ("", "Anna", "Acme Support"),
        ("{sender}: ", "Zoë Ünal", "Zoë Ünal via Acme Support"),
    ],
)
async def test_from_name_rule(
    hooks: Hooks, smtp_sink: SmtpSink, sender_prefix: str, sender_name: str | None, expected: str
) -> None:
    ch = _sink_channel(smtp_sink, sender_prefix=sender_prefix)
    await hooks.send(ch, _message(sender_name=sender_name))
    mail, _ = _newest(smtp_sink)
    [sender] = mail["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (expected, "support@acme.example")


@pytest.mark.parametrize(
    ("recipient", "error", "code"),
    [
        ("fail-550-gone@example.org", PermanentError, "550"),
        ("fail-451-busy@example.org", RetryableError, "451"),
        ("fail-data-554-spam@example.org", PermanentError, "554"),
        ("fail-data-452-full@example.org", RetryableError, "452"),
    ],
)
async def test_server_refusals(
    hooks: Hooks, smtp_sink: SmtpSink, recipient: str, error: type[Exception], code: str
) -> None:
    ch = _sink_channel(smtp_sink)
    with pytest.raises(error) as raised:
        await hooks.send(ch, _message(contact=Contact(address=recipient)))
    assert raised.value.code == code  # type: ignore[attr-defined]
    assert "scripted failure" in str(raised.value)  # the server's own words reach the agent
    verdict = await hooks.classify_error(ch, raised.value)
    assert verdict.retryable is (error is RetryableError)


async def test_unreachable_server_is_retryable(hooks: Hooks) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    ch = channel(smtp_port=closed, smtp_timeout=2)
    with pytest.raises(RetryableError, match="Could not reach the mail server"):
        await hooks.send(ch, _message())


async def test_invalid_address_is_permanent(hooks: Hooks, smtp_sink: SmtpSink) -> None:
    ch = _sink_channel(smtp_sink)
    with pytest.raises(PermanentError, match="not a valid email address"):
        await hooks.send(ch, _message(contact=Contact(address="jane.doe@")))
    assert smtp_sink.messages() == []


async def test_starttls(hooks: Hooks, tls_sink: SmtpSink) -> None:
    ch = channel(smtp_port=tls_sink.port, smtp_security="starttls", smtp_verify_tls=False)
    await hooks.send(ch, _message())
    assert len(tls_sink.messages()) >= 1
    strict = channel(smtp_port=tls_sink.port, smtp_security="starttls")
    with pytest.raises(RetryableError, match="certificate"):
        await hooks.send(strict, _message())


class _Accounts:
    def __call__(
        self, server: SMTP, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login == b"connector" and auth_data.password == b"s3cret"
        )
        return AuthResult(success=ok, handled=False)


@pytest.fixture
async def auth_server() -> AsyncIterator[tuple[int, RecordingHandler]]:
    """An SMTP server that wants a login (over plain TCP, as a local relay may)."""
    handler = RecordingHandler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, authenticator=_Accounts(), auth_require_tls=False),
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    yield port, handler
    server.close()
    await server.wait_closed()


async def test_login(hooks: Hooks, auth_server: tuple[int, RecordingHandler]) -> None:
    port, handler = auth_server
    ch = channel(smtp_port=port, smtp_username="connector", smtp_password="s3cret")
    await hooks.send(ch, _message())
    assert handler.messages[-1][1]["auth"] is True
    wrong = channel(smtp_port=port, smtp_username="connector", smtp_password="nope")
    with pytest.raises(PermanentError, match="refused the channel's SMTP login"):
        await hooks.send(wrong, _message())


async def test_names_cannot_inject_headers(hooks: Hooks, smtp_sink: SmtpSink) -> None:
    ch = _sink_channel(smtp_sink)
    sneaky = Contact(address="jane.doe@gmail.com", name="Jane\r\nBcc: eve@example.net")
    await hooks.send(ch, _message(contact=sneaky, sender_name="Anna\nX-Evil: 1"))
    mail, info = _newest(smtp_sink)
    assert info["rcpt_tos"] == ["jane.doe@gmail.com"]
    assert mail["Bcc"] is None
    assert mail["X-Evil"] is None
    assert mail["To"].addresses[0].display_name == "Jane Bcc: eve@example.net"
