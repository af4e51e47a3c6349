"""What enters from outside, made safe to store and send: text normalised, lengths capped.

**Lone surrogates.** JSON may escape half of a UTF-16 surrogate pair (``"\\ud800"``); Python's
``json`` decodes it into a ``str`` that cannot be encoded as UTF-8, so the job carrying it fails
to encode, and with it the whole batch it arrived in, on every retry of the provider.
:func:`scrub` replaces each lone surrogate with U+FFFD (the replacement character) in every
string of a value, before anything is encoded or stored.

**Lengths.** Ids, addresses and threads become keys of the store (dedup, lanes, conversation
links); an absurd one is a malformed request, refused with a 400 that names the field
(:func:`check_lengths`) before anything of the request is stored. The limits are far above
every documented format:

* a provider message id: Twilio's SIDs are 34 characters, WhatsApp's ``wamid.…`` ids under
  100, an email ``Message-ID`` at most one 998-character header line (RFC 5322 §2.1.1):
  :data:`MAX_ID` = 1,000;
* an address: an E.164 number has at most 15 digits, a mailbox at most 254 characters
  (RFC 5321 §4.5.3.1.3 limits the path to 256 with its brackets), a WhatsApp user id is short:
  :data:`MAX_ADDRESS` = 512, room for a messenger's prefix;
* a thread (the conversation key, often derived from an address or a Message-ID) and the
  other references (``reply_to``, a status's ``message_ref``): :data:`MAX_ID`.

A contact's name is display only: longer than :data:`MAX_NAME` it is cut, never refused (Unblu
takes fewer still; the Unblu client fits each field to Unblu's own limits).
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from .errors import BadInbound

__all__ = [
    "MAX_ADDRESS",
    "MAX_ID",
    "MAX_NAME",
    "check_length",
    "clean",
    "scrub",
    "truncate",
]

MAX_ID = 1000
MAX_ADDRESS = 512
MAX_NAME = 1000

T = TypeVar("T")

# Python never holds a valid pair as two code points: every surrogate in a str is a lone one.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Encodes a value only to learn whether it holds a lone surrogate (see :func:`scrub`).
_PROBE = msgspec.msgpack.Encoder()


def clean(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (the same object when none)."""
    if _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", text)


def scrub(value: T) -> T:
    """``value`` with :func:`clean` applied to every string in it: Structs, tuples, lists and
    dicts are walked (keys too); an unchanged part is returned as the same object."""
    try:
        # Whether there is any, for a small part of the walk's cost: msgspec writes every
        # string it meets as UTF-8, and refuses a lone surrogate. A value it cannot encode is
        # walked as well.
        _PROBE.encode(value)
    except Exception:
        out: Any = _scrub(value)
        return out  # type: ignore[no-any-return]
    return value


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, msgspec.Struct):
        changes = {}
        for name in value.__struct_fields__:
            item = getattr(value, name)
            new = _scrub(item)
            if new is not item:
                changes[name] = new
        return msgspec.structs.replace(value, **changes) if changes else value
    if isinstance(value, (tuple, list)):
        items = [_scrub(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        pairs = [(_scrub(k), _scrub(v)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(pairs, value.items(), strict=True)):
            return value
        return dict(pairs)
    return value


def check_length(field: str, value: str | None, limit: int) -> None:
    """Refuse (:class:`BadInbound`, naming ``field``) a value longer than ``limit``."""
    if value is not None and len(value) > limit:
        raise BadInbound(f"{field} is {len(value)} characters long; at most {limit} are accepted")


def truncate(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters, the cut marked with ``…``."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"
