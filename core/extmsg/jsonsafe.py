"""Bounded JSON: refuse nesting deep enough to exhaust the parser's recursion.

Python's ``json`` and untyped ``msgspec`` decoding recurse once per nesting level, and
``msgspec`` also recurses while it skips unknown fields of a typed struct, so a body of a few
thousand ``[`` ends in ``RecursionError`` (a 500) instead of a clear refusal. :func:`check_depth`
runs before any decoder, in time linear in the body and mostly in C: strings are cut out first
(a bracket inside a string does not nest), then the brackets are matched against a pattern of
bounded nesting.

:func:`decode` is msgspec's decoder behind that check, which also takes lone UTF-16 surrogate
escapes (``"\\ud800"``, which msgspec refuses) as U+FFFD instead of refusing the whole body.

Every decoder of a request body (the provider plugins, the Unblu endpoint, the sandbox) calls
it; plugin authors decoding JSON themselves should too.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, TypeVar

import msgspec

from .sanitize import scrub

__all__ = ["MAX_DEPTH", "JsonTooDeep", "check_depth", "decode", "depth_problem"]

T = TypeVar("T")

#: Deepest nesting accepted. Meta's notifications nest about 10 levels, Unblu's calls fewer;
#: the interpreter's recursion limit (1,000 frames) is far away.
MAX_DEPTH = 64

_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_NOT_BRACKETS_OR_QUOTES = bytes(b for b in range(256) if b not in b'[]{}"')
# Arrays and objects nest alike; a mismatched pair is the decoder's to report.
_SQUARE = bytes.maketrans(b"{}", b"[]")
_CLOSE = ord("]")


class JsonTooDeep(ValueError):
    """The JSON nests deeper than the limit; the message says so."""


@functools.lru_cache(maxsize=256)
def _nested(levels: int) -> re.Pattern[bytes]:
    """Matches a run of balanced groups nested at most ``levels`` deep (brackets only).

    Bounded nesting is a regular language, so the regex engine checks it in C, in one linear
    pass; possessive repeats never backtrack.
    """
    pattern = b""
    for _ in range(levels):
        pattern = rb"(?:\[" + pattern + rb"\])*+"
    return re.compile(pattern)


def _outside_strings(raw: bytes) -> bytes:
    """The brackets of ``raw`` that stand outside its strings, in C-speed passes.

    Escapes go first, left to right as a JSON lexer pairs them: ``\\\\`` (so that in
    ``\\\\"`` the quote still ends the string), then ``\\"``. What is left of a string is
    then between two quotes: of the pieces split at quotes, every other one is outside.
    Outside strings a backslash is invalid JSON, which the decoder refuses where it stands,
    before any nesting after it.
    """
    kept = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_BRACKETS_OR_QUOTES)
    return b"".join(kept.split(b'"')[::2])


def depth_problem(data: bytes | bytearray | memoryview, limit: int = MAX_DEPTH) -> str | None:
    """``None`` when ``data`` nests at most ``limit`` levels, else what is wrong.

    Malformed JSON is not this function's concern (the decoder names it, and stops reading at
    the first error): a stray or missing bracket is let through.
    """
    raw = bytes(data)
    if len(raw.translate(None, _NOT_BRACKETS)) <= limit:
        return None  # too few brackets to nest that deep: most bodies end here
    brackets = _outside_strings(raw).translate(_SQUARE, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return None
    # Consume balanced groups that fit the depth left; where that stops, a group either nests
    # too deep or never closes: step into it and go on with one level less. At most ``limit``
    # steps, each a regex match from where the previous one ended.
    pos, level, end = 0, 0, len(brackets)
    while True:
        match = _nested(limit - level).match(brackets, pos)
        assert match is not None  # the pattern matches the empty string
        pos = match.end()
        if pos == end:
            return None  # all read (or a group left open: malformed)
        if brackets[pos] == _CLOSE:
            if level == 0:
                return None  # a stray "]": malformed, the decoder stops there
            level -= 1
        else:
            level += 1
            if level > limit:
                return f"JSON nested deeper than {limit} levels"
        pos += 1


def check_depth(data: bytes | bytearray | memoryview, limit: int = MAX_DEPTH) -> None:
    """Raise :class:`JsonTooDeep` when ``data`` nests deeper than ``limit`` levels."""
    problem = depth_problem(data, limit)
    if problem is not None:
        raise JsonTooDeep(problem)


def decode(data: bytes, type: type[T] = Any) -> T:  # type: ignore[assignment]
    """``data`` decoded into ``type`` (anything JSON when omitted), depth checked first.

    :raises JsonTooDeep: nested deeper than :data:`MAX_DEPTH`.
    :raises msgspec.DecodeError: not JSON, or (``msgspec.ValidationError``) not a ``type``.
    """
    check_depth(data)
    try:
        return msgspec.json.decode(data, type=type)
    except msgspec.DecodeError as exc:
        # msgspec refuses half a surrogate pair; Python's decoder keeps it, scrub replaces it.
        if isinstance(exc, msgspec.ValidationError) or b"\\u" not in data:
            raise
        try:
            loose = json.loads(data)
        except ValueError:
            raise exc from None
    return msgspec.convert(scrub(loose), type=type)
