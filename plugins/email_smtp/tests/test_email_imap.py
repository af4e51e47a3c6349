"""IMAP intake against a real Dovecot: store first, then move; nothing read twice or lost."""

from __future__ import annotations

import imaplib
import socket
from collections.abc import Iterator

import pytest
from email_testkit import IMAP_PASSWORD, IMAP_USER, Dovecot, FakeRuntime, channel, load_case

from extmsg.errors import BadInbound
from extmsg_email_smtp.imap_in import ImapPoller, encode_folder
from extmsg_email_smtp.inbound import MailIntake
from extmsg_email_smtp.threads import ThreadBook

PROCESSED = "extmsg-processed"


@pytest.fixture
def mailbox(dovecot_server: Dovecot) -> Iterator[imaplib.IMAP4]:
    """A direct IMAP session to fill and inspect the mailbox; empties it before each test."""
    conn = imaplib.IMAP4("127.0.0.1", dovecot_server.port)
    conn.login(IMAP_USER, IMAP_PASSWORD)
    for folder in ("INBOX", PROCESSED, "Verarbeitet/Älter"):
        typ, data = conn.select(encode_folder(folder))
        if typ == "OK" and data[0] != b"0":
            conn.store("1:*", "+FLAGS.SILENT", r"(\Deleted)")
            conn.expunge()
    yield conn
    conn.logout()


def _append(conn: imaplib.IMAP4, name: str, folder: str = "INBOX", seen: bool = False) -> None:
    raw, _ = load_case(name)
    flags = r"(\Seen)" if seen else None
    typ, _ = conn.append(encode_folder(folder), flags, None, raw)
    assert typ == "OK"


def _count(conn: imaplib.IMAP4, folder: str) -> int:
    typ, data = conn.select(encode_folder(folder), readonly=True)
    return int(data[0]) if typ == "OK" and data[0] else 0


def _poller(dovecot: Dovecot, runtime: FakeRuntime, **settings: object) -> ImapPoller:
    fields: dict[str, object] = {
        "inbound": ["imap"],
        "imap_host": "127.0.0.1",
        "imap_port": dovecot.port,
        "imap_security": "none",
        "imap_username": IMAP_USER,
        "imap_password": IMAP_PASSWORD,
    }
    ch = channel(**{**fields, **settings})
    books: dict[str, ThreadBook] = {}
    return ImapPoller(ch, MailIntake(runtime, lambda name: books.setdefault(name, ThreadBook())))


async def test_poll_stores_then_moves(
    dovecot_server: Dovecot, mailbox: imaplib.IMAP4, fake_runtime: FakeRuntime
) -> None:
    _append(mailbox, "gmail_reply")
    _append(mailbox, "auto_reply_rfc3834")
    _append(mailbox, "dsn_bounce_postfix")
    poller = _poller(dovecot_server, fake_runtime)
    try:
        assert await poller.poll_once() == 3
        # Stored: the reply as a message, the bounce as a status; the auto-reply as nothing.
        kinds = [type(e).__name__ for _, events in fake_runtime.accepted for e in events]
        assert kinds == ["InboundMessage", "StatusUpdate"]
        message = fake_runtime.messages()[0]
        assert message.text is not None
        assert message.text.startswith("Thanks, the reset link")
        # Everything left the inbox, into the processed folder (created on first use).
        assert _count(mailbox, "INBOX") == 0
        assert _count(mailbox, PROCESSED) == 3
        # Nothing is read twice.
        assert await poller.poll_once() == 0
        assert fake_runtime.calls == 2
    finally:
        await poller.stop()


async def test_failed_accept_leaves_mail_for_the_next_poll(
    dovecot_server: Dovecot, mailbox: imaplib.IMAP4, fake_runtime: FakeRuntime
) -> None:
    _append(mailbox, "thunderbird_reply_de")
    poller = _poller(dovecot_server, fake_runtime)
    try:
        fake_runtime.fail = RuntimeError("store is down")
        with pytest.raises(RuntimeError):
            await poller.poll_once()
        assert _count(mailbox, "INBOX") == 1
        assert _count(mailbox, PROCESSED) == 0
        # The connection survives a failed intake; the next poll takes the mail.
        fake_runtime.fail = None
        assert await poller.poll_once() == 1
        assert _count(mailbox, "INBOX") == 0
        assert [m.contact.address for m in fake_runtime.messages()] == ["j.weber@example.de"]
    finally:
        await poller.stop()


