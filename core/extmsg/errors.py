"""The exception hierarchy.

``HandledError`` and its subclasses are the user's own mistakes (bad config, a broken plugin):
the CLI prints them as one clean line and exits 2. Anything else is a bug and keeps its
traceback.

``DeliveryError`` leaves carry what a remote system said (HTTP status, provider error code) and
whether trying again can help; the delivery engine reads ``retryable`` and ``retry_after``.
"""

from __future__ import annotations

__all__ = [
    "BadInbound",
    "ConfigError",
    "DeliveryError",
    "ExtmsgError",
    "FetchRefused",
    "FetchTooLarge",
    "HandledError",
    "LeaseLost",
    "PermanentError",
    "PluginError",
    "RetryableError",
    "SignatureError",
    "StoreMissing",
]


class ExtmsgError(Exception):
    """Base of every error extmsg raises on purpose."""


class HandledError(ExtmsgError):
    """A problem the user can fix; shown as one line without a traceback."""

    exit_code = 2


class ConfigError(HandledError):
    """The configuration is invalid; ``problems`` holds one ``key: reason`` line each."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__("\n".join(problems) if problems else f"invalid {source}")


class StoreMissing(HandledError):
    """A command that only reads the store found none (it would not create one)."""


class PluginError(HandledError):
    """A plugin could not be loaded or does not fit the hook contract."""


class SignatureError(ExtmsgError):
    """An inbound request's signature is missing or wrong (answered with 403)."""


class BadInbound(ExtmsgError):
    """An inbound request is malformed (answered with 400 and this message)."""


class LeaseLost(ExtmsgError):
    """Another worker took the job over: its lease ran out while this one held it (the process
    stalled, or its database connection did). The job is not this worker's any more: it must
    not send, record or finish anything for it."""

    def __init__(self, job_id: int, fence: int) -> None:
        super().__init__(
            f"job {job_id} was taken over by another worker (its claim {fence} is not current)"
        )
        self.job_id = job_id
        self.fence = fence


class DeliveryError(ExtmsgError):
    """A remote call failed.

    :param message: what happened, readable by an agent (it may become Unblu's ``failureText``).
    :param status: the HTTP status the remote answered, if any.
    :param code: the provider's own error code (Twilio ``21610``, Meta ``131047``, SMTP ``550``).
    :param retry_after: seconds the remote asked us to wait (``Retry-After``), if any.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = None if code is None else str(code)
        self.retry_after = retry_after

    def __str__(self) -> str:
        tag = ", ".join(
            p
            for p in (
                f"status {self.status}" if self.status else "",
                f"code {self.code}" if self.code else "",
            )
            if p
        )
        return f"{self.message} ({tag})" if tag else self.message


class RetryableError(DeliveryError):
    """Trying again later may succeed (network, timeout, 5xx, throttling)."""

    retryable = True


class NotYet(RetryableError):
    """Not a failure: the job waits for something that usually arrives within moments (a
    provider's status that outran the record of the send it reports). Retried like any
    :class:`RetryableError`, but its retries are logged at DEBUG, not as warnings."""


class PermanentError(DeliveryError):
    """Trying again cannot succeed (invalid recipient, opted out, window closed)."""

    retryable = False


class FetchRefused(PermanentError):
    """A URL from outside was not fetched: its scheme, address or redirects break the rules of
    :mod:`extmsg.fetch`. The message names the reason and the URL without its query."""


class FetchTooLarge(PermanentError):
    """A fetched body outgrew its limit; the download was stopped there.

    :ivar limit: the limit in bytes.
    :ivar size: the announced size (``Content-Length``) or the bytes read when it stopped.
    """

    def __init__(self, message: str, *, limit: int, size: int, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.limit = limit
        self.size = size
