"""A received mail → normalized events → the core's durable intake.

Shared by the SMTP listener and the IMAP poller: both hand over raw bytes and acknowledge the
mail (``250`` / move to the processed folder) only after :meth:`MailIntake.deliver` returned,
which is after ``runtime.accept`` committed the events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from extmsg.errors import BadInbound
from extmsg.models import Channel, Contact, InboundEvent, InboundMessage, StatusUpdate

from . import addresses, threads
from .parse import ParsedMail, parse_mail
from .settings import EmailSettings

__all__ = ["Acceptor", "MailIntake", "UnreadableMail", "events_for"]

log = logging.getLogger("extmsg.email.inbound")


class Acceptor(Protocol):
    """What the plugin needs of the core's runtime: durable intake of events."""

    def accept(self, channel: str, events: Sequence[InboundEvent]) -> Awaitable[Sequence[Any]]: ...


class UnreadableMail(Exception):
    """The mail could not be parsed at all; taking it again cannot help."""


def _too_big_notice(limit: int) -> str:
    mib = limit / (1024 * 1024)
    return (
        f"[This email is larger than the channel's limit of {mib:.0f} MiB; only its headers "
        "were read. Open it in the mailbox to see its content.]"
    )


def _message_text(parsed: ParsedMail, settings: EmailSettings, is_new: bool) -> str:
    if parsed.truncated:
        body = _too_big_notice(settings.max_message_bytes)
    else:
        body = parsed.text
        if not body and not parsed.attachments:
            body = parsed.full_text
    subject = " ".join(parsed.subject.split())
    show_subject = settings.subject_in_text == "always" or (
        settings.subject_in_text == "new" and is_new
    )
    if subject and show_subject:
        return f"Subject: {subject}\n\n{body}".strip()
    if not body and not parsed.attachments:
        return subject
    return body


def events_for(
    channel: Channel, parsed: ParsedMail, book: threads.ThreadBook | None = None
) -> tuple[list[InboundEvent], str, str | None]:
    """The events a parsed mail makes, why (for the log), and its thread (for messages)."""
    settings: EmailSettings = channel.settings
    verdict = parsed.verdict
    if verdict.kind == "bounce":
        bounce = parsed.bounce
        original = bounce.original_message_id if bounce else None
        if bounce is None or not bounce.failed:
            return [], f"bounce without a failure ({verdict.reason})", None
        if not original or threads.message_id_token(original) is None:
            return [], f"bounce of a mail we did not send ({verdict.reason})", None
        update = StatusUpdate(
            state="failed",
            provider_message_id=original,
            error_code=bounce.status,
            error_text=bounce.error_text(),
        )
        return [update], f"bounce ({verdict.reason})", None
    if verdict.kind != "message":
        return [], f"ignored: {verdict.kind} ({verdict.reason})", None
    if not addresses.is_valid(parsed.sender):
        return [], "ignored: no valid sender address", None
    thread, how = threads.resolve_thread(
        secret=channel.webhook_secret,
        contact=parsed.sender,
        message_id=parsed.message_id,
        recipients=parsed.recipients,
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
        new_mail_rule=settings.new_mail_rule,
        book=book,
    )
    is_new = not parsed.in_reply_to and not parsed.references
    text = _message_text(parsed, settings, is_new)
    if not text and not parsed.attachments:
        return [], "ignored: empty mail", None
    message = InboundMessage(
        provider_message_id=parsed.message_id,
        contact=Contact(
            address=parsed.sender, name=parsed.sender_name or None, email=parsed.sender
        ),
        text=text or None,
        attachments=parsed.attachments,
        thread=thread,
        reply_to=parsed.in_reply_to[0] if parsed.in_reply_to else None,
        sent_at=parsed.sent_at,
    )
    return [message], f"message, thread by {how}", thread


class MailIntake:
    """Parse, turn into events, store durably; one instance for all email channels."""

    def __init__(
        self,
        acceptor: Acceptor,
        books: Callable[[str], threads.ThreadBook] | None = None,
        memory: threads.ThreadStore | None = None,
    ) -> None:
        self.acceptor = acceptor
        self._books = books
        self.memory = memory

    def book(self, channel: str) -> threads.ThreadBook | None:
        return self._books(channel) if self._books is not None else None

    async def deliver(
        self,
        channel: Channel,
        raw: bytes,
        envelope_recipients: Sequence[str] = (),
        *,
        truncated: bool = False,
    ) -> list[InboundEvent]:
        """Store what ``raw`` says on ``channel``; returns once it is committed.

        :raises UnreadableMail: the mail cannot be parsed, or the intake refused what it says
            (reject it, don't retry).
        :raises Exception: whatever the intake raised (try again later).
        """
        settings: EmailSettings = channel.settings
        try:
            parsed = await asyncio.to_thread(
                parse_mail, raw, settings, envelope_recipients, truncated=truncated
            )
        except Exception as exc:
            raise UnreadableMail(f"{type(exc).__name__}: {exc}") from exc
        book = self.book(channel.name)
        events, why, thread = events_for(channel, parsed, book)
        log.info(
            "email %s: mail from %s: %s%s",
            channel.name,
            addresses.mask(parsed.sender),
            why,
            f", {len(parsed.attachments)} attachment(s)" if parsed.attachments else "",
        )
        if events:
            try:
                await self.acceptor.accept(channel.name, events)
            except BadInbound as exc:
                # Refused for good (an absurd Message-ID, say): retrying cannot help, and an
                # IMAP folder must not stall on it.
                raise UnreadableMail(str(exc)) from exc
        if book is not None and thread is not None:
            await threads.recall(self.memory, channel.name, thread, book)
            book.record_inbound(
                thread,
                parsed.message_id,
                threads.clean_subject(parsed.subject),
                [*parsed.references, *parsed.in_reply_to],
            )
            await threads.remember(self.memory, channel.name, thread, book)
        return events
