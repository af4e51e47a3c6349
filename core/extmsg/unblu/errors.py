"""Errors raised by the Unblu web API client.

One exception type carries everything the delivery engine needs to decide what to do next:
the HTTP status (``None`` when no response arrived), Unblu's own ``errorMessage`` from its
``Error`` body, the operation as a path template (never the concrete URL, which can carry
phone numbers in its query), whether a retry can help, and how long the server asked us to wait.
Messages never contain request bodies or credentials.
"""

from __future__ import annotations

import email.utils
import time

__all__ = ["UnbluError", "UnbluNotFound", "parse_retry_after"]

_MAX_MESSAGE = 500


class UnbluError(Exception):
    """A call to the Unblu web API failed.

    ``retryable`` is True for network errors, timeouts, HTTP 408, 429 and 5xx; other 4xx mean
    the request itself is wrong (or refers to something gone) and repeating it will not help.
    Pass ``retryable`` explicitly to override that rule.
    """

    def __init__(
        self,
        operation: str,
        *,
        status: int | None = None,
        error_message: str | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.operation = operation
        self.status = status
        self.error_message = _clip(error_message) if error_message else None
        self.retry_after = retry_after
        self._retryable = retryable
        super().__init__(self._describe())

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later."""
        if self._retryable is not None:
            return self._retryable
        if self.status is None:
            return True
        return self.status in (408, 429) or self.status >= 500

    def _describe(self) -> str:
        where = f"{self.operation}: " if self.operation else ""
        head = "network error" if self.status is None else f"HTTP {self.status}"
        text = f"{where}{head}"
        if self.error_message:
            text += f" - {self.error_message}"
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after:g}s)"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(operation={self.operation!r}, status={self.status!r}, "
            f"error_message={self.error_message!r}, retryable={self.retryable!r})"
        )


class UnbluNotFound(UnbluError):
    """HTTP 404: the channel, conversation, person or message does not exist (any more)."""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        current = time.time() if now is None else now
        return max(0.0, when.timestamp() - current)
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return seconds


def _clip(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > _MAX_MESSAGE:
        return text[: _MAX_MESSAGE - 1] + "…"
    return text
