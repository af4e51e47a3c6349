"""What goes to logs: phone numbers and mail addresses masked, control characters escaped.

:func:`mask_address` is for one contact identifier, :func:`mask` for free text (lanes, error
reasons) that may contain any number of them. Plugins use the same two.

Everything here runs on text an attacker can choose (a provider id, a sender address, an error
text quoting either), so every routine is linear in its input and caps what it returns: a log
line never costs more than a glance at its text.

:class:`EscapeControlChars` is the logging filter ``extmsg serve`` puts on its log handler so
that no value can start a line of its own; :func:`install_log_escaping` puts it on the
handlers of an application that configures logging itself. The same filter replaces every
secret of the loaded configuration (:func:`register_secrets`) and every credential a URL
carries (``user:password@``, ``?access_token=…``) with ``***``: see :func:`redact`.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from .logcontext import LogContext, scrub_texts

__all__ = [
    "EscapeControlChars",
    "escape_control",
    "install_log_escaping",
    "log_message_text",
    "mask",
    "mask_address",
    "message_text",
    "redact",
    "redact_secrets",
    "register_secrets",
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


# -- secrets ---------------------------------------------------------------------------------

#: Shortest secret :func:`redact` replaces: a shorter value (``"abc"``, ``"test"``) would mask
#: common words all over the log, and is no secret worth the name anyway.
MIN_SECRET_LENGTH = 6
#: Most characters of one text :func:`redact` scans for secrets; longer texts are cut first.
REDACT_LIMIT = 65536
REDACTED = "***"

_secrets: set[str] = set()
_secret_re: re.Pattern[str] | None = None
_longest = 0
# A credential in a URL: the password of ``scheme://user:password@host`` and the value of a
# query parameter whose name says it is one. Names are at most 40 characters and values stop at
# the first separator, so each ``?``/``&``/``://`` is tried in bounded time: linear overall.
_URL_PASSWORD = re.compile(r"(://[^\s:/?#@]{0,256}:)[^\s/?#@]{1,256}@")
_QUERY_SECRET = re.compile(
    r"([?&;][\w.-]{0,40}?(?:token|secret|password|passwd|pwd|key|signature|sig|auth)"
    r"[\w.-]{0,40}=)[^&;#\s'\"]+",
    re.IGNORECASE,
)


# An ``Authorization`` header's credentials wherever a header map is shown (a repr of an
# aiohttp request's headers, a debugging line): Basic credentials are base64, not the
# registered secret, so the value is cut by its place. The scheme word is at most 20
# characters and the value stops at the first quote, comma or space: linear.
_AUTH_HEADER = re.compile(
    r"((?:[Aa]uthorization|AUTHORIZATION)['\"]?\s{0,4}[:=]\s{0,4}['\"]?(?:[A-Za-z-]{1,20}\s)?)"
    r"[^\s'\",;}>&]{1,4096}"
)


def register_secrets(values: Iterable[str | None]) -> None:
    """Add ``values`` to the secrets :func:`redact` replaces with ``***`` everywhere.

    Values shorter than :data:`MIN_SECRET_LENGTH` characters are not registered. The runtime
    registers every :data:`~extmsg.models.Secret` of the loaded configuration (Unblu password,
    store DSN, each channel's ``webhook_secret`` and the secret settings its plugin declares).
    """
    global _secret_re, _longest
    new = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH} - _secrets
    if not new:
        return
    _secrets.update(new)
    _longest = max(_longest, *map(len, new))
    _secret_re = re.compile(_trie_pattern(_secrets))


def _trie_pattern(values: Iterable[str]) -> str:
    """One pattern matching each of ``values``, the longest where one starts another.

    Written as a trie (``ab(?:c|d(?:e)?)``) rather than an alternation of the values: at each
    position of a text the engine follows one branch, instead of trying every secret that
    shares a first character with it (200 secrets over a text of their common prefix cost a
    second as an alternation, milliseconds as a trie).
    """
    trie: dict[str, Any] = {}
    for value in values:
        node = trie
        for char in value:
            node = node.setdefault(char, {})
        node[""] = {}
    return _emit(trie)


def _emit(node: dict[str, Any]) -> str:
    branches = []
    for char, child in sorted(node.items()):
        if not char:
            continue
        chain = re.escape(char)
        while len(child) == 1 and "" not in child:  # a run without a fork: one literal
            ((char, child),) = child.items()
            chain += re.escape(char)
        branches.append(chain + _emit(child))
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    # A value that ends here but goes on in a longer one: the longer one first (greedy).
    return f"(?:{body})?" if "" in node else body


def clear_secrets() -> None:
    """Forget every registered secret (tests)."""
    global _secret_re, _longest
    _secrets.clear()
    _secret_re = None
    _longest = 0


def redact(text: str) -> str:
    """``text`` with each registered secret and each credential in a URL replaced by ``***``,
    and the text of the message being worked on by ``[message text]``
    (:func:`~extmsg.logcontext.scrub_texts`).

    Texts longer than :data:`REDACT_LIMIT` characters are cut there (a log line that long is
    a mistake anyway), so the cost of a line stays bounded; a secret across the cut is
    redacted whole.
    """
    cut = len(text) - REDACT_LIMIT
    if cut > 0:
        # Redacted before the cut, with room for the longest secret: no cut shows half of one.
        text = text[: REDACT_LIMIT + _longest + 256]
    text = redact_secrets(text)
    if not _log_message_text:
        text = scrub_texts(text)
    return f"{text[:REDACT_LIMIT]}…[+{cut} chars]" if cut > 0 else text


def redact_secrets(text: str) -> str:
    """``text`` with each registered secret and each credential in a URL replaced by ``***``
    (what :func:`redact` does, without cutting the text or touching message texts): for texts
    that are stored or shown to people rather than logged, such as a failed job's reason."""
    pattern = _secret_re
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
    if "=" in text:
        text = _QUERY_SECRET.sub(rf"\1{REDACTED}", text)
    if "uthorization" in text or "UTHORIZATION" in text:
        text = _AUTH_HEADER.sub(rf"\1{REDACTED}", text)
    return text


def _clean(text: str) -> str:
    """What the log filter writes for one text: secrets redacted, controls escaped."""
    redacted = redact(text)
    escaped = escape_control(redacted)
    return text if escaped == text else escaped


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
        te._str = _clean(text)  # type: ignore[attr-defined]
    notes = getattr(te, "__notes__", None)
    if isinstance(notes, list):
        te.__notes__ = [_clean(n) if isinstance(n, str) else n for n in notes]
    for linked in (te.__cause__, te.__context__, *(getattr(te, "exceptions", None) or ())):
        if linked is not None:
            _escape_exception(linked, seen)


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def format_exception(exc_info: ExcInfo) -> str:
    """A traceback as :class:`logging.Formatter` writes it, with each exception's message
    escaped: the traceback keeps its lines, a message cannot add one. Secrets are redacted in
    the messages and in the source lines the traceback quotes."""
    te = traceback.TracebackException(*exc_info)
    _escape_exception(te, set())
    return "\n".join(redact(line) for line in "".join(te.format()).rstrip("\n").split("\n"))


# The attributes every LogRecord has; others come from ``extra=`` and are escaped too.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class EscapeControlChars(logging.Filter):
    """A handler filter: the message, ``extra`` strings, exception texts and tracebacks of
    every record have their secrets redacted (:func:`redact`) and are escaped with
    :func:`escape_control`; a traceback keeps its own lines.

    A record whose message needs neither keeps its format string and arguments.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format: leave the record for logging to report
            return True
        cleaned = _clean(message)
        if cleaned is not message:
            record.msg, record.args = cleaned, None
        for key, value in list(vars(record).items()):
            if key not in _RECORD_FIELDS and isinstance(value, str):
                setattr(record, key, _clean(value))
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = format_exception(_exc_info(record.exc_info))
        elif record.exc_text:
            record.exc_text = "\n".join(redact(line) for line in record.exc_text.split("\n"))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _exc_info(info: Any) -> ExcInfo:
    return (info[0], info[1], info[2])


def install_log_escaping(*handlers: logging.Handler) -> None:
    """Put :class:`EscapeControlChars` on ``handlers`` (by default: the root logger's), once,
    with :class:`~extmsg.logcontext.LogContext` before it: the request id and the other
    fields of the work running are on each record, and cleaned like its ``extra`` fields."""
    for handler in handlers or tuple(logging.getLogger().handlers):
        if not any(isinstance(f, LogContext) for f in handler.filters):
            handler.filters.insert(0, LogContext())
        if not any(isinstance(f, EscapeControlChars) for f in handler.filters):
            handler.addFilter(EscapeControlChars())


# -- message text ------------------------------------------------------------------------------

_log_message_text = False
#: Most characters of a message's text written when ``[server] log_message_text`` is on.
TEXT_LIMIT = 200


def log_message_text(enabled: bool) -> None:
    """Whether :func:`message_text` shows message texts (``[server] log_message_text``)."""
    global _log_message_text
    _log_message_text = bool(enabled)


def message_text(text: str | None) -> str:
    """What a log line may say about a message's text: by default only its length
    (``[42 chars]``), so that what customers and agents write stays out of logs; with
    ``[server] log_message_text = true`` the text itself, quoted, addresses and numbers
    masked and cut at :data:`TEXT_LIMIT` characters."""
    if text is None:
        return "-"
    if not _log_message_text:
        return f"[{len(text)} chars]"
    shown = mask(text[:TEXT_LIMIT])
    return repr(shown) + (f"…[+{len(text) - TEXT_LIMIT} chars]" if len(text) > TEXT_LIMIT else "")
