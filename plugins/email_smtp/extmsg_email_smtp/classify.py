"""Loop and noise guard: which mails are a person writing, and which are machines talking.

Auto-replies, bulk and list mail, and bounces never open or feed a conversation (RFC 3834:
never answer a message whose ``Auto-Submitted`` is anything but ``no``); answering an
out-of-office with an agent's reply is how mail loops start. A delivery status notification
(RFC 3464) for one of our mails becomes a ``failed`` status of that mail instead.
"""

from __future__ import annotations

import re
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from typing import Literal

import msgspec

from . import addresses

__all__ = ["Bounce", "Verdict", "classify", "parse_bounce"]

Kind = Literal["message", "auto-reply", "bulk", "list", "bounce", "loop"]

_BULK_PRECEDENCE = {"bulk", "junk", "list", "auto_reply", "auto-reply"}
_DAEMONS = {"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"}
_NOREPLY = re.compile(r"^(?:no[-_.]?reply|do[-_.]?not[-_.]?reply|donotreply)(?:[-+_.].*)?$")
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:automatic reply|auto(?:matic)?[- ]?reply|out of (?:the )?office|"
    r"autoreply|abwesenheitsnotiz|automatische antwort|r[ée]ponse automatique|"
    r"absence du bureau|respuesta autom[áa]tica|fuera de la oficina|risposta automatica|"
    r"automatisch antwoord|afwezigheidsassistent)\b",
    re.IGNORECASE,
)
_OUR_ID_IN_TEXT = re.compile(r"^Message-ID:\s*(<extmsg\.[^>\s]+>)", re.IGNORECASE | re.MULTILINE)

# RFC 3463 enhanced status codes an agent can act on, by subject.detail.
_STATUS_TEXT = {
    "1.1": "the address does not exist",
    "1.2": "the recipient's domain does not exist or does not accept mail",
    "1.3": "the address is not valid",
    "1.6": "the mailbox has moved",
    "2.1": "the mailbox is disabled",
    "2.2": "the mailbox is full",
    "2.3": "the message is larger than the recipient accepts",
    "3.4": "the message is too big for the recipient's system",
    "4.1": "the recipient's mail server did not answer",
    "4.4": "no route to the recipient's mail server",
    "4.7": "delivery took too long and was given up",
    "7.1": "the recipient's mail server refused the message",
    "7.26": "the recipient's mail server refused the message (sender authentication)",
}


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    kind: Kind
    reason: str = ""


class Bounce(msgspec.Struct, frozen=True, kw_only=True):
    """What a bounce says about one of our mails."""

    original_message_id: str | None
    failed: bool
    recipient: str | None = None
    status: str | None = None
    diagnostic: str | None = None

    def error_text(self) -> str:
        """A sentence for the agent: who, why, and the server's own words."""
        who = f" to {self.recipient}" if self.recipient else ""
        why = ""
        if self.status:
            detail = ".".join(self.status.split(".")[1:])
            why = _STATUS_TEXT.get(detail, "")
        text = f"The email{who} could not be delivered"
        text += f": {why}." if why else "."
        if self.diagnostic:
            text += f" The mail server said: {self.diagnostic}"
        elif self.status:
            text += f" (status {self.status})"
        return text


def _header(msg: Message, name: str) -> str:
    value = msg.get(name)
    return " ".join(str(value).split()) if value is not None else ""


