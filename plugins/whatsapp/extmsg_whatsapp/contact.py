"""What an agent may type as a WhatsApp contact: a phone number or a business-scoped user id."""

from __future__ import annotations

import re

from extmsg.models import ContactCheck

__all__ = ["validate_contact"]

_BSUID = re.compile(r"^[A-Z]{2}(\.ENT)?\.[A-Za-z0-9]{1,128}$")
_PHONE_NOISE = re.compile(r"[\s\-().]")


def validate_contact(identifier: str) -> ContactCheck:
    """A WhatsApp id: international number as digits (``+``, spaces, dashes dropped) or a BSUID."""
    raw = identifier.strip()
    if _BSUID.match(raw):
        return ContactCheck(valid=True, address=raw)
    digits = _PHONE_NOISE.sub("", raw)
    if digits.startswith("+"):
        digits = digits[1:]
    elif digits.startswith("00"):
        digits = digits[2:]
    if not digits:
        return ContactCheck(valid=False, error="Enter the contact's WhatsApp number.")
    if not digits.isdigit():
        return ContactCheck(
            valid=False, error="A WhatsApp number may only contain digits, e.g. +41 79 123 45 67."
        )
    if digits.startswith("0") or not 8 <= len(digits) <= 15:
        return ContactCheck(
            valid=False,
            error="Enter the number in international format with its country code, "
            "e.g. +41 79 123 45 67.",
        )
    return ContactCheck(valid=True, address=digits)
