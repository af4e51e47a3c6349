"""The new part of a reply: quoted history and signatures stripped.

``>``-quoted lines go wherever they are, with the attribution line ("On … wrote:") that
introduces them: above the answer (top posting), below it (bottom posting, Thunderbird's
default) or between answers (interleaved replies keep every part the sender wrote). HTML mail
arrives here as text with its ``<blockquote>`` already turned into ``>`` lines.

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

_SIG_LINES = frozenset({"--", "-- "})  # RFC 3676's "-- ", and the same with its space lost
_MOBILE = re.compile(
    r"^(?:sent from (?:my |mail for |yahoo mail|outlook|samsung|proton)|get outlook for |"
    r"von meinem .* gesendet|gesendet von (?:meinem|mail für|outlook)|envoy[ée] de mon |"
    r"enviado desde mi |inviato da(?:l mio)? |verzonden (?:vanaf|met) mijn |"
    r"skickat från min |sendt fra min |wys[łl]ane z )",
    re.IGNORECASE,
)
_ATTRIBUTION_HINT = re.compile(r"(@|\d|wrote|schrieb|écrit|escribió|scritto|schreef)", re.I)
_ATTRIBUTION_VERB = re.compile(
    r"(wrote|schrieb|écrit|escribió|scritto|schreef|skrev|napisał|escreveu)", re.I
)
# The first line of an attribution a mail client wrapped ("On Mon, 3 Jun 2024, Anna <" then
# "anna@example.com> wrote:"), by the words attributions start with.
_ATTRIBUTION_START = re.compile(r"^\s*(?:on|am|le|el|il|op|den|em|w dniu)\s", re.I)
# Attributions are one sentence: longer lines ending with ":" are the sender's own text.
_ATTRIBUTION_MAX = 300


def _attribution(line: str) -> bool:
    """ "On … wrote:" and its kin; not the sender's own "my answers to your 3 questions:"."""
    text = line.strip()
    if not text.endswith(":") or len(text) > _ATTRIBUTION_MAX:
        return False
    if _ATTRIBUTION_VERB.search(text):
        return True
    return bool(_ATTRIBUTION_START.match(text) and _ATTRIBUTION_HINT.search(text))


def _drop_quotes(lines: list[str]) -> list[str]:
    """The lines without their ``>``-quoted blocks and the attributions introducing them.

    One pass over the lines (every line is looked at a bounded number of times), so a hostile
    body costs time in proportion to its length. A removed block between two parts the sender
    wrote leaves a blank line, so that the parts stay apart.
    """
    kept: list[str] = []
    in_quote = False
    for line in lines:
        stripped = line.lstrip()  # empty for a blank line
        if stripped[:1] == ">":
            if not in_quote:
                _drop_attribution(kept)
                in_quote = True
            continue
        if in_quote and stripped:
            in_quote = False
            if kept and kept[-1].strip():
                kept.append("")
        if not in_quote:
            kept.append(line)
    return kept


def _drop_attribution(kept: list[str]) -> None:
    """Remove the attribution above a quoted block: its nearest non-blank line, if it is one
    (with the line before it when the client wrapped it), and the blank lines after it."""
    end = len(kept)
    while end and not kept[end - 1].strip():
        end -= 1
    if not end or not _attribution(kept[end - 1]):
        return
    start = end - 1
    if (
        start
        and kept[start - 1].strip()
        and not kept[start - 1].rstrip().endswith(":")
        and len(kept[start - 1]) <= _ATTRIBUTION_MAX
        and _ATTRIBUTION_START.match(kept[start - 1])
        and not _ATTRIBUTION_START.match(kept[start])
    ):
        start -= 1
    del kept[start:]


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


def _drop_signature(lines: list[str]) -> list[str]:
    for i, line in enumerate(lines):
        if i and line in _SIG_LINES:
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
    lines = text.split("\n")
    if ">" in text:
        lines = _drop_quotes(lines)
    text = _split_history("\n".join(lines), languages)
    return _tidy(_drop_signature(text.split("\n")))