async def test_refused_mail_is_skipped_not_retried_forever(
    dovecot_server: Dovecot, mailbox: imaplib.IMAP4, fake_runtime: FakeRuntime
) -> None:
    _append(mailbox, "thunderbird_reply_de")
    poller = _poller(dovecot_server, fake_runtime)
    try:
        # The intake refuses what the mail says (an absurd id, say): no retry can help, so
        # the poll goes on (the mail stays where it is) instead of failing on it every time.
        fake_runtime.fail = BadInbound("provider_message_id is 5000 characters long")
        assert await poller.poll_once() == 0
        assert _count(mailbox, "INBOX") == 1
        fake_runtime.fail = None
        assert await poller.poll_once() == 0
        assert fake_runtime.calls == 1
    finally:
        await poller.stop()


async def test_unseen_only_and_peek_keeps_flags(
    dovecot_server: Dovecot, mailbox: imaplib.IMAP4, fake_runtime: FakeRuntime
) -> None:
    _append(mailbox, "html_only_new", seen=True)  # a person already read this one
    _append(mailbox, "windows1252_new")
    poller = _poller(dovecot_server, fake_runtime)
    try:
        assert await poller.poll_once() == 1
        assert [m.contact.address for m in fake_runtime.messages()] == ["renee.dubois@example.fr"]
        assert _count(mailbox, "INBOX") == 1
        mailbox.select(encode_folder(PROCESSED), readonly=True)
        _, flags = mailbox.fetch("1", "(FLAGS)")
        assert b"\\Seen" not in flags[0]
    finally:
        await poller.stop()


async def test_copy_expunge_without_move_and_non_ascii_folder(
    dovecot_server: Dovecot, mailbox: imaplib.IMAP4, fake_runtime: FakeRuntime
) -> None:
    _append(mailbox, "attachments_new_thread")
    poller = _poller(
        dovecot_server, fake_runtime, imap_fetch="all", imap_processed_folder="Verarbeitet/Älter"
    )
    try:
        await poller.poll_once()
        poller._can_move = False  # as on a server without RFC 6851 MOVE
        _append(mailbox, "outlook_reply")
        assert await poller.poll_once() == 1
        assert _count(mailbox, "INBOX") == 0
        assert _count(mailbox, "Verarbeitet/Älter") == 2
        attachments = fake_runtime.messages()[0].attachments
        assert [a.file_name for a in attachments] == [
            "IMG_20240604_101203.jpg",
            "Quittung März.pdf",
        ]
    finally:
        await poller.stop()


async def test_oversized_mail_becomes_a_notice(
    dovecot_server: Dovecot, mailbox: imaplib.IMAP4, fake_runtime: FakeRuntime
) -> None:
    _append(mailbox, "attachments_new_thread")
    poller = _poller(dovecot_server, fake_runtime, max_message_bytes=10_000)
    try:
        assert await poller.poll_once() == 1
        message = fake_runtime.messages()[0]
        assert message.attachments == ()
        assert message.text is not None
        assert "larger than the channel's limit" in message.text
        assert _count(mailbox, PROCESSED) == 1
    finally:
        await poller.stop()


class _FromOtherAddress(imaplib.IMAP4):
    """A client on 127.0.0.2: Dovecot slows down logins from an address after a failure."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=("127.0.0.2", 0)
        )


async def test_wrong_password_is_reported(
    dovecot_server: Dovecot, mailbox: imaplib.IMAP4, fake_runtime: FakeRuntime
) -> None:
    poller = _poller(dovecot_server, fake_runtime, imap_password="wrong")
    poller._connect_fn = lambda s: _FromOtherAddress(s.imap_host or "", s.imap_port)
    with pytest.raises(imaplib.IMAP4.error):
        await poller.poll_once()
    await poller.stop()


async def test_background_loop_picks_up_mail(
    dovecot_server: Dovecot, mailbox: imaplib.IMAP4, fake_runtime: FakeRuntime
) -> None:
    import asyncio

    poller = _poller(dovecot_server, fake_runtime, imap_poll_seconds=0.1)
    poller.start()
    try:
        _append(mailbox, "gmail_reply")
        for _ in range(100):
            if fake_runtime.messages():
                break
            await asyncio.sleep(0.05)
        assert len(fake_runtime.messages()) == 1
    finally:
        await poller.stop()
