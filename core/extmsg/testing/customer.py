"""The customer's side of a provider fake, as the sandbox console shows it.

A fake that serves ``GET /fake/thread`` answers a :class:`CustomerThread`: what the customer's
phone or mail client holds — every message the customer wrote through ``POST /fake/inbound``
and every message that reached them, oldest first, in one shape for every messenger. The
console draws it as a phone or a mail client and writes as the customer through
``POST /fake/inbound``, whose generic shape every bundled fake accepts::

    {"from": "<the customer's address>", "text": "...", "name"?: "...",
     "subject"?: "...", "in_reply_to"?: "<an entry's thread id>",
     "files"?: [{"name": "...", "mimeType": "...", "data": "<base64>"}]}

States of an entry: the business's messages are ``sending``, ``sent``, ``delivered``,
``read`` or ``failed`` (with ``error``); the customer's are ``sent`` once the messenger's
webhook took them, ``read`` when the business sent a read receipt, ``failed`` when the
webhook refused them.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

__all__ = [
    "CustomerThread",
    "InboundFile",
    "ThreadEntry",
    "ThreadFile",
    "inbound_files",
    "now_ms",
]

Sender = Literal["customer", "business"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ThreadFile(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, rename="camel"):
    """A picture or file of an entry; ``url`` is where the customer's device can open it."""

    name: str
    mime_type: str = "application/octet-stream"
    size: int | None = None
    url: str | None = None


class ThreadEntry(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    """One message on the customer's device."""

    id: str
    sender: Sender
    contact: str
    text: str | None = None
    timestamp: int = 0
    state: str | None = None
    error: str | None = None
    subject: str | None = None
    thread: str | None = None
    template: str | None = None
    files: list[ThreadFile] = []


class CustomerThread(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    """``GET /fake/thread``: the customer's view of a fake.

    :ivar kind: how to draw it: ``sms``, ``chat`` (WhatsApp-like, with ticks) or ``email``.
    :ivar business: the business's address the customer writes to.
    :ivar contact: the customer address a new message comes from by default.
    :ivar subjects: the customer's messages have a subject (mail).
    :ivar files: the customer can send pictures and files.
    :ivar page: path of the fake's own page, if it has one.
    """

    messenger: str
    kind: Literal["sms", "chat", "email"]
    business: str
    contact: str
    entries: list[ThreadEntry] = []
    subjects: bool = False
    files: bool = False
    page: str | None = None

    def encode(self) -> bytes:
        return msgspec.json.encode(self)


class InboundFile(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    mime_type: str
    data: bytes


def inbound_files(body: Mapping[str, Any]) -> list[InboundFile]:
    """The ``files`` of a generic ``/fake/inbound`` body; ``ValueError`` names what is wrong."""
    raw = body.get("files") or []
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise ValueError("files: must be a list of {name, mimeType, data}")
    out: list[InboundFile] = []
    for n, item in enumerate(raw):
        if not isinstance(item, Mapping) or not isinstance(item.get("data"), str):
            raise ValueError(f"files[{n}]: needs name, mimeType and data (base64)")
        try:
            data = base64.b64decode(item["data"], validate=True)
        except binascii.Error:
            raise ValueError(f"files[{n}].data: must be base64") from None
        out.append(
            InboundFile(
                name=str(item.get("name") or "file"),
                mime_type=str(item.get("mimeType") or "application/octet-stream"),
                data=data,
            )
        )
    return out
