"""How many SMS segments a text costs (GSM 03.38 and UCS-2 rules).

A text made only of GSM-7 characters is sent in 7-bit septets: 160 in a single SMS, 153 per
segment once split (the rest is the concatenation header); extension-table characters take
two septets (escape + code) and never straddle a segment boundary. Any other character switches
the whole text to UCS-2: 70 UTF-16 code units single, 67 per segment, and a surrogate pair
(most emoji) takes two units that are not split either.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["GSM7_BASIC", "GSM7_EXTENDED", "SegmentInfo", "count_segments", "is_gsm7"]

#: The GSM 03.38 default alphabet (the escape code 0x1B is not a character of its own).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: The extension table: each costs an escape septet plus its own.
GSM7_EXTENDED = frozenset("\f^{}\\[~]|€")

Encoding = Literal["GSM-7", "UCS-2"]

_LIMITS: dict[Encoding, tuple[int, int]] = {"GSM-7": (160, 153), "UCS-2": (70, 67)}


class SegmentInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A text's encoding, its length in septets or code units, and its segment count."""

    encoding: Encoding
    units: int
    segments: int


def is_gsm7(text: str) -> bool:
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text)


def _cost(ch: str, encoding: Encoding) -> int:
    if encoding == "GSM-7":
        return 2 if ch in GSM7_EXTENDED else 1
    return 2 if ord(ch) > 0xFFFF else 1


def count_segments(text: str) -> SegmentInfo:
    """The segments ``text`` is billed as (an empty text still is one SMS)."""
    encoding: Encoding = "GSM-7" if is_gsm7(text) else "UCS-2"
    single, multi = _LIMITS[encoding]
    costs = [_cost(ch, encoding) for ch in text]
    units = sum(costs)
    if units <= single:
        return SegmentInfo(encoding=encoding, units=units, segments=1)
    segments, used = 1, 0
    for cost in costs:
        if used + cost > multi:
            segments += 1
            used = 0
        used += cost
    return SegmentInfo(encoding=encoding, units=units, segments=segments)
