"""The SMTP/LMTP listener: 250 only after the intake committed, 451 when it failed, 550 for
recipients that are not ours, 552 over the size limit; mail routed to channels by RCPT TO;
421 from the moment the server begins to stop, once what was being stored is."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiosmtplib
import pytest
from email_testkit import FakeRuntime, channel, fill, load_case

from extmsg.draining import InFlight
from extmsg.models import Channel, InboundMessage, StatusUpdate
from extmsg.testing.helpers import eventually
from extmsg_email_smtp.inbound import MailIntake
from extmsg_email_smtp.smtp_in import Gate, Listener, listeners_for
from extmsg_email_smtp.threads import ThreadBook

SALES = "sales@acme.example"


class ServerGate:
    """The server's side of a stop, as ``MessengerContext`` gives it to the listener."""

    def __init__(self) -> None:
        self.requests = InFlight()

    @property
    def stopping(self) -> bool:
        return not self.requests.taking()

    def in_flight(self) -> contextlib.AbstractContextManager[None]:
        return self.requests.hold()


async def _listener(
    runtime: FakeRuntime,
    channels: Sequence[Channel],
    protocol: str = "smtp",
    gate: Gate | None = None,
) -> Listener:
    books: dict[str, ThreadBook] = {}
    intake = MailIntake(runtime, lambda name: books.setdefault(name, ThreadBook()))
    listener = Listener("127.0.0.1", 0, channels, intake, protocol=protocol, gate=gate)
    await listener.start()
    return listener


@pytest.fixture
async def support(fake_runtime: FakeRuntime) -> AsyncIterator[Listener]:
    """One listener for two channels: support (address, +tokens) and sales (a whole domain)."""
    channels = [
        channel("support"),
        channel(
            "sales",
            address=SALES,
            allowed_recipients=["@sales.acme.example", "orders@acme.example"],
            max_message_bytes=4000,
        ),
    ]
    listener = await _listener(fake_runtime, channels)
    yield listener
    await listener.stop()


async def _send(
    listener: Listener, raw: bytes, recipients: list[str], sender: str = "jane.doe@gmail.com"
) -> Any:
    return await aiosmtplib.send(
        raw,
        sender=sender,
        recipients=recipients,
        hostname="127.0.0.1",
        port=listener.port,
        start_tls=False,
        timeout=10,
    )


async def test_accepted_mail_is_stored_before_250(
    support: Listener, fake_runtime: FakeRuntime
) -> None:
    raw, _ = load_case("gmail_reply")
    fake_runtime.delay = 0.3
    started = time.monotonic()
    _responses, message = await _send(support, raw, ["support@acme.example"])
    assert time.monotonic() - started >= 0.3  # the answer waited for the commit
    assert message.startswith("2.0.0 OK")
    [(name, events)] = fake_runtime.accepted
    assert name == "support"
    assert isinstance(events[0], InboundMessage)
    assert events[0].contact.address == "jane.doe@gmail.com"


async def test_failed_intake_answers_451_and_retry_is_a_duplicate(
    support: Listener, fake_runtime: FakeRuntime
) -> None:
    raw, _ = load_case("windows1252_new")
    fake_runtime.fail = ConnectionError("database is locked")
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await _send(support, raw, ["support@acme.example"])
    assert refused.value.code == 451
    assert fake_runtime.accepted == []
    # The MTA tries again later: stored now; once more, and the core drops the duplicate.
    fake_runtime.fail = None
    await _send(support, raw, ["support@acme.example"])
    await _send(support, raw, ["support@acme.example"])
    assert len(fake_runtime.messages()) == 1


async def test_mail_being_stored_when_the_stop_begins_is_waited_for_and_answered_250(
    fake_runtime: FakeRuntime,
) -> None:
    gate = ServerGate()
    listener = await _listener(fake_runtime, [channel("support")], gate=gate)
    try:
        raw, _ = load_case("gmail_reply")
        fake_runtime.delay = 0.5
        sending = asyncio.create_task(_send(listener, raw, ["support@acme.example"]))
        await eventually(lambda: _calls(fake_runtime))
        gate.requests.stop_taking()  # SIGTERM: the drain begins
        assert gate.requests.count == 1  # the mail counts as a request in flight
        assert await gate.requests.idle(5)  # the drain waits until it is stored
        assert fake_runtime.messages()
        _responses, message = await sending
        assert message.startswith("2.0.0 OK")
    finally:
        await listener.stop()


