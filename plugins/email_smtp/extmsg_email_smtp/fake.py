"""A fake mail provider for tests and the sandbox: an SMTP sink that records what it gets.

:class:`RecordingHandler` is an aiosmtpd handler. Run it as its own process, as the tests do::

    python -m aiosmtpd -n -l 127.0.0.1:2525 -c extmsg_email_smtp.fake.RecordingHandler /tmp/mail

Each accepted mail is written to the folder as ``NNNNNN.eml`` with ``NNNNNN.json`` (envelope)
beside it. Recipients script failures by their local part, like a real server would answer:
``fail-550…`` / ``fail-451…`` are refused at RCPT, ``fail-data-554…`` / ``fail-data-452…`` at DATA.

:func:`create_email_fake` is the sandbox's form: an aiohttp application that starts the sink
on a free port when it starts, and offers

- ``GET  /fake/messages``: every recorded mail, oldest first (headers, text, attachments);
- ``POST /fake/inbound`` ``{"from": …, "subject": …, "text": …, "in_reply_to": …, "name"?: …,
  "files"?: […]}``: write a mail as a customer would, delivered by SMTP to the sandbox
  channel's listener;
- ``GET  /fake/thread``: the customer's mailbox (:class:`extmsg.testing.customer.CustomerThread`).

``ProviderFake.channel_settings`` reads the started sink's ports from the fake's application.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formataddr, make_msgid, parseaddr, parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiosmtplib
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from extmsg.testing.customer import (
    CustomerThread,
    ThreadEntry,
    ThreadFile,
    inbound_files,
    now_ms,
)

from .smtp_in import quiet_aiosmtpd

__all__ = [
    "FakeMailServer",
    "RecordingHandler",
    "create_email_fake",
    "fake_channel_settings",
    "read_mail",
]

_FAIL = re.compile(r"^fail-(data-)?(\d{3})", re.IGNORECASE)
_PARSER = BytesParser(policy=policy.default)

SANDBOX_ADDRESS = "support@sandbox.example"


def read_mail(raw: bytes, envelope: dict[str, Any] | None = None) -> dict[str, Any]:
    """A recorded mail as JSON-friendly data."""
    msg = _PARSER.parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    attachments = [
        {
            "file_name": part.get_filename(),
            "mime_type": part.get_content_type(),
            "size": len(part.get_payload(decode=True) or b""),
        }
        for part in msg.iter_attachments()
    ]
    return {
        **(envelope or {}),
        "headers": {k.lower(): str(v) for k, v in msg.items()},
        "text": text.get_content() if text is not None else None,
        "html": html.get_content() if html is not None else None,
        "attachments": attachments,
    }


class RecordingHandler:
    """An aiosmtpd handler that keeps every accepted mail (in memory, and in ``folder``)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.messages: list[tuple[bytes, dict[str, Any]]] = []

    @classmethod
    def from_cli(cls, parser: argparse.ArgumentParser, *args: str) -> RecordingHandler:
        if len(args) != 1:
            parser.error("RecordingHandler takes one argument: the folder to write mail to")
        return cls(args[0])

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        match = _FAIL.match(address)
        if match and not match.group(1):
            code = match.group(2)
            return f"{code} {code[0]}.1.1 <{address}>: scripted failure at RCPT"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        for rcpt in envelope.rcpt_tos:
            match = _FAIL.match(rcpt)
            if match and match.group(1):
                code = match.group(2)
                return f"{code} {code[0]}.7.1 scripted failure at DATA"
        raw = envelope.original_content or b""
        info = {
            "received_ms": time.time_ns() // 1_000_000,
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "auth": bool(session.authenticated),
        }
        self.messages.append((raw, info))
        if self.folder is not None:
            stem = self.folder / f"{len(list(self.folder.glob('*.eml'))) + 1:06d}"
            stem.with_suffix(".json").write_text(json.dumps(info))
            tmp = stem.with_suffix(".tmp")
            tmp.write_bytes(raw)
            tmp.rename(stem.with_suffix(".eml"))
        return "250 2.0.0 OK: recorded"


class FakeMailServer:
    """The sandbox's SMTP sink plus where the sandbox channel listens for inbound mail."""

    def __init__(self) -> None:
        self.handler = RecordingHandler()
        #: Mails customers wrote through ``/fake/inbound``, for their side of the thread.
        self.inbound: list[ThreadEntry] = []
        self.server: asyncio.AbstractServer | None = None
        self.smtp_port = 0
        self.listen_port = _free_port()

    async def start(self) -> None:
        quiet_aiosmtpd()
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(
                self.handler, enable_SMTPUTF8=True, hostname="localhost", ident="extmsg-fake"
            ),
            "127.0.0.1",
            0,
        )
        sockets = self.server.sockets or ()
        self.smtp_port = sockets[0].getsockname()[1] if sockets else 0

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def settings(self) -> dict[str, Any]:
        return {
            "address": SANDBOX_ADDRESS,
            "display_name": "Sandbox Support",
            "smtp_host": "127.0.0.1",
            "smtp_port": self.smtp_port,
            "smtp_security": "none",
            "inbound": ["smtp"],
            "listen_host": "127.0.0.1",
            "listen_port": self.listen_port,
        }


