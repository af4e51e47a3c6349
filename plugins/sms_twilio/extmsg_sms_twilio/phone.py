"""Phone numbers: E.164 normalization for contacts."""

from __future__ import annotations

import functools

import phonenumbers

from extmsg.models import ContactCheck

__all__ = ["normalize_inbound", "validate_typed"]

_E164 = phonenumbers.PhoneNumberFormat.E164
#: Addresses up to this long are remembered once normalized (a number, with a scheme).
_CACHED_LENGTH = 64


def normalize_inbound(address: str) -> str:
    """Twilio's ``From`` as E.164; other shapes (short codes, ``whatsapp:…``) kept as sent.

    Inbound numbers come from the carrier, so anything phonenumbers can parse is accepted
    even when its metadata does not know the range yet: refusing would lose the message.
    A ``scheme:`` prefix (``whatsapp:+41…``) is kept, with the number part normalized, so
    replies reach the same address.
    """
    address = address.strip()
    if len(address) <= _CACHED_LENGTH:
        # Parsing costs more than the rest of the webhook's parsing; contacts write again.
        return _normalized(address)
    return _normalize(address)


@functools.lru_cache(maxsize=4096)
def _normalized(address: str) -> str:
    return _normalize(address)


def _normalize(address: str) -> str:
    scheme, sep, rest = address.rpartition(":")
    number = rest if sep else address
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return address
    if not phonenumbers.is_possible_number(parsed):
        return address
    e164 = phonenumbers.format_number(parsed, _E164)
    return f"{scheme}:{e164}" if sep else e164


def validate_typed(identifier: str, default_region: str | None) -> ContactCheck:
    """Check a number an agent typed; answer its E.164 form or a reason a person understands."""
    raw = identifier.strip()
    if raw.lower().startswith("tel:"):
        raw = raw[4:].strip()
    if not raw:
        return ContactCheck(valid=False, error="Enter the customer's mobile number.")
    if not any(ch.isdigit() for ch in raw):
        return ContactCheck(valid=False, error=f"{raw!r} is not a phone number.")
    if raw.startswith("00"):
        raw = "+" + raw[2:]
    if not raw.startswith("+") and default_region is None:
        return ContactCheck(
            valid=False,
            error=f"Enter {raw!r} in international format, starting with + and the country code.",
        )
    try:
        parsed = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        return ContactCheck(valid=False, error=f"{raw!r} is not a phone number.")
    if not phonenumbers.is_valid_number(parsed):
        return ContactCheck(valid=False, error=f"{raw!r} is not a valid phone number.")
    return ContactCheck(valid=True, address=phonenumbers.format_number(parsed, _E164))
