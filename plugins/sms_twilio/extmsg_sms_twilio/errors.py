"""Twilio's error codes as texts an agent can act on, and API failures as delivery errors.

The texts become Unblu's failure text, so they say what happened to the customer's message
and, where there is one, what to do. Twilio advises against branching on ``error_message``
(its wording changes); the numeric code is what is mapped here.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from extmsg.errors import DeliveryError, PermanentError, RetryableError

__all__ = [
    "ERROR_TEXTS",
    "RETRYABLE_CODES",
    "TwilioApiError",
    "describe_code",
    "error_from_response",
    "parse_retry_after",
]

#: Twilio error code → what it means for the customer's message.
ERROR_TEXTS: dict[str, str] = {
    "20003": "Twilio rejected this channel's credentials. Check the account SID and auth token "
    "in the channel settings.",
    "20404": "Twilio does not know this account or resource. Check the account SID in the "
    "channel settings.",
    "20429": "Twilio is receiving too many requests right now; the message will be retried.",
    "21211": "The customer's phone number is not a valid phone number.",
    "21212": "This channel's sending number is not a valid phone number. Check from_number in "
    "the channel settings.",
    "21408": "SMS to the customer's country is not enabled for this Twilio account (Messaging "
    "Geographic Permissions).",
    "21602": "The message has no text and no media, so there is nothing to send.",
    "21603": "The channel has no sending number. Set from_number or messaging_service_sid.",
    "21604": "The message has no recipient phone number.",
    "21606": "This channel's sending number cannot send SMS to the customer's number.",
    "21608": "The customer's number is not verified for this Twilio trial account.",
    "21610": "The customer replied STOP and has opted out of SMS from this number. They must "
    "text START before they can receive messages again.",
    "21612": "Twilio cannot send SMS from this channel's number to the customer's number.",
    "21614": "The customer's number cannot receive SMS (it is not a mobile number).",
    "21617": "The message is longer than the 1600 characters an SMS can carry.",
    "21635": "The customer's number is a landline and cannot receive SMS.",
    "21658": "A part of the message is over Twilio's size limit.",
    "30001": "Twilio's sending queue for this channel is full; the message was not sent.",
    "30002": "The Twilio account is suspended, so the message was not sent.",
    "30003": "The customer's phone is unreachable (switched off or out of coverage).",
    "30004": "The message was blocked: the customer's number does not accept messages from "
    "this sender.",
    "30005": "The customer's number is unknown to the carrier or no longer exists.",
    "30006": "The customer's number is a landline or its carrier cannot deliver SMS.",
    "30007": "The carrier filtered the message as spam or unwanted content.",
    "30008": "The carrier could not deliver the message for an unknown reason.",
    "30032": "The message was blocked: this channel's toll-free number is not verified.",
    "30034": "The message was blocked: this channel's number is not registered for US A2P "
    "10DLC messaging.",
}

#: Codes where trying the same request later can succeed.
RETRYABLE_CODES = frozenset({"20429", "30001"})


def describe_code(code: str | int | None, fallback: str | None = None) -> str:
    """A readable text for a Twilio error code (Twilio's own message, or a generic line)."""
    key = None if code is None else str(code).strip()
    if key and key in ERROR_TEXTS:
        return ERROR_TEXTS[key]
    if fallback:
        return fallback
    if key:
        return f"Twilio reported error {key} (https://www.twilio.com/docs/errors/{key})."
    return "Twilio reported a failure without an error code."


class TwilioApiError(msgspec.Struct, frozen=True, kw_only=True):
    """Twilio's JSON error body: ``{"code", "message", "more_info", "status"}``."""

    code: int | str | None = None
    message: str | None = None
    more_info: str | None = None
    status: int | None = None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# A number standing on its own (an id with digits in it stays readable); the lookbehind keeps
# the scan linear: a run of digits is tried from its start only.
_NUMBER = re.compile(r"(?<![A-Za-z0-9])\+?\d[\d ]{5,}\d(?![A-Za-z0-9])")


def _mask_numbers(text: str) -> str:
    """Twilio's messages quote phone numbers; failure texts end up in logs, so mask them."""
    return _NUMBER.sub(lambda m: m.group(0)[:4] + "***" + m.group(0)[-2:], text)


def _decode_error(body: bytes) -> TwilioApiError:
    try:
        return msgspec.json.decode(body, type=TwilioApiError)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return TwilioApiError()


def error_from_response(
    status: int, body: bytes, headers: Mapping[str, Any] | None = None
) -> DeliveryError:
    """The delivery error for a failed Twilio API call.

    429, Twilio code 20429 and any 5xx are retried (honouring ``Retry-After``); other 4xx
    cannot succeed as they are and become permanent failures with a readable text.
    """
    error = _decode_error(body)
    code = None if error.code is None else str(error.code)
    retry_after = parse_retry_after((headers or {}).get("Retry-After"))
    if status == 429 or status >= 500 or code in RETRYABLE_CODES:
        text = (
            describe_code(code)
            if code in ERROR_TEXTS
            else f"Twilio is temporarily unavailable (HTTP {status}); the message will be retried."
        )
        return RetryableError(text, status=status, code=code, retry_after=retry_after)
    if code in ERROR_TEXTS:
        return PermanentError(ERROR_TEXTS[code], status=status, code=code)
    if status in (401, 403):
        return PermanentError(ERROR_TEXTS["20003"], status=status, code=code)
    detail = _mask_numbers((error.message or "").strip())
    text = f"Twilio refused the message: {detail}" if detail else describe_code(code)
    if not detail and code is None:
        text = f"Twilio refused the message (HTTP {status})."
    return PermanentError(text, status=status, code=code)
