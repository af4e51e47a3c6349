"""An agent's message → one email, sent through the channel's SMTP server.

**Who wrote it.** Email shows the sender in the From line, so the agent's name goes there and
the text stays as the agent wrote it: ``"Anna via Acme Support" <support@acme.example>``
(``channel.sender_fallback`` when the agent has no name; only the company name when the
channel's ``sender_prefix`` is empty, i.e. the operator wants no agent names).

**Threading.** Message-ID, Reply-To and References carry the thread (see :mod:`.threads`). The
subject is ``Re: <the thread's subject>`` when this process saw the thread's mail, else the
channel's ``default_subject``.

**Shape.** multipart/alternative (the text, and the same text as simple escaped HTML); a file
from Unblu is attached, its caption is the text.
"""

from __future__ import annotations

import html
import re
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib
import msgspec

from extmsg.errors import PermanentError
from extmsg.models import Channel, OutboundMessage, SendResult

from . import addresses, threads
from .errors import from_smtp_error
from .settings import EmailSettings

__all__ = ["build_mail", "from_name", "render", "send", "subject_for"]

_URL = re.compile(r"(https?://[^\s<>\"']+[^\s<>\"'.,;:!?)\]])")


def render(channel: Channel, message: OutboundMessage) -> list[OutboundMessage]:
    """One mail per agent message; nothing is prefixed (the name goes into From)."""
    return [message]


def from_name(channel: Channel, message: OutboundMessage) -> str:
    settings: EmailSettings = channel.settings
    if not channel.sender_prefix:
        return settings.company
    agent = (message.sender_name or "").strip() or channel.sender_fallback
    return f"{agent} via {settings.company}" if agent else settings.company


def subject_for(channel: Channel, info: threads.ThreadInfo | None) -> str:
    settings: EmailSettings = channel.settings
    if info is not None and info.subject:
        return f"Re: {info.subject}"
    return settings.default_subject.replace("{display_name}", settings.company)


def _html(text: str) -> str:
    escaped = html.escape(text)
    linked = _URL.sub(r'<a href="\1">\1</a>', escaped)
    body = linked.replace("\r\n", "\n").replace("\n", "<br>\n")
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head>'
        f'<body><div style="font-family:sans-serif;white-space:normal">{body}</div></body></html>'
    )


def build_mail(
    channel: Channel,
    message: OutboundMessage,
    info: threads.ThreadInfo | None,
    *,
    now: float | None = None,
) -> EmailMessage:
    """The complete mail for ``message``; its Message-ID is our provider message id."""
    settings: EmailSettings = channel.settings
    thread = message.thread or message.contact.address
    message_id = threads.make_message_id(
        thread, f"{message.id}-{message.part}" if message.part else message.id, settings.domain
    )
    mail = EmailMessage()
    mail["From"] = addresses.formatted(from_name(channel, message), settings.address)
    mail["To"] = addresses.formatted(message.contact.name, message.contact.address)
    reply_to = threads.reply_to_address(settings.address, thread, settings.plus_addressing)
    if reply_to != settings.address:
        mail["Reply-To"] = addresses.formatted(settings.company, reply_to)
    mail["Subject"] = subject_for(channel, info)
    mail["Date"] = formatdate(now if now is not None else time.time(), localtime=False)
    mail["Message-ID"] = message_id
    in_reply_to = message.reply_to or (info.last_inbound if info else None)
    references = list(info.references) if info else []
    if in_reply_to:
        mail["In-Reply-To"] = in_reply_to
        if in_reply_to not in references:
            references.append(in_reply_to)
    if references:
        mail["References"] = " ".join(references[-threads.ThreadBook.MAX_REFERENCES :])
    # Ask Exchange/Outlook not to answer an agent's mail with out-of-office notes.
    mail["X-Auto-Response-Suppress"] = "OOF, AutoReply"
    attachment = message.attachment
    text = message.text or ""
    if attachment is not None and not text:
        text = attachment.caption or attachment.file_name
    mail.set_content(text + ("\n" if not text.endswith("\n") else ""))
    mail.add_alternative(_html(text), subtype="html")
    if attachment is not None and attachment.data is not None:
        maintype, _, subtype = (attachment.mime_type or "application/octet-stream").partition("/")
        mail.add_attachment(
            attachment.data,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=attachment.file_name,
        )
    return mail


def _tls_context(settings: EmailSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not settings.smtp_verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def send(
    channel: Channel,
    message: OutboundMessage,
    book: threads.ThreadBook | None,
    memory: threads.ThreadStore | None = None,
) -> SendResult:
    """Send ``message``; raises Retryable/PermanentError from what the server said."""
    settings: EmailSettings = channel.settings
    if not addresses.is_valid(message.contact.address):
        raise PermanentError(f"Not sent: {message.contact.address!r} is not a valid email address")
    thread = message.thread or message.contact.address
    info = None
    if book is not None:
        await threads.recall(memory, channel.name, thread, book)
        info = book.get(thread)
    if info is not None:
        info = msgspec.structs.replace(info, references=list(info.references))
    try:
        mail = build_mail(channel, message, info)
    except ValueError as exc:
        raise PermanentError(f"Not sent: the email could not be composed ({exc})") from exc
    security = settings.smtp_security
    try:
        await aiosmtplib.send(
            mail,
            sender=settings.address,
            recipients=[message.contact.address],
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            use_tls=security == "tls",
            start_tls=security == "starttls",
            tls_context=_tls_context(settings) if security != "none" else None,
            timeout=settings.smtp_timeout,
        )
    except Exception as exc:
        raise from_smtp_error(exc, message.contact.address) from exc
    message_id = str(mail["Message-ID"])
    if book is not None:
        book.record_outbound(thread, message_id, str(mail["Subject"]).removeprefix("Re: "))
        await threads.remember(memory, channel.name, thread, book)
    return SendResult(provider_message_id=message_id)
