"""A fake mail provider for tests and the sandbox: an SMTP sink that records what it gets.

:class:`RecordingHandler` is an aiosmtpd handler. Run it as its own process, as the tests do::

    python -m aiosmtpd -n -l 127.0.0.1:2525 -c extmsg_email_smtp.fake.RecordingHandler /tmp/mail

Each accepted mail is written to the folder as ``NNNNNN.eml`` with ``NNNNNN.json`` (envelope)
beside it. Recipients script failures by their local part, like a real server would answer:
``fail-550…`` / ``fail-451…`` are refused at RCPT, ``fail-data-554…`` / ``fail-data-452…`` at DATA.

:func:`create_email_fake` is the sandbox's form (:class:`MailFake`): an aiohttp application
that starts the sink on a free port when it starts, and speaks the sandbox's fake protocol
(:mod:`extmsg.testing.fakes`):

- ``GET  /fake/messages``: every recorded mail, oldest first (headers, text, attachments);
- ``POST /fake/inbound`` ``{"from": …, "text": …, "subject"?: …, "in_reply_to"?: …,
  "name"?: …, "files"?: […]}``: write a mail as a customer would, delivered by SMTP to the
  sandbox channel's listener;
- ``POST /fake/failures``: the generic failures as SMTP replies at RCPT (450 for
  ``throttled``, 550 for ``forbidden``, 451 for ``server_error``, a reply held for
  ``timeout``);
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
from collections.abc import Callable, Mapping
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
from extmsg.testing.fakes import CustomerMessage, Failure, FakeProvider

from .smtp_in import quiet_aiosmtpd

__all__ = [
    "MAIL_FAILURES",
    "FakeMailServer",
    "MailFake",
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


#: The generic failures as a mail server says them (``status``: the SMTP reply code).
MAIL_FAILURES: Mapping[str, Failure] = {
    "throttled": Failure(status=450, message="4.7.1 Too many messages, slow down"),
    "forbidden": Failure(status=550, message="5.7.1 Relaying denied"),
    "server_error": Failure(status=451, message="4.3.0 Local error in processing"),
    "timeout": Failure(status=451, message="4.4.2 Timeout", hold=30.0),
}


class RecordingHandler:
    """An aiosmtpd handler that keeps every accepted mail (in memory, and in ``folder``).

    :param scripted: the failure a recipient meets at RCPT (awaited), beside the ``fail-NNN``
        local parts.
    :param on_mail: called with each accepted mail and its envelope.
    """

    def __init__(
        self,
        folder: str | Path | None = None,
        *,
        scripted: Callable[[str], Any] | None = None,
        on_mail: Callable[[bytes, dict[str, Any]], None] | None = None,
    ) -> None:
        self.folder = Path(folder) if folder else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.messages: list[tuple[bytes, dict[str, Any]]] = []
        self.scripted = scripted
        self.on_mail = on_mail

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
        failure = await self.scripted(address) if self.scripted is not None else None
        if failure is not None:
            return f"{failure.status} {failure.message}"
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
        if self.on_mail is not None:
            self.on_mail(raw, info)
        if self.folder is not None:
            stem = self.folder / f"{len(list(self.folder.glob('*.eml'))) + 1:06d}"
            stem.with_suffix(".json").write_text(json.dumps(info))
            tmp = stem.with_suffix(".tmp")
            tmp.write_bytes(raw)
            tmp.rename(stem.with_suffix(".eml"))
        return "250 2.0.0 OK: recorded"


class MailFake(FakeProvider):
    """The sandbox's SMTP sink plus where the sandbox channel listens for inbound mail."""

    messenger = "email_smtp"
    title = "Mail fake"
    scenarios = MAIL_FAILURES
    customer = "Customer <customer@example.org>"

    def __init__(self, *, webhook_url: str | None = None, extmsg_url: str | None = None) -> None:
        super().__init__(webhook_url=webhook_url, extmsg_url=extmsg_url)
        self.handler = RecordingHandler(scripted=self._scripted, on_mail=self._recorded)
        #: Mails customers wrote through ``/fake/inbound``, for their side of the thread.
        self.inbound: list[ThreadEntry] = []
        self.server: asyncio.AbstractServer | None = None
        self.smtp_port = 0
        self.listen_port = _free_port()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/fake/thread", _thread)

    async def _scripted(self, address: str) -> Any:
        return await self.take_failure(address.lower())

    def fail(
        self, to: str, failure: str | Any, *, times: int | None = None, after: int = 0
    ) -> None:
        super().fail(to.lower(), failure, times=times, after=after)

    def _recorded(self, raw: bytes, info: dict[str, Any]) -> None:
        mail = read_mail(raw, info)
        rcpts = info.get("rcpt_tos") or [""]
        self.record(
            **mail, id=mail["headers"].get("message-id", ""), to=rcpts[0], state="delivered"
        )

    async def start(self) -> None:
        await super().start()
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
        await super().stop()

    def channel_settings(self, base_url: str) -> dict[str, Any]:
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

    def settings(self) -> dict[str, Any]:
        return self.channel_settings("")

    def read_customer(self, data: Mapping[str, Any]) -> CustomerMessage:
        return super().read_customer({"from": self.customer, **data})

    async def deliver(self, message: CustomerMessage, data: Mapping[str, Any]) -> dict[str, Any]:
        """A mail from ``from`` (``name``, ``subject``, ``in_reply_to``, ``files`` optional) by
        SMTP to the sandbox channel's listener; ``id`` is its Message-ID."""
        files = inbound_files(data)
        sender = message.sender
        if message.name and "<" not in sender:
            sender = formataddr((message.name, sender))
        mail = EmailMessage()
        mail["From"] = sender
        mail["To"] = str(data.get("to") or SANDBOX_ADDRESS)
        mail["Subject"] = str(data.get("subject") or "Hello")
        mail["Message-ID"] = message.id or make_msgid(domain="example.org")
        parent = str(data.get("in_reply_to") or "")
        if parent:
            mail["In-Reply-To"] = parent
            mail["References"] = " ".join(_references(self, parent))
        mail.set_content(message.text)
        for f in files:
            main, _, sub = f.mime_type.partition("/")
            mail.add_attachment(
                f.data, maintype=main, subtype=sub or "octet-stream", filename=f.name
            )
        written = ThreadEntry(
            id=str(mail["Message-ID"]),
            sender="customer",
            contact=parseaddr(sender)[1],
            text=message.text,
            subject=str(mail["Subject"]),
            thread=_references(self, parent)[0] if parent else str(mail["Message-ID"]),
            timestamp=now_ms(),
            state="sending",
            files=[ThreadFile(name=f.name, mime_type=f.mime_type, size=len(f.data)) for f in files],
        )
        self.inbound.append(written)
        try:
            await aiosmtplib.send(mail, hostname="127.0.0.1", port=self.listen_port, timeout=10)
        except aiosmtplib.SMTPResponseException as exc:
            written.state, written.error = "failed", str(exc)
            return {"status": exc.code, "id": mail["Message-ID"], "error": exc.message}
        except aiosmtplib.SMTPException as exc:
            written.state, written.error = "failed", str(exc)
            raise OSError(str(exc)) from exc
        written.state = "sent"
        return {"status": 250, "id": mail["Message-ID"], "message_id": mail["Message-ID"]}


#: The sink and its listener (the name older code knows).
FakeMailServer = MailFake
SERVER = web.AppKey("extmsg.email.fake", MailFake)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fake_channel_settings(base_url: str, app: web.Application) -> dict[str, Any]:
    """Settings of a channel that sends through (and is written to by) the started fake."""
    return app[SERVER].channel_settings(base_url)


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


def create_email_fake(
    extmsg_url: str | None = None, webhook_url: str | None = None
) -> web.Application:
    """The sandbox's fake. ``extmsg_url`` and ``webhook_url`` are accepted for the factory
    contract and not needed: customer mail reaches extmsg over SMTP, at the channel's
    listener."""
    fake = MailFake(extmsg_url=extmsg_url, webhook_url=webhook_url)
    app = fake.create_app()
    app[SERVER] = fake
    return app
