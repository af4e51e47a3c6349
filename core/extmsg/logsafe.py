"""Masking for what goes to logs: phone numbers and mail addresses are never shown in full.

:func:`mask_address` is for one contact identifier, :func:`mask` for free text (lanes, error
reasons) that may contain any number of them. Plugins use the same two.
"""

from __future__ import annotations

import re

__all__ = ["mask", "mask_address"]

_EMAIL = re.compile(r"([A-Za-z0-9])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_NUMBER = re.compile(r"\+?\d[\d ()./-]{4,}\d")


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


def mask(text: str | None) -> str:
    """``text`` with mail addresses reduced to ``a***@domain`` and every number of six digits
    or more reduced to its last two digits."""
    if not text:
        return ""
    text = _EMAIL.sub(r"\1***@\2", text)
    return _NUMBER.sub(_number, text)


def mask_address(address: str | None) -> str:
    """One contact identifier, enough to tell contacts apart but not to reach them.

    ``+41791234567`` → ``+417******67``; ``jane.doe@example.org`` → ``j…e@example.org``;
    ``whatsapp:+4179…`` keeps its scheme; other ids keep their last four characters.
    """
    if not address:
        return "-"
    scheme, sep, rest = address.rpartition(":")
    head = f"{scheme}:" if sep and "@" not in scheme else ""
    value = rest if head else address
    local, at, domain = value.rpartition("@")
    if at:
        return head + (f"…@{domain}" if len(local) <= 2 else f"{local[0]}…{local[-1]}@{domain}")
    digits = value.lstrip("+")
    if digits.isdigit():
        if len(value) <= 6:
            return head + "*" * len(value)
        return f"{head}{value[:4]}{'*' * (len(value) - 6)}{value[-2:]}"
    return head + ("…" + value[-4:] if len(value) > 6 else "…")
