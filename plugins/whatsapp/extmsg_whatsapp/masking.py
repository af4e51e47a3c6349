"""Contact identifiers as they may appear in logs."""

from __future__ import annotations

__all__ = ["mask"]


def mask(address: str | None) -> str:
    """``"…1234"``: enough to tell contacts apart in a log, not enough to identify them."""
    if not address:
        return "-"
    tail = address[-4:] if len(address) > 6 else address[-2:]
    return "…" + tail
