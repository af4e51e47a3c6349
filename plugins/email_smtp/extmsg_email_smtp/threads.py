"""Which conversation a mail belongs to, without a lookup table.

A thread is either the contact's address (one running conversation per contact) or a token
``t`` + 16 base32 characters (one conversation per mail thread). Everything we send carries the
thread in two places, so a reply finds its way back even when the customer's client drops one:

* the Message-ID ``<extmsg.{c|token}.{our id}@{mailbox domain}>`` (``c``: the contact's thread),
  echoed back in In-Reply-To and References;
* the Reply-To ``local+{token}@domain`` (plus-addressing), the recipient of the reply.

A token is ten random characters and six of an HMAC over them and the contact's address, keyed
with the channel's webhook secret: a token is honoured only from the contact it was made for,
so a forwarded mail cannot make a stranger write into someone else's conversation.

Subjects and the Message-IDs a reply should point at are kept in memory per thread
(:class:`ThreadBook`), backed by the core's store (:class:`ThreadStore`) so that a restart or
another instance keeps the subject and the References; without a store the first reply after a
restart has the channel's generic subject and
no In-Reply-To, which costs the customer's mail client its grouping but not ours. With a store,
the store is the thread's memory and the book only its copy: every mail in or out reads the
thread from the store first (:func:`recall`), since another process (``serve --workers N``,
another instance) may have received or sent in the thread since this one last did.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import msgspec

from extmsg.constant_time import equal

from . import addresses

log = logging.getLogger("extmsg.email")

__all__ = [
    "CONTACT_TAG",
    "ThreadBook",
    "ThreadInfo",
    "ThreadStore",
    "clean_subject",
    "is_token",
    "make_message_id",
    "message_id_token",
    "new_token",
    "remember",
    "reply_to_address",
    "resolve_thread",
    "split_message_ids",
    "token_of_thread",
    "verify_token",
]

CONTACT_TAG = "c"
_TOKEN = re.compile(r"^t[a-z2-7]{16}$")
_OUR_ID = re.compile(r"^<?extmsg\.(c|t[a-z2-7]{16})\.[A-Za-z0-9_.-]+@[^>\s]+>?$", re.IGNORECASE)
_MSGID = re.compile(r"<[^<>\s]+>")
_SUBJECT_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|sv|vs|antw|rif|fw|fwd|wg|tr|rv|enc|doorst)\s*(?:\[\d+\])?\s*:\s*)+",
    re.IGNORECASE,
)
_FORWARD_PREFIX = re.compile(r"^\s*(?:fw|fwd|wg|tr|rv|enc|doorst)\s*:", re.IGNORECASE)


def _b32(data: bytes, length: int) -> str:
    return base64.b32encode(data).decode("ascii").lower().rstrip("=")[:length]


def _mac(secret: str, nonce: str, contact: str) -> str:
    digest = hmac.new(
        secret.encode(), f"{nonce}|{addresses.normalize(contact)}".encode(), hashlib.sha256
    ).digest()
    return _b32(digest, 6)


def new_token(secret: str, contact: str, seed: str) -> str:
    """A token for a new thread of ``contact``; the same ``seed`` (the first mail's Message-ID)
    gives the same token, so a mail delivered twice does not open two threads."""
    nonce = _b32(hmac.new(secret.encode(), f"new|{seed}".encode(), hashlib.sha256).digest(), 10)
    return f"t{nonce}{_mac(secret, nonce, contact)}"


def is_token(value: str) -> bool:
    return bool(_TOKEN.match(value))


def verify_token(secret: str, token: str, contact: str) -> bool:
    """Whether ``token`` is well-formed and was made for ``contact`` on this channel."""
    if not is_token(token):
        return False
    nonce, mac = token[1:11], token[11:]
    return equal(mac, _mac(secret, nonce, contact))


def token_of_thread(thread: str | None) -> str:
    """The tag an outbound mail carries for ``thread``: the token, or ``c`` for a contact."""
    return thread if thread and is_token(thread) else CONTACT_TAG


def make_message_id(thread: str | None, our_id: str, domain: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", our_id) or "m"
    return f"<extmsg.{token_of_thread(thread)}.{safe}@{domain}>"


def message_id_token(message_id: str) -> str | None:
    """The thread tag of one of our Message-IDs (``c`` or a token), else None."""
    match = _OUR_ID.match(message_id.strip())
    return match.group(1).lower() if match else None


def reply_to_address(address: str, thread: str | None, plus_addressing: bool) -> str:
    """Where replies should go: ``local+token@domain`` for a token thread."""
    if not plus_addressing or not thread or not is_token(thread):
        return address
    local, _, domain = address.rpartition("@")
    return f"{local}+{thread}@{domain}"


def split_message_ids(value: str | None) -> list[str]:
    """The ``<id>`` items of an In-Reply-To or References header, in order."""
    return _MSGID.findall(value or "")


def clean_subject(subject: str | None) -> str:
    """The subject without ``Re:``/``Fwd:``/``AW:`` prefixes, whitespace folded."""
    text = " ".join((subject or "").split())
    return _SUBJECT_PREFIX.sub("", text).strip()


def is_forward(subject: str | None) -> bool:
    return bool(_FORWARD_PREFIX.match(subject or ""))


class ThreadInfo(msgspec.Struct, kw_only=True):
    subject: str = ""
    #: Message-IDs of the thread, oldest first, for the References of the next reply.
    references: list[str] = msgspec.field(default_factory=list)
    #: The customer's latest Message-ID: what our next reply answers.
    last_inbound: str | None = None


class ThreadStore(Protocol):
    """Where thread memory outlives the process: the core's store."""

    async def thread_meta(self, channel: str, thread: str) -> dict[str, str]: ...

    async def put_thread_meta(self, channel: str, thread: str, meta: dict[str, str]) -> None: ...


def info_to_meta(info: ThreadInfo) -> dict[str, str]:
    return {
        "subject": info.subject,
        "references": " ".join(info.references),
        "last_inbound": info.last_inbound or "",
    }


def info_from_meta(meta: Mapping[str, str]) -> ThreadInfo | None:
    if not meta:
        return None
    return ThreadInfo(
        subject=meta.get("subject", ""),
        references=meta.get("references", "").split(),
        last_inbound=meta.get("last_inbound") or None,
    )


class ThreadBook:
    """Per-process memory of subjects and Message-IDs by thread, bounded (oldest forgotten)."""

    MAX_REFERENCES = 12

    def __init__(self, max_threads: int = 20_000, max_ids: int = 100_000) -> None:
        self._threads: OrderedDict[str, ThreadInfo] = OrderedDict()
        self._ids: OrderedDict[str, str] = OrderedDict()
        self._max_threads = max_threads
        self._max_ids = max_ids

    def get(self, thread: str) -> ThreadInfo | None:
        info = self._threads.get(thread)
        if info is not None:
            self._threads.move_to_end(thread)
        return info

    def seed(self, thread: str, info: ThreadInfo) -> None:
        """Take what the store remembers of a thread, in place of this process's copy."""
        self._info(thread)
        self._threads[thread] = info
        for mid in info.references:
            self._remember(mid, thread)

    def thread_of(self, message_id: str) -> str | None:
        """The thread of a Message-ID we have seen (inbound or outbound)."""
        return self._ids.get(message_id.lower())

    def _info(self, thread: str) -> ThreadInfo:
        info = self._threads.get(thread)
        if info is None:
            info = self._threads[thread] = ThreadInfo()
            while len(self._threads) > self._max_threads:
                self._threads.popitem(last=False)
        self._threads.move_to_end(thread)
        return info

    def _remember(self, message_id: str, thread: str) -> None:
        self._ids[message_id.lower()] = thread
        self._ids.move_to_end(message_id.lower())
        while len(self._ids) > self._max_ids:
            self._ids.popitem(last=False)

    def _append(self, info: ThreadInfo, ids: Iterable[str]) -> None:
        for mid in ids:
            if mid not in info.references:
                info.references.append(mid)
        del info.references[: -self.MAX_REFERENCES]

    def record_inbound(
        self, thread: str, message_id: str, subject: str, references: Sequence[str] = ()
    ) -> None:
        info = self._info(thread)
        if subject:
            info.subject = subject
        self._append(info, [*references, message_id])
        info.last_inbound = message_id
        self._remember(message_id, thread)

    def record_outbound(self, thread: str, message_id: str, subject: str) -> None:
        info = self._info(thread)
        if subject and not info.subject:
            info.subject = subject
        self._append(info, [message_id])
        self._remember(message_id, thread)


def resolve_thread(
    *,
    secret: str,
    contact: str,
    message_id: str,
    recipients: Iterable[str],
    in_reply_to: Sequence[str],
    references: Sequence[str],
    new_mail_rule: str,
    book: ThreadBook | None = None,
) -> tuple[str, str]:
    """The thread of an inbound mail and how it was found (for logs and tests).

    In order: a valid token in a recipient's ``+detail``; our Message-ID in In-Reply-To, then
    References (newest first); a Message-ID this process saw in the thread; the contact's
    thread when the mail refers to anything at all; and for a mail that refers to nothing,
    ``new_mail_rule`` (``same``: the contact's thread, ``new``: a fresh token).
    """
    for rcpt in recipients:
        _, detail, _ = addresses.split_plus(rcpt)
        if detail and verify_token(secret, detail, contact):
            return detail, "recipient"
    referred = [*in_reply_to, *reversed(references)]
    for mid in referred:
        tag = message_id_token(mid)
        if tag == CONTACT_TAG:
            return contact, "message-id"
        if tag is not None and verify_token(secret, tag, contact):
            return tag, "message-id"
    if book is not None:
        for mid in referred:
            known = book.thread_of(mid)
            if known is not None and (known == contact or verify_token(secret, known, contact)):
                return known, "seen-message-id"
    if referred or new_mail_rule == "same":
        return contact, "contact"
    return new_token(secret, contact, message_id), "new"


async def recall(memory: ThreadStore | None, channel: str, thread: str, book: ThreadBook) -> None:
    """Bring the book's copy of ``thread`` up to what the store holds, before it changes."""
    if memory is None:
        return
    remembered = info_from_meta(await memory.thread_meta(channel, thread))
    if remembered is not None:
        book.seed(thread, remembered)


async def remember(memory: ThreadStore | None, channel: str, thread: str, book: ThreadBook) -> None:
    """Keep the thread's subject and references in the store. A failure here must not undo
    what already happened (a sent mail, an accepted one): it is logged, not raised."""
    info = book.get(thread)
    if memory is None or info is None:
        return
    try:
        await memory.put_thread_meta(channel, thread, info_to_meta(info))
    except Exception:
        log.exception("email %s: could not remember the thread's subject and references", channel)
