"""Compare a secret with what a request brought, in constant time, whatever the request holds.

``hmac.compare_digest`` raises ``TypeError`` for a ``str`` with a non-ASCII character, and
``str.encode()`` raises for the lone surrogates a header or query can decode to (aiohttp keeps
undecodable header bytes as surrogate escapes). Either turned a malformed signature into a 500.
:func:`equal` compares bytes, encoding any text so that no input can raise: a malformed value
is simply not equal.
"""

from __future__ import annotations

import hmac

__all__ = ["equal"]


def _bytes(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8", "surrogatepass")


def equal(given: str | bytes, expected: str | bytes) -> bool:
    """Whether ``given`` equals ``expected``, in time independent of where they differ."""
    return hmac.compare_digest(_bytes(given), _bytes(expected))
