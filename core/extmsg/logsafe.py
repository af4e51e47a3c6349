"""What goes to logs: phone numbers and mail addresses masked, control characters escaped.

:func:`mask_address` is for one contact identifier, :func:`mask` for free text (lanes, error
reasons) that may contain any number of them. Plugins use the same two.

Everything here runs on text an attacker can choose (a provider id, a sender address, an error
text quoting either), so every routine is linear in its input and caps what it returns: a log
line never costs more than a glance at its text.

:class:`EscapeControlChars` is the logging filter ``extmsg serve`` puts on its log handler so
that no value can start a line of its own; :func:`install_log_escaping` puts it on the
handlers of an application that configures logging itself.
"""

from __future__ import annotations

import logging
import re
import traceback
from types import TracebackType
from typing import Any

__all__ = [
    "EscapeControlChars",
    "escape_control",
    "install_log_escaping",
    "mask",
    "mask_address",
]

#: Most characters of one text :func:`mask` looks at; the rest is cut and counted.
MASK_LIMIT = 4096
#: Longest scheme or domain :func:`mask_address` shows in full (a domain's most).
_ADDRESS_PART_LIMIT = 253

_LOCAL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-"
_LOCAL_PUNCT = "._%+-"
# A domain right after an ``@``: tried once per ``@``, and a domain never contains one, so
# the scan is linear (the greedy run backs off to the last ``.xx``, each step constant).
_DOMAIN = re.compile(r"@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
# A number stands on its own: not glued to letters or digits on either side, so ids that
# merely contain digits (``SM0123…``, ``wamid.HBgL…``) stay readable. The lookbehind also
# keeps the scan linear: a run of digits is tried from its start only.
_NUMBER = re.compile(r"(?<![A-Za-z0-9])\+?\d[\d ()./-]{4,}\d(?![A-Za-z0-9])")


def _number(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    if digits < 6:
        return text
    keep = 2
    seen = 0
    out = []
    for c in text:
        if c.isdigit():
            seen += 1
            out.append(c if seen > digits - keep else "*")
        else:
            out.append(c)
    return "".join(out)


def _mask_emails(text: str) -> str:
    """Each ``local@domain.tld`` as ``l***@domain.tld`` (the local part's first letter or digit)."""
    out: list[str] = []
    done = 0  # text before this is copied to ``out`` or replaced
    for match in _DOMAIN.finditer(text):
        at = match.start()
        before = text[done:at]
        local = before[len(before.rstrip(_LOCAL_CHARS)) :]
        first = len(local) - len(local.lstrip(_LOCAL_PUNCT))
        if first == len(local):
            continue  # no letter or digit right before the @: not an address
        out.append(before[: len(before) - len(local) + first])
        out.append(f"{local[first]}***@{match.group(1)}")
        done = match.end()
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)


def _mask_all(text: str) -> str:
    return _NUMBER.sub(_number, _mask_emails(text))


def _cut(text: str, limit: int) -> tuple[str, int]:
    """``text`` cut to at most ``limit`` characters, and how many were cut.

    A cut drops the token it falls into as well (up to 64 characters back), so that no
    half of a number or address escapes the masks that need the whole of it.
    """
    if len(text) <= limit:
        return text, 0
    head = text[:limit]
    tail = head[-64:]
    keep = len(tail.rstrip(_LOCAL_CHARS + "@ ()/"))
    head = head[: limit - len(tail) + keep]
    return head, len(text) - len(head)


def mask(text: str | None) -> str:
    """``text`` with mail addresses reduced to ``a***@domain`` and every number of six digits
    or more reduced to its last two digits.

    A number glued to letters (an id such as ``SM0123456789…``) is left as it is. Text beyond
    :data:`MASK_LIMIT` characters is cut and counted: ``…[+N chars]``.
    """
    if not text:
        return ""
    text, cut = _cut(text, MASK_LIMIT)
    masked = _mask_all(text)
    return f"{masked}…[+{cut} chars]" if cut else masked


def _clip(part: str, *, tail: bool = False) -> str:
    """A long part of an address (longer than a domain can be) cut to its first or last 64."""
    if len(part) <= _ADDRESS_PART_LIMIT:
        return part
    return "…" + part[-64:] if tail else part[:64] + "…"


def mask_address(address: str | None) -> str:
    """One contact identifier, enough to tell contacts apart but not to reach them.

    ``+41791234567`` → ``+417******67``; ``jane.doe@example.org`` → ``j…e@example.org``;
    ``whatsapp:+4179…`` keeps its scheme; other ids keep their last four characters.
    A long scheme or domain is shortened.
    """
    if not address:
        return "-"
    scheme, sep, rest = address.rpartition(":")
    head = f"{_clip(scheme)}:" if sep and "@" not in scheme else ""
    value = rest if head else address
    local, at, domain = value.rpartition("@")
    if at:
        domain = _clip(domain, tail=True)
        return head + (f"…@{domain}" if len(local) <= 2 else f"{local[0]}…{local[-1]}@{domain}")
    digits = value.lstrip("+")
    if digits.isdigit() and len(value) <= 32:
        if len(value) <= 6:
            return head + "*" * len(value)
        return f"{head}{value[:4]}{'*' * (len(value) - 6)}{value[-2:]}"
    return head + ("…" + value[-4:] if len(value) > 6 else "…")


# -- control characters --------------------------------------------------------------------

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CONTROL = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
_ESCAPES = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in _CONTROL
}
_HAS_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``,
    ``\\u2028``), so that it stays on one line and cannot steer a terminal.

    C0 and C1 controls, DEL and the Unicode line and paragraph separators are escaped; a
    backslash is not, so an escape cannot be told from the same characters typed.
    """
    return text.translate(_ESCAPES) if _HAS_CONTROL.search(text) else text


def _escape_exception(te: traceback.TracebackException, seen: set[int]) -> None:
    """Escape the exception messages and notes of ``te`` and its chain, in place."""
    if id(te) in seen:
        return
    seen.add(id(te))
    text = getattr(te, "_str", None)
    if isinstance(text, str):
        te._str = escape_control(text)  # type: ignore[attr-defined]
    notes = getattr(te, "__notes__", None)
    if isinstance(notes, list):
        te.__notes__ = [escape_control(n) if isinstance(n, str) else n for n in notes]
    for linked in (te.__cause__, te.__context__, *(getattr(te, "exceptions", None) or ())):
        if linked is not None:
            _escape_exception(linked, seen)


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def format_exception(exc_info: ExcInfo) -> str:
    """A traceback as :class:`logging.Formatter` writes it, with each exception's message
    escaped: the traceback keeps its lines, a message cannot add one."""
    te = traceback.TracebackException(*exc_info)
    _escape_exception(te, set())
    return "".join(te.format()).rstrip("\n")


# The attributes every LogRecord has; others come from ``extra=`` and are escaped too.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class EscapeControlChars(logging.Filter):
    """A handler filter: the message, ``extra`` strings and exception texts of every record
    are escaped with :func:`escape_control`; a traceback keeps its own lines.

    A record whose message needs no escaping keeps its format string and arguments.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format: leave the record for logging to report
            return True
        escaped = escape_control(message)
        if escaped is not message:
            record.msg, record.args = escaped, None
        for key, value in list(vars(record).items()):
            if key not in _RECORD_FIELDS and isinstance(value, str):
                setattr(record, key, escape_control(value))
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = format_exception(_exc_info(record.exc_info))
        return True


def _exc_info(info: Any) -> ExcInfo:
    return (info[0], info[1], info[2])


def install_log_escaping(*handlers: logging.Handler) -> None:
    """Put :class:`EscapeControlChars` on ``handlers`` (by default: the root logger's), once."""
    for handler in handlers or tuple(logging.getLogger().handlers):
        if not any(isinstance(f, EscapeControlChars) for f in handler.filters):
            handler.addFilter(EscapeControlChars())
