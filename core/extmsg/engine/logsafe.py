"""Masking for text that goes to logs: lanes and error reasons can hold phone numbers and
mail addresses, which the logs must not show in full."""

from __future__ import annotations

import re

__all__ = ["mask"]

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
