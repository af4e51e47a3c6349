"""Default error classification for the delivery engine."""

from __future__ import annotations

import asyncio

import aiohttp

from ..errors import DeliveryError, PluginError
from ..hookspecs import hookimpl
from ..models import Channel, ErrorVerdict

_RETRYABLE_STATUS = frozenset({408, 425, 429})


@hookimpl(trylast=True)
def extmsg_classify_error(channel: Channel | None, error: BaseException) -> ErrorVerdict:
    """Known error types by their nature; unknown ones are retried (they may be transient)."""
    if isinstance(error, DeliveryError):
        return ErrorVerdict(
            retryable=error.retryable,
            reason=error.message,
            retry_after=error.retry_after,
            code=error.code,
        )
    retryable = getattr(error, "retryable", None)
    if isinstance(retryable, bool):  # e.g. extmsg.unblu.errors.UnbluError
        return ErrorVerdict(
            retryable=retryable,
            reason=str(error),
            retry_after=getattr(error, "retry_after", None),
        )
    if isinstance(error, aiohttp.ClientResponseError):
        retry = error.status >= 500 or error.status in _RETRYABLE_STATUS
        return ErrorVerdict(retryable=retry, reason=f"HTTP {error.status}: {error.message}")
    if isinstance(error, aiohttp.ClientError | asyncio.TimeoutError | ConnectionError):
        return ErrorVerdict(retryable=True, reason=f"network error: {type(error).__name__}")
    if isinstance(error, PluginError):
        return ErrorVerdict(retryable=False, reason=str(error))
    return ErrorVerdict(retryable=True, reason=f"unexpected error: {type(error).__name__}")
