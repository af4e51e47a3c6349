"""A raw mail (bytes) → what it says: sender, new text, attachments, threading headers.

Standard library ``email`` with ``policy.default``. The text is the text/plain body when there is
one, else the HTML converted; charsets are honoured, and labels mail programs get wrong are
read the way browsers read them (``iso-8859-1`` as windows-1252; unlabelled 8-bit as UTF-8,
else windows-1252).
"""

from __future__ import annotations

import hashlib
import itertools
import mimetypes
import re
from collections.abc import Iterator, Sequence
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import parsedate_to_datetime

import msgspec

from extmsg.models import Attachment

from . import addresses, classify, htmltext, quotes, threads
from .settings import EmailSettings

__all__ = ["ParsedMail", "decode_text", "parse_mail"]

_PARSER = BytesParser(policy=policy.default)
# Real mails nest a handful of multipart sections; the standard library's parser pays for each
# section with every section open around it, so a mail nested hundreds deep costs seconds.
MAX_MULTIPARTS = 100
_BOUNDARY = re.compile(rb"boundary\s*=", re.IGNORECASE)
_SIGNATURES = {"application/pgp-signature", "application/pkcs7-signature",
               "application/x-pkcs7-signature"}  # fmt: skip
_LATIN1 = {"iso-8859-1", "iso8859-1", "latin-1", "latin1", "l1", "iso_8859-1", "cp819"}
# Tried from the start of a run of blanks only, and an id stops at the next "[": linear on
# a body of blanks or of "[cid:" repeated.
_CID_PLACEHOLDER = re.compile(r"(?<![ \t])[ \t]*\[cid:[^\[\]\s]+\]")
_UNLABELLED = {"", "us-ascii", "ascii", "unknown-8bit", "x-unknown", "unknown", "8bit"}