SERVER = web.AppKey("extmsg.email.fake", FakeMailServer)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fake_channel_settings(base_url: str, app: web.Application) -> dict[str, Any]:
    """Settings of a channel that sends through (and is written to by) the started fake."""
    return app[SERVER].settings()


async def _messages(request: web.Request) -> web.Response:
    sink = request.app[SERVER]
    return web.json_response([read_mail(raw, info) for raw, info in sink.handler.messages])


async def _inbound(request: web.Request) -> web.Response:
    sink = request.app[SERVER]
    body = await request.json()
    try:
        files = inbound_files(body)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    sender = str(body.get("from") or "Customer <customer@example.org>")
    if body.get("name") and "<" not in sender:
        sender = formataddr((str(body["name"]), sender))
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = str(body.get("to") or SANDBOX_ADDRESS)
    mail["Subject"] = str(body.get("subject") or "Hello")
    mail["Message-ID"] = make_msgid(domain="example.org")
    parent = str(body.get("in_reply_to") or "")
    if parent:
        mail["In-Reply-To"] = parent
        mail["References"] = " ".join(_references(sink, parent))
    mail.set_content(str(body.get("text") or ""))
    for f in files:
        main, _, sub = f.mime_type.partition("/")
        mail.add_attachment(f.data, maintype=main, subtype=sub or "octet-stream", filename=f.name)
    written = ThreadEntry(
        id=str(mail["Message-ID"]),
        sender="customer",
        contact=parseaddr(sender)[1],
        text=str(body.get("text") or ""),
        subject=str(mail["Subject"]),
        thread=_references(sink, parent)[0] if parent else str(mail["Message-ID"]),
        timestamp=now_ms(),
        state="sending",
        files=[ThreadFile(name=f.name, mime_type=f.mime_type, size=len(f.data)) for f in files],
    )
    sink.inbound.append(written)
    try:
        await aiosmtplib.send(mail, hostname="127.0.0.1", port=sink.listen_port, timeout=10)
    except aiosmtplib.SMTPException as exc:
        written.state, written.error = "failed", str(exc)
        return web.json_response({"error": str(exc)}, status=502)
    written.state = "sent"
    return web.json_response({"message_id": mail["Message-ID"]})


def _references(sink: FakeMailServer, parent: str) -> list[str]:
    """The thread's message ids up to ``parent``, root first (as a mail client writes them)."""
    for entry in _entries(sink):
        if entry.id == parent and entry.thread and entry.thread != parent:
            return [entry.thread, parent]
    return [parent]


def _entries(sink: FakeMailServer) -> list[ThreadEntry]:
    entries = list(sink.inbound)
    for raw, info in sink.handler.messages:
        mail = read_mail(raw, info)
        headers = mail["headers"]
        refs = (headers.get("references") or headers.get("in-reply-to") or "").split()
        message_id = headers.get("message-id") or f"<recorded-{len(entries)}>"
        try:
            at = int(parsedate_to_datetime(headers["date"]).timestamp() * 1000)
        except (KeyError, TypeError, ValueError):
            at = 0
        entries.append(
            ThreadEntry(
                id=message_id,
                sender="business",
                contact=", ".join(mail.get("rcpt_tos") or []),
                text=mail["text"] if mail["text"] is not None else mail["html"],
                subject=headers.get("subject"),
                thread=refs[0] if refs else message_id,
                timestamp=max(at, info.get("received_ms", 0)),
                state="delivered",
                files=[
                    ThreadFile(
                        name=a["file_name"] or "attachment",
                        mime_type=a["mime_type"],
                        size=a["size"],
                    )
                    for a in mail["attachments"]
                ],
            )
        )
    entries.sort(key=lambda e: e.timestamp)
    return entries


async def _thread(request: web.Request) -> web.Response:
    view = CustomerThread(
        messenger="email",
        kind="email",
        business=SANDBOX_ADDRESS,
        contact="customer@example.org",
        entries=_entries(request.app[SERVER]),
        subjects=True,
        files=True,
    )
    return web.Response(body=view.encode(), content_type="application/json")


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    sink = app[SERVER]
    await sink.start()
    yield
    await sink.stop()


def create_email_fake(extmsg_url: str | None = None) -> web.Application:
    """The sandbox's fake. ``extmsg_url`` is accepted for the factory contract and not
    needed: customer mail reaches extmsg over SMTP, at the channel's listener."""
    app = web.Application()
    app[SERVER] = FakeMailServer()
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_get("/fake/messages", _messages)
    app.router.add_post("/fake/inbound", _inbound)
    app.router.add_get("/fake/thread", _thread)
    return app