def classify(msg: EmailMessage, own_address: str) -> Verdict:
    """Decide what ``msg`` is; the first matching rule wins, bounces first."""
    content_type = msg.get_content_type()
    report_type = str(msg.get_param("report-type", "") or "").lower()
    if content_type == "multipart/report" and report_type == "delivery-status":
        return Verdict(kind="bounce", reason="delivery status notification")
    if _header(msg, "X-Failed-Recipients"):
        return Verdict(kind="bounce", reason="X-Failed-Recipients")
    _, sender = addresses.parse_mailbox(_header(msg, "From"))
    local = sender.partition("@")[0]
    if local in _DAEMONS:
        return Verdict(kind="bounce", reason=f"sender {local}")
    if sender and addresses.base_address(sender) == addresses.normalize(own_address):
        return Verdict(kind="loop", reason="sent by this channel's own address")

    auto = _header(msg, "Auto-Submitted").lower()
    if auto and auto.split(";")[0].strip() != "no":
        return Verdict(kind="auto-reply", reason=f"Auto-Submitted: {auto.split(';')[0].strip()}")
    for name in ("X-Autoreply", "X-Autorespond", "X-Autorespond-Message", "X-Autoresponder"):
        value = _header(msg, name).lower()
        if value and value not in {"no", "false", "0"}:
            return Verdict(kind="auto-reply", reason=name)
    precedence = _header(msg, "Precedence").lower()
    if precedence in _BULK_PRECEDENCE:
        return Verdict(kind="bulk", reason=f"Precedence: {precedence}")
    if _header(msg, "List-Id") or _header(msg, "List-Unsubscribe"):
        return Verdict(kind="list", reason="mailing list (List-Id/List-Unsubscribe)")
    if _NOREPLY.match(local):
        return Verdict(kind="auto-reply", reason="no-reply sender")
    if _AUTO_SUBJECT.match(_header(msg, "Subject")):
        return Verdict(kind="auto-reply", reason="automatic-reply subject")
    return Verdict(kind="message")


def _walk(msg: Message) -> list[Message]:
    return list(msg.walk())


def _original_message_id(msg: Message) -> str | None:
    for part in _walk(msg):
        ctype = part.get_content_type()
        if ctype in {"message/rfc822", "message/global"}:
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message) and inner.get("Message-ID"):
                return str(inner["Message-ID"]).strip()
        elif ctype in {"text/rfc822-headers", "message/rfc822-headers", "text/rfc822"}:
            raw = part.get_payload(decode=True)
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            headers = HeaderParser().parsestr(text)
            if headers.get("Message-ID"):
                return str(headers["Message-ID"]).strip()
    for part in _walk(msg):
        if part.get_content_maintype() == "text":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                found = _OUR_ID_IN_TEXT.search(raw.decode("utf-8", "replace"))
                if found:
                    return found.group(1)
    return None


def _recipient_blocks(msg: Message) -> list[Message]:
    for part in _walk(msg):
        if part.get_content_type() in {"message/delivery-status", "message/global-delivery-status"}:
            payload = part.get_payload()
            if isinstance(payload, list):
                blocks = [p for p in payload if isinstance(p, Message)]
                return [b for b in blocks if b.get("Action") or b.get("Final-Recipient")]
            if isinstance(payload, str):
                chunks = re.split(r"\r?\n\s*\r?\n", payload.strip())
                parsed = [HeaderParser().parsestr(chunk) for chunk in chunks]
                return [b for b in parsed if b.get("Action") or b.get("Final-Recipient")]
    return []


def _typed_value(value: str) -> str:
    """``rfc822; user@example.org`` → ``user@example.org``; ``smtp; 550 …`` → ``550 …``."""
    kind, sep, rest = value.partition(";")
    if sep and re.fullmatch(r"[A-Za-z0-9-]+", kind.strip()):
        return " ".join(rest.split())
    return " ".join(value.split())


def parse_bounce(msg: Message) -> Bounce:
    """The original Message-ID and the first failed recipient's status of a bounce."""
    original = _original_message_id(msg)
    blocks = _recipient_blocks(msg)
    chosen: Message | None = None
    for block in blocks:
        if str(block.get("Action", "")).strip().lower() == "failed":
            chosen = block
            break
    if chosen is None and blocks:
        # Only delayed / delivered / relayed notices: nothing failed (yet).
        return Bounce(original_message_id=original, failed=False)
    if chosen is None:
        # A bounce without a machine-readable report (old MTAs): a failure with no details.
        failed = _header(msg, "X-Failed-Recipients")
        return Bounce(
            original_message_id=original,
            failed=True,
            recipient=addresses.normalize(failed.split(",")[0]) if failed else None,
        )
    rcpt_field = chosen.get("Final-Recipient") or chosen.get("Original-Recipient")
    recipient = _typed_value(str(rcpt_field)) if rcpt_field else None
    status = str(chosen.get("Status", "")).strip().split()[0] if chosen.get("Status") else None
    diagnostic = chosen.get("Diagnostic-Code")
    return Bounce(
        original_message_id=original,
        failed=True,
        recipient=addresses.normalize(recipient) if recipient else None,
        status=status,
        diagnostic=_typed_value(str(diagnostic)) if diagnostic else None,
    )
