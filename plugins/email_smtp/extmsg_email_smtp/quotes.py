"""The new part of a reply: quoted history and signatures stripped.

The split at the header that starts the history ("On … wrote:", Outlook's "From: … Sent: …"
block, "-----Original Message-----", in several languages) is mail-parser-reply's (MIT). Its
signature heuristics ("Thanks," or "Best regards" cut everything after them) would drop what a
customer wrote after a polite opening, so signatures are cut only where mail clients mark them:
the RFC 3676 ``-- `` line and the "Sent from my iPhone" family at the very end.

Forwarded mail (``Fwd:`` subjects) keeps its history: there the quoted mail is the content.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import chain

from mailparser_reply import EmailMessage as ReplyMessage  # type: ignore[import-untyped]
from mailparser_reply.constants import MAIL_LANGUAGES  # type: ignore[import-untyped]

__all__ = ["extract_reply"]

#: Where the history header is looked for: the first ``MAX_SEARCH`` characters, each line up
#: to ``MAX_LINE``. mail-parser-reply's patterns take time growing faster than the square of
#: a line's length ("On On On …" over 32,000 characters: 50 s), and one search holds the
#: interpreter all along, even in a worker thread. A real header line is much shorter, and
#: sits near the top of a reply.
MAX_SEARCH = 8_000
MAX_LINE = 160

_SIG_LINE = re.compile(r"^-- ?$")
_MOBILE = re.compile(
    r"^(?:sent from (?:my |mail for |yahoo mail|outlook|samsung|proton)|get outlook for |"
    r"von meinem .* gesendet|gesendet von (?:meinem|mail für|outlook)|envoy[ée] de mon |"
    r"enviado desde mi |inviato da(?:l mio)? |verzonden (?:vanaf|met) mijn |"
    r"skickat från min |sendt fra min |wys[łl]ane z )",
    re.IGNORECASE,
)
_ATTRIBUTION_HINT = re.compile(r"(@|\d|wrote|schrieb|écrit|escribió|scritto|schreef)", re.I)


def _split_history(text: str, languages: Sequence[str]) -> str:
    """What is above the first history header (mail-parser-reply's split, on its normalized
    text), searched for within the limits above; the whole text when there is none."""
    langs = [lang for lang in languages if lang in MAIL_LANGUAGES] or ["en"]
    message = ReplyMessage(text=text, languages=list(langs), keep_hyphen_lists=True)
    normalized: str = message.text
    lines = normalized[:MAX_SEARCH].split("\n")
    probe = "\n".join(line[:MAX_LINE] for line in lines)
    # As mail-parser-reply's ``read``: the first group found, at its first occurrence.
    found = [h for h in chain.from_iterable(message.HEADER_REGEX.findall(probe)) if h]
    if not found:
        return normalized.strip()
    position = probe.find(found[0])
    # The same place in the whole text: the probe only cut lines short.
    line = probe.count("\n", 0, position)
    column = position - (probe.rfind("\n", 0, position) + 1)
    offset = sum(len(before) + 1 for before in lines[:line]) + column
    # Nothing above the header (the mail starts with history): nothing new.
    return normalized[:offset].strip()


def _drop_trailing_quote(lines: list[str]) -> list[str]:
    """Remove a ``>``-quoted block at the end and the attribution line just above it."""
    end = len(lines)
    while end and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith(">")):
        end -= 1
    if end == len(lines) or not any(line.lstrip().startswith(">") for line in lines[end:]):
        return lines
    kept = lines[:end]
    if kept and kept[-1].rstrip().endswith(":") and _ATTRIBUTION_HINT.search(kept[-1]):
        kept = kept[:-1]
    return kept


def _drop_signature(lines: list[str]) -> list[str]:
    for i, line in enumerate(lines):
        if i and _SIG_LINE.match(line):
            return lines[:i]
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    if end and _MOBILE.match(lines[end - 1].strip()):
        return lines[: end - 1]
    return lines


def _tidy(lines: list[str]) -> str:
    text = "\n".join(line.rstrip() for line in lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def extract_reply(text: str, languages: Sequence[str], keep_history: bool = False) -> str:
    """The part of ``text`` the sender just wrote; ``keep_history`` for forwards."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if keep_history:
        return _tidy(text.split("\n"))
    text = _split_history(text, languages)
    lines = _drop_trailing_quote(text.split("\n"))
    lines = _drop_signature(lines)
    return _tidy(lines)
