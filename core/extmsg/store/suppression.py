"""Opt-outs that outlive the erasure of a contact, kept without its address.

Erasing an opted-out contact (``extmsg contacts forget``) leaves a suppression entry: the
HMAC-SHA256 of the channel and the normalized address, with the opt-out's reason and time.
Where the store answers for a contact it has no row of, an entry makes it opted out; a
contact row created for that address starts opted out (the row then carries the flag, and
the entry goes); an opt-in (e.g. the customer texts START) clears it.

The HMAC key is 32 random bytes the store makes for itself the first time it keeps an entry
(table ``store_keys``, name ``suppression``), so nothing is to be configured and every
instance on one store uses the same key. It never changes: without it the entries match
nothing. What it buys: the store holds no erased address in clear and no list of them can
be read back; whoever holds the whole store (key included) can still test a given address,
as extmsg itself must.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["KEY_NAME", "address_hash", "new_key"]

#: The row of ``store_keys`` that holds the HMAC key.
KEY_NAME = "suppression"


def new_key() -> bytes:
    return secrets.token_bytes(32)


def normalize(address: str) -> str:
    """The address as hashed: messengers normalize already (E.164, a lower-cased mailbox);
    case and surrounding space are dropped again so no spelling escapes its entry."""
    return address.strip().casefold()


def address_hash(key: bytes, channel: str, address: str) -> str:
    """The keyed hash that stands for ``address`` on ``channel`` (hex)."""
    message = f"{channel}\x00{normalize(address)}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()