async def test_from_the_moment_the_stop_begins_mail_gets_421(fake_runtime: FakeRuntime) -> None:
    gate = ServerGate()
    listener = await _listener(fake_runtime, [channel("support")], gate=gate)
    try:
        raw, _ = load_case("gmail_reply")
        # A session opened before the stop, with its envelope begun.
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        replies = [await reader.readline()]
        for line in (b"EHLO mx.acme.example", b"MAIL FROM:<jane.doe@gmail.com>"):
            writer.write(line + b"\r\n")
            while (reply := await reader.readline())[3:4] == b"-":
                pass
            replies.append(reply)
        assert all(r.startswith(b"2") for r in replies), replies
        gate.requests.stop_taking()
        writer.write(b"RCPT TO:<support@acme.example>\r\n")
        assert (await reader.readline()).startswith(b"421 4.")
        assert await reader.read() == b""  # and the connection closes
        writer.close()
        # A new connection is greeted with 421 instead of 220.
        with pytest.raises(aiosmtplib.SMTPConnectResponseError) as refused:
            await _send(listener, raw, ["support@acme.example"])
        assert refused.value.code == 421
        assert fake_runtime.calls == 0
    finally:
        await listener.stop()


async def test_data_that_ends_after_the_stop_began_gets_421_not_250(
    fake_runtime: FakeRuntime,
) -> None:
    gate = ServerGate()
    listener = await _listener(fake_runtime, [channel("support")], gate=gate)
    try:
        raw, _ = load_case("gmail_reply")
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        await reader.readline()
        for line in (b"EHLO mx.acme.example", b"MAIL FROM:<jane.doe@gmail.com>",
                     b"RCPT TO:<support@acme.example>", b"DATA"):  # fmt: skip
            writer.write(line + b"\r\n")
            while (reply := await reader.readline())[3:4] == b"-":
                pass
        assert reply.startswith(b"354")
        writer.write(raw.replace(b"\n", b"\r\n")[:100])
        gate.requests.stop_taking()
        writer.write(raw.replace(b"\n", b"\r\n")[100:] + b"\r\n.\r\n")
        assert (await reader.readline()).startswith(b"421 4.")
        writer.close()
        assert fake_runtime.calls == 0
    finally:
        await listener.stop()


async def test_stopping_the_listener_lets_mail_being_stored_finish(
    fake_runtime: FakeRuntime,
) -> None:
    listener = await _listener(fake_runtime, [channel("support")])
    raw, _ = load_case("gmail_reply")
    fake_runtime.delay = 0.3
    sending = asyncio.create_task(_send(listener, raw, ["support@acme.example"]))
    await eventually(lambda: _calls(fake_runtime))
    await listener.stop(grace=5)
    _responses, message = await sending
    assert message.startswith("2.0.0 OK")
    assert fake_runtime.messages()


async def _calls(runtime: FakeRuntime) -> bool:
    return runtime.calls > 0


async def test_unknown_recipient_is_refused_at_rcpt(
    support: Listener, fake_runtime: FakeRuntime
) -> None:
    raw, _ = load_case("gmail_reply")
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await _send(support, raw, ["billing@acme.example"])
    assert refused.value.recipients[0].code == 550
    # One good recipient is enough; the other is refused alone.
    responses, _ = await _send(support, raw, ["someone@else.example", "support@acme.example"])
    assert responses["someone@else.example"].code == 550
    assert [name for name, _ in fake_runtime.accepted] == ["support"]


async def test_mail_over_the_size_limit_gets_552(
    support: Listener, fake_runtime: FakeRuntime
) -> None:
    raw, _ = load_case("attachments_new_thread")  # ~30 kB; sales takes at most 4000 bytes
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await _send(support, raw, [SALES])
    assert refused.value.code == 552
    assert fake_runtime.accepted == []
    await _send(support, raw, ["support@acme.example"])  # support's limit is 25 MiB
    assert len(fake_runtime.messages()) == 1


async def test_commands_echoing_bytes_that_are_not_utf8_get_a_plain_refusal(
    support: Listener,
) -> None:
    """aiosmtpd echoes a VRFY argument it cannot parse; bytes that are not UTF-8 there once
    ended in ``500 Error: (UnicodeEncodeError)`` instead of the refusal itself."""
    reader, writer = await asyncio.open_connection("127.0.0.1", support.port)
    try:
        await reader.readline()
        replies = []
        for line in (b"EHLO client.example", b"VRFY >\x80\xff", b"NOOP"):
            writer.write(line + b"\r\n")
            while (reply := await reader.readline())[3:4] == b"-":
                pass
            replies.append(reply)
    finally:
        writer.close()
    assert replies[1].startswith(b"502 Could not VRFY >\\udc80\\udcff"), replies
    assert replies[2].startswith(b"250"), replies  # the session goes on