class ParsedMail(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    sender: str
    sender_name: str
    subject: str
    #: What the sender just wrote (history and signature stripped).
    text: str
    #: The whole body text, for when the stripped text is empty.
    full_text: str
    attachments: tuple[Attachment, ...] = ()
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    #: Every address the mail was for: envelope recipients, To, Cc, Delivered-To.
    recipients: tuple[str, ...] = ()
    verdict: classify.Verdict = classify.Verdict(kind="message")
    bounce: classify.Bounce | None = None
    sent_at: float | None = None
    truncated: bool = False


def decode_text(payload: bytes, charset: str | None) -> str:
    label = (charset or "").strip().strip('"').lower()
    if label in _UNLABELLED:
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return payload.decode("cp1252", "replace")
    if label in _LATIN1:
        label = "cp1252"
    try:
        return payload.decode(label, "replace")
    except LookupError:
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return payload.decode("cp1252", "replace")


def _part_text(part: Message) -> str:
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return str(part.get_payload() or "")
    text = decode_text(raw, part.get_content_charset())
    if part.get_content_subtype() == "plain" and str(part.get_param("format", "")).lower() == (
        "flowed"
    ):
        text = _unflow(text, str(part.get_param("delsp", "")).lower() == "yes")
    return text


def _unflow(text: str, delsp: bool) -> str:
    """RFC 3676: join soft line breaks (a line ending in a space) of ``format=flowed``."""
    out: list[str] = []
    carry: str | None = None
    carry_depth = -1
    for line in text.replace("\r\n", "\n").split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        body = line[depth:]
        if body.startswith(" "):
            body = body[1:]  # space-stuffing
        if carry is not None and depth == carry_depth:
            body = carry + body
        elif carry is not None:
            out.append(">" * carry_depth + (" " if carry_depth else "") + carry)
        carry = None
        if body.endswith(" ") and body != "-- ":
            carry, carry_depth = (body[:-1] if delsp else body), depth
            continue
        out.append(">" * depth + (" " if depth and body else "") + body)
    if carry is not None:
        out.append(">" * carry_depth + (" " if carry_depth else "") + carry)
    return "\n".join(out)


def _leaves(msg: Message) -> Iterator[Message]:
    """Leaf parts in order, not descending into attached mails (message/*)."""
    if msg.get_content_maintype() == "message":
        return
    if msg.is_multipart():
        for sub in msg.get_payload():
            if isinstance(sub, Message):
                yield from _leaves(sub)
    else:
        yield msg


def _is_body_text(part: Message) -> bool:
    return (
        part.get_content_maintype() == "text"
        and part.get_content_subtype() in {"plain", "html"}
        and part.get_content_disposition() != "attachment"
        and not part.get_filename()
    )


def _body(msg: Message) -> tuple[str, str]:
    """``(text, html)``: text/plain parts joined (Apple Mail splits around inline images), else
    the HTML converted; the raw HTML too, for finding referenced inline images."""
    plains = [p for p in _leaves(msg) if _is_body_text(p) and p.get_content_subtype() == "plain"]
    htmls = [p for p in _leaves(msg) if _is_body_text(p) and p.get_content_subtype() == "html"]
    html = "\n".join(_part_text(p) for p in htmls)
    text = "\n\n".join(t.strip("\n") for t in (_part_text(p) for p in plains) if t.strip())
    if not text.strip() and html:
        text = htmltext.html_to_text(html)
    # Outlook's plain text marks inline images with "[cid:…]" placeholders.
    text = _CID_PLACEHOLDER.sub("", text)
    return text, html


def _file_name(part: Message, index: int) -> str:
    name = part.get_filename()
    if name:
        name = re.sub(r"[\\/\x00-\x1f]", "_", str(name)).strip() or None
    if name:
        return name
    ext = mimetypes.guess_extension(part.get_content_type()) or ".bin"
    return f"attachment-{index}{ext}"


def _attachments(msg: Message, html: str, min_inline_image: int) -> tuple[Attachment, ...]:
    found: list[Attachment] = []
    for index, part in enumerate(_all_attachment_parts(msg), start=1):
        ctype = part.get_content_type()
        if ctype.startswith("message/"):
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if not isinstance(inner, Message):
                continue
            subject = " ".join(str(inner.get("Subject", "") or "message").split())[:80]
            data = inner.as_bytes(policy=policy.SMTP)
            name = part.get_filename() or re.sub(r"[^\w .-]", "_", subject) + ".eml"
            found.append(Attachment(file_name=str(name), mime_type="message/rfc822", data=data))
            continue
        raw = part.get_payload(decode=True)
        data = raw if isinstance(raw, bytes) else b""
        cid = str(part.get("Content-ID", "") or "").strip().strip("<>")
        referenced = bool(cid) and f"cid:{cid}".lower() in html.lower()
        if ctype.startswith("image/") and referenced and len(data) < min_inline_image:
            continue  # a logo in a signature
        found.append(Attachment(file_name=_file_name(part, index), mime_type=ctype, data=data))
    return tuple(found)


def _all_attachment_parts(msg: Message) -> Iterator[Message]:
    def walk(part: Message) -> Iterator[Message]:
        if part.get_content_maintype() == "message" or not part.is_multipart():
            yield part
            return
        for sub in part.get_payload():
            if isinstance(sub, Message):
                yield from walk(sub)

    for part in walk(msg):
        if _is_body_text(part) or part.get_content_type() in _SIGNATURES:
            continue
        yield part


def _header(msg: Message, name: str) -> str:
    value = msg.get(name)
    return " ".join(str(value).split()) if value is not None else ""


def _sent_at(msg: Message) -> float | None:
    value = _header(msg, "Date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def synthetic_message_id(raw: bytes) -> str:
    """For a mail without Message-ID: stable across redeliveries of the same bytes."""
    return f"<{hashlib.sha256(raw).hexdigest()[:40]}@extmsg.invalid>"


def parse_mail(
    raw: bytes,
    settings: EmailSettings,
    envelope_recipients: Sequence[str] = (),
    *,
    truncated: bool = False,
) -> ParsedMail:
    """Parse ``raw``; ``truncated`` when only the headers were read (an oversized IMAP mail).

    :raises ValueError: the mail has more than :data:`MAX_MULTIPARTS` multipart sections.
    """
    sections = sum(1 for _ in itertools.islice(_BOUNDARY.finditer(raw), MAX_MULTIPARTS + 1))
    if sections > MAX_MULTIPARTS:
        raise ValueError(
            f"the mail has more than {MAX_MULTIPARTS} multipart sections; it is not read"
        )
    msg = _PARSER.parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    message_id = _header(msg, "Message-ID")
    ids = threads.split_message_ids(message_id)
    message_id = ids[0] if ids else synthetic_message_id(raw)
    sender_name, sender = addresses.parse_mailbox(_header(msg, "From"))
    subject = _header(msg, "Subject")
    verdict = classify.classify(msg, settings.address)
    bounce = classify.parse_bounce(msg) if verdict.kind == "bounce" else None
    recipients = [addresses.normalize(r) for r in envelope_recipients]
    recipients += addresses.all_addresses(
        [*msg.get_all("Delivered-To", []), *msg.get_all("X-Original-To", []),
         *msg.get_all("To", []), *msg.get_all("Cc", [])]
    )  # fmt: skip
    text = full = ""
    attachments: tuple[Attachment, ...] = ()
    if verdict.kind == "message" and not truncated:
        full, html = _body(msg)
        text = quotes.extract_reply(
            full, settings.quote_languages, keep_history=threads.is_forward(subject)
        )
        attachments = _attachments(msg, html, settings.min_inline_image_bytes)
    return ParsedMail(
        message_id=message_id,
        sender=sender,
        sender_name=sender_name,
        subject=subject,
        text=text,
        full_text=full.strip(),
        attachments=attachments,
        in_reply_to=tuple(threads.split_message_ids(_header(msg, "In-Reply-To"))),
        references=tuple(threads.split_message_ids(_header(msg, "References"))),
        recipients=tuple(dict.fromkeys(r for r in recipients if r)),
        verdict=verdict,
        bounce=bounce,
        sent_at=_sent_at(msg),
        truncated=truncated,
    )
