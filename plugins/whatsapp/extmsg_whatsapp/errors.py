"""Graph API errors: which are worth retrying, and what an agent should read about them.

Meta answers ``{"error": {"code", "message", "error_data": {"details"}, "is_transient", …}}``
and reports asynchronous failures as ``errors[]`` of a ``failed`` status. Decisions rest on the
numeric code (titles change, ``error_subcode`` is gone since v16.0); unknown codes fall back on
``is_transient`` and the HTTP status. The texts become Unblu's failure text, so they are written
for the agent who sent the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from extmsg.errors import DeliveryError, PermanentError, RetryableError

__all__ = [
    "CODES",
    "describe",
    "from_response",
    "from_status_errors",
    "network_error",
]

_RETRY_LATER = "the message will be sent again shortly."
_TEMPORARY = "WhatsApp had a temporary problem; " + _RETRY_LATER
_INVALID = "WhatsApp rejected the message as invalid"
_EXPIRED_CREDENTIALS = (
    "The channel's WhatsApp access token has expired or was revoked; "
    "an administrator must renew it."
)
_PERMISSION = (
    "The channel's WhatsApp access token lacks a permission it needs "
    "(whatsapp_business_messaging); an administrator must fix it."
)

#: code → (retryable, text for the agent)
CODES: Mapping[int, tuple[bool, str]] = {
    # temporary or throttling
    1: (True, _TEMPORARY),
    2: (True, _TEMPORARY),
    4: (True, "The WhatsApp app made too many calls; " + _RETRY_LATER),
    80007: (True, "The WhatsApp business account reached its rate limit; " + _RETRY_LATER),
    130429: (True, "WhatsApp's sending rate for this number was reached; " + _RETRY_LATER),
    131048: (
        True,
        "WhatsApp is limiting this number because of spam reports; the message will be "
        "retried later.",
    ),
    131056: (
        True,
        "Too many messages went to this contact in a short time; " + _RETRY_LATER,
    ),
    131000: (True, _TEMPORARY),
    131016: (True, _TEMPORARY),
    131057: (True, "The WhatsApp business account is in maintenance; " + _RETRY_LATER),
    133004: (True, _TEMPORARY),
    # the contact or the window
    131047: (
        False,
        "The contact last wrote more than 24 hours ago, so WhatsApp only accepts an approved "
        "template now. The message can be sent once the contact writes again.",
    ),
    131026: (
        False,
        "WhatsApp could not deliver the message: the number may not use WhatsApp, or the "
        "contact has not accepted WhatsApp's current terms or uses an outdated app.",
    ),
    131049: (
        False,
        "WhatsApp held the message back to protect the contact's experience; try again in a day.",
    ),
    131050: (False, "The contact has stopped marketing messages from this business."),
    131051: (False, "WhatsApp does not support this kind of message."),
    131052: (False, "WhatsApp could not download the file of this message."),
    131053: (
        False,
        "WhatsApp could not process the file; check that its type and size are supported.",
    ),
    131021: (False, "A message cannot be sent to the business's own number."),
    131030: (
        False,
        "This number is not on the allowed list of the WhatsApp test number; add it in the "
        "app dashboard or use a production number.",
    ),
    131062: (False, "This number cannot send to a contact known only by a business-scoped id."),
    130497: (False, "This business may not message contacts in the contact's country."),
    137000: (
        False,
        "The contact's WhatsApp identity changed; the message was not sent for safety.",
    ),
    # templates
    132000: (
        False,
        "The WhatsApp template's parameters do not match the approved template; check the "
        "channel's template settings.",
    ),
    132001: (
        False,
        "The channel's WhatsApp template does not exist in that language; check "
        "template_name and template_language.",
    ),
    132005: (False, "The text is too long for the WhatsApp template."),
    132007: (False, "The text breaks WhatsApp's formatting rules for templates."),
    132012: (False, "The WhatsApp template parameters have the wrong format."),
    132015: (False, "The channel's WhatsApp template is paused for low quality."),
    132016: (False, "The channel's WhatsApp template is disabled."),
    # the request or the account
    100: (False, _INVALID),
    131008: (False, _INVALID + " (a required parameter is missing)"),
    131009: (False, _INVALID + " (a parameter value is not valid)"),
    0: (False, _EXPIRED_CREDENTIALS),
    190: (False, _EXPIRED_CREDENTIALS),
    3: (False, _PERMISSION),
    10: (False, _PERMISSION),
    368: (False, "The WhatsApp business account is temporarily blocked for policy violations."),
    131031: (False, "The WhatsApp business account is locked."),
    131037: (False, "The WhatsApp number's display name is not approved yet."),
    131042: (False, "The WhatsApp business account has a payment problem."),
    131044: (False, "The WhatsApp business account has a payment problem."),
    135000: (False, "WhatsApp refused the message with a generic error."),
}

#: codes whose Meta details help the agent (which parameter was wrong).
_WITH_DETAILS = frozenset({100, 131008, 131009, 132000, 132012})


def describe(
    code: int | None,
    *,
    status: int | None = None,
    details: str | None = None,
    message: str | None = None,
    transient: bool | None = None,
) -> tuple[bool, str]:
    """(retryable, text for the agent) for a Graph error code."""
    if code is not None and code in CODES:
        retryable, text = CODES[code]
        if details and code in _WITH_DETAILS:
            text = f"{text}: {details}"
        return retryable, text if text.endswith((".", "!", "?")) else text + "."
    if code is not None and 200 <= code <= 299:
        return False, _PERMISSION
    if code is not None and 132000 <= code <= 132099:
        return False, f"WhatsApp refused the template message (template error {code})."
    if transient or (status is not None and (status >= 500 or status == 429)):
        return True, _TEMPORARY
    reason = details or message or (f"HTTP {status}" if status else "unknown error")
    return False, f"WhatsApp refused the message: {reason}"


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _details(error: Mapping[str, Any]) -> str | None:
    data = error.get("error_data")
    if isinstance(data, Mapping) and isinstance(data.get("details"), str):
        return str(data["details"])
    return None


def from_response(status: int, payload: Any, *, retry_after: float | None = None) -> DeliveryError:
    """The error to raise for a non-2xx Graph API answer (``payload``: the parsed JSON or None)."""
    error = payload.get("error") if isinstance(payload, Mapping) else None
    if not isinstance(error, Mapping):
        retryable, text = describe(None, status=status)
        cls = RetryableError if retryable else PermanentError
        return cls(text, status=status, retry_after=retry_after)
    code = _int(error.get("code"))
    message = error.get("message") if isinstance(error.get("message"), str) else None
    transient = error.get("is_transient") if isinstance(error.get("is_transient"), bool) else None
    retryable, text = describe(
        code, status=status, details=_details(error), message=message, transient=transient
    )
    cls = RetryableError if retryable else PermanentError
    return cls(text, status=status, code=code, retry_after=retry_after)


def from_status_errors(errors: Any) -> tuple[str | None, str | None]:
    """(error_code, error_text) for the ``errors[]`` of a ``failed`` status webhook."""
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], Mapping):
        return None, None
    first = errors[0]
    code = _int(first.get("code"))
    title = first.get("title") if isinstance(first.get("title"), str) else None
    message = first.get("message") if isinstance(first.get("message"), str) else None
    _, text = describe(code, details=_details(first), message=message or title)
    return (None if code is None else str(code)), text


def network_error(exc: BaseException) -> RetryableError:
    """A transport failure: WhatsApp may not have seen the request at all."""
    kind = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
    if isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
        return RetryableError(f"Could not reach WhatsApp ({kind}); " + _RETRY_LATER)
    return RetryableError(f"Unexpected problem talking to WhatsApp ({kind}); " + _RETRY_LATER)
