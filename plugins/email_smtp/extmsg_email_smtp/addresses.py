"""Mail addresses: normalizing, plus-addressing, which channel a recipient belongs to, masks."""

from __future__ import annotations

import re
from collections.abc import Iterable
from email.headerregistry import Address
from email.utils import getaddresses, parseaddr

__all__ = [
    "base_address",
    "is_valid",
    "mask",
    "normalize",
    "parse_mailbox",
    "recipient_matches",
    "split_plus",
]

# Deliberately simple: what an agent types or a header carries, not the full RFC 5322 grammar.
_VALID = re.compile(
    r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
    r"|^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@localhost$",
    re.IGNORECASE,
)


def normalize(address: str) -> str:
    """An address as we key contacts: trimmed, brackets gone, lower-cased."""
    return address.strip().strip("<>").strip().lower()


def is_valid(address: str) -> bool:
    return len(address) <= 254 and bool(_VALID.match(address)) and ".." not in address


def parse_mailbox(value: str | None) -> tuple[str, str]:
    """``(display name, normalized address)`` of a From-style header value."""
    if not value:
        return "", ""
    name, addr = parseaddr(str(value))
    return name.strip(), normalize(addr)


def all_addresses(values: Iterable[str | None]) -> list[str]:
    """Every address in address-list header values (To, Cc, Delivered-To), normalized."""
    found = getaddresses([str(v) for v in values if v])
    return [normalize(addr) for _, addr in found if "@" in addr]


def split_plus(address: str) -> tuple[str, str | None, str]:
    """``local+detail@domain`` → ``("local", "detail", "domain")``; no detail → ``None``."""
    local, _, domain = normalize(address).rpartition("@")
    base, plus, detail = local.partition("+")
    return base, (detail if plus else None), domain


def base_address(address: str) -> str:
    """The address without its ``+detail``."""
    local, _, domain = split_plus(address)
    return f"{local}@{domain}"


def recipient_matches(recipient: str, address: str, allowed: Iterable[str]) -> bool:
    """Whether the listener takes ``recipient`` for a channel with this address and allow-list.

    The channel's address counts with any ``+detail``; ``allowed`` entries are exact addresses
    (also with ``+detail``) or ``@domain`` for every mailbox of a domain.
    """
    rcpt = base_address(recipient)
    _, _, domain = rcpt.partition("@")
    if rcpt == normalize(address):
        return True
    for entry in allowed:
        entry = normalize(entry)
        if entry.startswith("@"):
            if domain == entry[1:]:
                return True
        elif rcpt == base_address(entry):
            return True
    return False


def mask(address: str | None) -> str:
    """``"j…e@example.com"``: enough to tell contacts apart in a log, not to read the mailbox.

    A domain longer than a real one (253 characters) shows its last 64.
    """
    if not address:
        return "-"
    local, at, domain = address.rpartition("@")
    if not at:
        return "…" + address[-4:] if len(address) > 6 else "…"
    if len(domain) > 253:
        domain = "…" + domain[-64:]
    if len(local) <= 2:
        return f"…@{domain}"
    return f"{local[0]}…{local[-1]}@{domain}"


def formatted(name: str | None, address: str) -> str:
    """A header value ``"Name" <address>`` with the name encoded as needed."""
    local, _, domain = address.rpartition("@")
    clean = " ".join((name or "").split())  # no line breaks in a header
    return str(Address(display_name=clean, username=local, domain=domain))
