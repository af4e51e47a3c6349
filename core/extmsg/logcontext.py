"""Which message a log line is about: fields every record carries while work on it runs.

A request id is born where a message enters (a provider's webhook, Unblu's call, a mail): an
incoming ``X-Request-Id`` is kept when it is sane (:func:`sane_request_id`), otherwise one is
made. It is stored in the payload of every job the request creates, and the engine binds it
again (with the job id, channel and message id) while the job runs, so the worker that calls
Unblu or the provider minutes later logs the same id; calls to Unblu carry it as
``X-Request-Id``.

The fields live in :mod:`contextvars`, so they follow a request or a job through its awaits
and the tasks it starts, and never leak into another. :class:`LogContext` copies them onto
each log record; the JSON log format writes them as fields.
"""

from __future__ import annotations

import contextvars
import heapq
import logging
import os
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "FIELDS",
    "REQUEST_ID_HEADER",
    "LogContext",
    "bind",
    "bind_request_id",
    "current",
    "new_request_id",
    "outgoing_headers",
    "request_id",
    "sane_request_id",
    "scrub_texts",
    "set_field",
    "unbind",
]

REQUEST_ID_HEADER = "X-Request-Id"
#: The fields a record can carry, in the order the JSON format writes them.
FIELDS = ("request_id", "channel", "job_id", "message_id", "conversation_id")
#: Longest incoming request id kept; longer ones are replaced by one of ours.
MAX_REQUEST_ID = 128
_SANE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=/-]*")

_FIELD_SET = frozenset(FIELDS)
#: The bound fields, in one variable (one set per ``bind``, not one per field); a mapping
#: once set is never changed, only replaced.
_fields: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "extmsg_log_fields", default=MappingProxyType({})
)


def new_request_id() -> str:
    """A fresh request id: 32 hex digits (128 random bits; ``uuid4`` costs four times as much
    for the same length)."""
    return os.urandom(16).hex()


def sane_request_id(value: str | None) -> str | None:
    """``value`` when it can be a request id as it is: at most :data:`MAX_REQUEST_ID`
    characters of letters, digits and ``._:+=/-`` (nothing that can forge a log line or
    smuggle markup); otherwise None."""
    if not value or len(value) > MAX_REQUEST_ID or not _SANE.fullmatch(value):
        return None
    return value


def request_id() -> str | None:
    """The request id of the work running now, if any."""
    return _fields.get().get("request_id")


def outgoing_headers() -> dict[str, str]:
    """``{"X-Request-Id": …}`` for a call made on behalf of the running request or job (empty
    outside one): the remote, or a proxy on the way, can log the same id."""
    rid = request_id()
    return {REQUEST_ID_HEADER: rid} if rid is not None else {}


def current() -> dict[str, str]:
    """The fields bound now (unset ones left out)."""
    bound = _fields.get()
    return {name: bound[name] for name in FIELDS if name in bound}


#: What people wrote in the message the running work is about: no log line may quote it.
_texts: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("extmsg_texts", default=())
#: Shortest text (or line of one) kept out of log lines by :func:`scrub_texts`: shorter ones
#: ("ok", "yes") are common words, and would blot out whatever else a line says.
MIN_TEXT = 6
#: Most texts and lines of texts :func:`scrub_texts` looks for in one line.
MAX_PIECES = 32
_LINES_FROM = 65536
TEXT_SHOWN = "[message text]"


def _pieces(texts: Iterable[str | None]) -> tuple[str, ...]:
    out: set[str] = set()
    for text in texts:
        if not text:
            continue
        out.add(text.strip())
        # The longest lines of the text's start: a mail of a thousand lines costs a log line
        # (and the job's start) little. ``sorted`` answers what ``nlargest`` would, and costs
        # less where there are few lines (a chat message has one).
        lines = [line.strip() for line in text[:_LINES_FROM].splitlines()]
        if len(lines) > MAX_PIECES:
            out.update(heapq.nlargest(MAX_PIECES, lines, key=len))
        elif len(lines) > 1:
            out.update(sorted(lines, key=len, reverse=True))
        else:
            out.update(lines)
    # Longest first, so that a text containing another is replaced whole.
    longest = sorted([t for t in out if len(t) >= MIN_TEXT], key=len, reverse=True)
    return tuple(longest[:MAX_PIECES])


def scrub_texts(line: str) -> str:
    """``line`` with each text bound by ``bind(texts=…)`` (and each of its lines) written as
    ``[message text]``: a provider's or Unblu's error that echoes the message stays out."""
    texts = _texts.get()
    for text in texts:
        if text in line:
            line = line.replace(text, TEXT_SHOWN)
    return line


class bind:
    """Bind ``fields`` (names from :data:`FIELDS`; None leaves one as it is) and ``texts``
    (see :func:`scrub_texts`) for the ``with`` block; tasks started inside inherit them.
    Afterwards every field is back to its earlier value, also one :func:`set_field` set inside
    the block (a keep-alive connection's next request starts clean)."""

    __slots__ = ("_fields", "_pieces", "_text_token", "_token")

    def __init__(self, texts: Iterable[str | None] = (), **fields: str | int | None) -> None:
        for name in fields:
            if name not in _FIELD_SET:
                raise ValueError(f"unknown log field: {name}")
        self._fields = {name: str(value) for name, value in fields.items() if value is not None}
        self._pieces = _pieces(texts) if texts else ()
        self._token: contextvars.Token[Mapping[str, str]] | None = None
        self._text_token: Any = None

    def __enter__(self) -> None:
        # Set even when nothing changes: leaving the block undoes a set_field made inside.
        self._token = _fields.set({**_fields.get(), **self._fields})
        if self._pieces:
            self._text_token = _texts.set(_texts.get() + self._pieces)

    def __exit__(self, *exc: object) -> None:
        if self._text_token is not None:
            _texts.reset(self._text_token)
            self._text_token = None
        if self._token is not None:
            _fields.reset(self._token)
            self._token = None


def bind_request_id(request_id: str) -> contextvars.Token[Mapping[str, str]]:
    """What ``with bind(request_id=…)`` does on entering, for the one field every request
    binds, at a third of the cost; :func:`unbind` with the token answered undoes it (and any
    :func:`set_field` made since)."""
    return _fields.set({**_fields.get(), "request_id": request_id})


def unbind(token: contextvars.Token[Mapping[str, str]]) -> None:
    """Undo :func:`bind_request_id`: every field is back to its value before."""
    _fields.reset(token)


def set_field(name: str, value: str | int | None) -> None:
    """Bind one field until the current task or ``with bind()`` block ends: for a value
    learnt half-way through a request or job, such as the Unblu conversation it posts into."""
    if name not in _FIELD_SET:
        raise KeyError(name)
    if value is not None:
        _fields.set({**_fields.get(), name: str(value)})


class LogContext(logging.Filter):
    """A handler filter that copies the bound fields onto each record (``record.request_id``
    …) unless the call gave them itself (``extra={"channel": …}``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        attributes = record.__dict__
        for name, value in _fields.get().items():
            if name not in attributes:
                attributes[name] = value
        return True
