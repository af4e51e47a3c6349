"""SMTP failures → the core's retryable or permanent delivery errors.

4xx replies, timeouts and connection trouble are worth another try; 5xx replies are final for
this message, and their text (the server's own words) is what the agent reads in Unblu.
"""

from __future__ import annotations

import ssl

import aiosmtplib

from extmsg.errors import DeliveryError, PermanentError, RetryableError

__all__ = ["from_smtp_error"]


def _reply(code: int, message: str) -> str:
    return " ".join(f"{code} {message}".split())


def _by_code(code: int, message: str, what: str) -> DeliveryError:
    said = _reply(code, message)
    if 400 <= code < 500:
        return RetryableError(
            f"The mail server asked to try again later ({what}): {said}", code=code
        )
    return PermanentError(f"The mail server refused {what}: {said}", code=code)


def from_smtp_error(error: BaseException, recipient: str) -> DeliveryError:
    """The delivery error for one failed send to ``recipient``."""
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused) and error.recipients:
        first = error.recipients[0]
        return _by_code(first.code, first.message, f"the address {recipient}")
    if isinstance(error, aiosmtplib.SMTPRecipientRefused):
        return _by_code(error.code, error.message, f"the address {recipient}")
    if isinstance(error, aiosmtplib.SMTPAuthenticationError):
        if 400 <= error.code < 500:
            return _by_code(error.code, error.message, "the login")
        return PermanentError(
            "The mail server refused the channel's SMTP login; check smtp_username and "
            f"smtp_password: {_reply(error.code, error.message)}",
            code=error.code,
        )
    if isinstance(error, aiosmtplib.SMTPSenderRefused):
        return _by_code(error.code, error.message, "the channel's sender address")
    if isinstance(error, aiosmtplib.SMTPDataError):
        return _by_code(error.code, error.message, "the message")
    if isinstance(error, aiosmtplib.SMTPResponseException) and not isinstance(
        error, aiosmtplib.SMTPConnectResponseError
    ):
        return _by_code(error.code, error.message, "the message")
    if isinstance(error, ssl.SSLCertVerificationError):
        return RetryableError(
            "The mail server's TLS certificate could not be verified; check smtp_host "
            f"and the server's certificate: {error.verify_message or error}"
        )
    if isinstance(error, aiosmtplib.SMTPException | OSError | TimeoutError):
        return RetryableError(f"Could not reach the mail server: {type(error).__name__}: {error}")
    return RetryableError(f"Sending the email failed: {type(error).__name__}: {error}")
