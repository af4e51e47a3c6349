"""Bounded JSON: refuse nesting deep enough to exhaust the parser's recursion.

Python's ``json`` and untyped ``msgspec`` decoding recurse once per nesting level, and
``msgspec`` also recurses while it skips unknown fields of a typed struct, so a body of a few
thousand ``[`` ends in ``RecursionError`` (a 500) instead of a clear refusal. :func:`check_depth`
runs before any decoder, in one linear pass over the raw bytes: strings are cut out first (a
bracket inside a string does not nest) and only the brackets are counted.

:func:`decode` is msgspec's decoder behind that check, which also takes lone UTF-16 surrogate
escapes (``"\\ud800"``, which msgspec refuses) as U+FFFD instead of refusing the whole body.

Every decoder of a request body (the provider plugins, the Unblu endpoint, the sandbox) calls
it; plugin authors decoding JSON themselves should too.
"""

from __future__ import annotations

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

# A JSON string, escapes included; possessive so a long string is matched without backtracking.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_OPEN = frozenset(b"[{")


class JsonTooDeep(ValueError):
    """The JSON nests deeper than the limit; the message says so."""


def depth_problem(data: bytes | bytearray | memoryview, limit: int = MAX_DEPTH) -> str | None:
    """``None`` when ``data`` nests at most ``limit`` levels, else what is wrong.

    Malformed JSON is not this function's concern (the decoder names it): an unterminated
    string or stray bracket only makes the count approximate, never the pass slower.
    """
    brackets = _STRING.sub(b"", bytes(data)).translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return None
    depth = 0
    for byte in brackets:
        if byte in _OPEN:
            depth += 1
            if depth > limit:
                return f"JSON nested deeper than {limit} levels"
        else:
            depth -= 1
    return None


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