async def test_routing_by_recipient(support: Listener, fake_runtime: FakeRuntime) -> None:
    raw, _ = load_case("html_only_new")
    await _send(support, raw, ["team@sales.acme.example"])
    await _send(support, raw, ["Orders@ACME.example"])
    raw2, _ = load_case("outlook_reply")
    token_rcpt = fill("support+{{TOKEN max.mustermann@contoso.com seed-outlook}}@acme.example")
    await _send(support, raw2, [token_rcpt])
    names = [name for name, _ in fake_runtime.accepted]
    assert names == ["sales", "support"]  # the second mail to sales was a duplicate
    assert fake_runtime.messages()[1].thread == token_rcpt.split("+")[1].split("@")[0]


async def test_one_mail_for_two_channels(support: Listener, fake_runtime: FakeRuntime) -> None:
    raw, _ = load_case("windows1252_new")
    await _send(support, raw, ["support@acme.example", SALES])
    assert sorted(name for name, _ in fake_runtime.accepted) == ["sales", "support"]


async def test_bounces_and_auto_replies_are_taken_but_never_become_messages(
    support: Listener, fake_runtime: FakeRuntime
) -> None:
    bounce, _ = load_case("dsn_bounce_postfix")
    auto, _ = load_case("auto_reply_rfc3834")
    await _send(support, bounce, ["support@acme.example"], sender="mailer-daemon@mx.acme.example")
    await _send(support, auto, ["support@acme.example"], sender="mailer-daemon@mx.acme.example")
    [(_, events)] = fake_runtime.accepted
    assert isinstance(events[0], StatusUpdate)
    assert events[0].state == "failed"


async def test_lmtp_answers_once_per_recipient(fake_runtime: FakeRuntime) -> None:
    channels = [channel("support", listen_protocol="lmtp"), channel("sales", address=SALES)]
    listener = await _listener(fake_runtime, channels, protocol="lmtp")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)

        async def say(line: bytes) -> bytes:
            writer.write(line + b"\r\n")
            await writer.drain()
            reply = b""
            while True:
                part = await reader.readline()
                reply += part
                if part[3:4] != b"-":
                    return reply

        assert (await reader.readline()).startswith(b"220")
        assert (await say(b"EHLO mx.acme.example")).startswith(b"500")  # LMTP wants LHLO
        assert (await say(b"LHLO mx.acme.example")).startswith(b"250")
        assert (await say(b"MAIL FROM:<jane.doe@gmail.com>")).startswith(b"250")
        assert (await say(b"RCPT TO:<support@acme.example>")).startswith(b"250")
        assert (await say(b"RCPT TO:<sales@acme.example>")).startswith(b"250")
        assert (await say(b"DATA")).startswith(b"354")
        raw, _ = load_case("thunderbird_reply_de")
        fake_runtime.fail = None
        writer.write(raw.replace(b"\n", b"\r\n") + b"\r\n.\r\n")
        await writer.drain()
        first = await reader.readline()
        second = await reader.readline()
        assert first.startswith(b"250")
        assert second.startswith(b"250")
        writer.close()
        assert sorted(name for name, _ in fake_runtime.accepted) == ["sales", "support"]
    finally:
        await listener.stop()


def test_listeners_group_channels_by_address() -> None:
    intake = MailIntake(FakeRuntime())
    a = channel("a", listen_port=2600)
    b = channel("b", address=SALES, listen_port=2600)
    c = channel("c", address="c@acme.example", listen_port=2601)
    d = channel("d", address="d@acme.example", inbound=["imap"], imap_host="h",
                imap_username="u", imap_password="p")  # fmt: skip
    listeners = listeners_for([a, b, c, d], intake)
    assert [(lst.port, [ch.name for ch in lst.channels]) for lst in listeners] == [
        (2600, ["a", "b"]),
        (2601, ["c"]),
    ]
    e = channel("e", address="e@acme.example", listen_port=2600, listen_protocol="lmtp")
    with pytest.raises(ValueError, match="listen_protocol"):
        listeners_for([a, e], intake)
