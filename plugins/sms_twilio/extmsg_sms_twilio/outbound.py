"""Agent messages to SMS: rendering (prefix, split, segment guard) and the Messages API call."""

from __future__ import annotations

import functools
import logging
import re
import string
from typing import NamedTuple
from urllib.parse import quote

import aiohttp
import msgspec
import yarl

from extmsg import logcontext
from extmsg.errors import DeliveryError, PermanentError, RetryableError
from extmsg.logsafe import mask_address as mask
from extmsg.models import Channel, OutboundMessage, SendResult
from extmsg.rendering import next_chunk, prefix_text

from .errors import describe_code, error_from_response
from .segments import count_segments
from .session import basic_auth
from .settings import TWILIO_MAX_BODY, TwilioSettings

__all__ = [
    "form_encode",
    "messages_url",
    "render",
    "send",
    "send_form",
    "split_body",
    "status_callback_url",
]

log = logging.getLogger("extmsg.sms_twilio")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _fitting(text: str, start: int, units: int) -> int:
    """How many characters of ``text`` from ``start`` fit in ``units`` UTF-16 code units."""
    window = text[start : start + units]
    if window.isascii():
        return len(window)
    if _SURROGATE.search(window) is None:
        # In C: the window's first ``units`` code units, less half a pair cut in two.
        encoded = window.encode("utf-16-le")[: 2 * units]
        return len(encoded.decode("utf-16-le", errors="ignore"))
    used = 0  # a text with lone surrogates (each one unit): count one by one
    for index, ch in enumerate(window):
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > units:
            return index
    return len(window)


def split_body(text: str) -> list[str]:
    """``text`` in parts Twilio accepts as one ``Body`` each, cut on word boundaries.

    Twilio's 1600 counts UTF-16 code units, so emoji (two units each) shorten a part.
    Linear in the length of ``text``.
    """
    parts: list[str] = []
    start = 0
    while True:
        limit = _fitting(text, start, TWILIO_MAX_BODY)
        if start + limit >= len(text):
            parts.append(text[start:])
            return parts
        chunk, start = next_chunk(text, start, limit)
        parts.append(chunk)
        if start >= len(text):
            return parts


def render(channel: Channel, message: OutboundMessage) -> list[OutboundMessage]:
    """The sender prefix, then one message per 1600-character part.

    :raises PermanentError: the parts sent as SMS together cost more than ``max_segments``
        segments.
    """
    settings: TwilioSettings = channel.settings
    message = prefix_text(channel, message)
    if not message.text:
        return [message]
    parts = split_body(message.text)
    # With a file, the last part travels with it as MMS; the parts before it are SMS.
    _check_segments(parts if message.attachment is None else parts[:-1], settings.max_segments)
    rendered = [
        msgspec.structs.replace(message, text=part, part=index) for index, part in enumerate(parts)
    ]
    if message.attachment is not None and len(rendered) > 1:
        # The file travels with the last part, after the text that introduces it.
        rendered = [msgspec.structs.replace(m, attachment=None) for m in rendered[:-1]] + [
            rendered[-1]
        ]
    return rendered


def _check_segments(parts: list[str], most: int) -> None:
    """Refuse parts that cost more than ``most`` segments together.

    Counting stops at the first part beyond ``most``, so a huge text costs no more to refuse
    than ``most`` parts do.
    """
    total = 0
    for counted, part in enumerate(parts, 1):
        total += count_segments(part).segments
        if total > most:
            amount = f"{total}" if counted == len(parts) else f"more than {most}"
            raise PermanentError(
                f"This message is too long for SMS: it would be sent as {amount} segments and "
                f"this channel allows at most {most}. Please shorten it."
            )


def messages_url(settings: TwilioSettings) -> str:
    return f"{settings.api_root}/2010-04-01/Accounts/{settings.account_sid}/Messages.json"


def status_callback_url(channel: Channel, message: OutboundMessage) -> str:
    """The channel's status route with our message id, which Twilio echoes in the URL."""
    return f"{channel.route_url('status')}?ref={quote(message.id, safe='')}"


def send_form(channel: Channel, message: OutboundMessage) -> list[tuple[str, str]]:
    """The Messages API form for one rendered message.

    :raises PermanentError: nothing to send, or a file without a public URL.
    """
    settings: TwilioSettings = channel.settings
    form: list[tuple[str, str]] = [("To", message.contact.address)]
    if settings.messaging_service_sid:
        form.append(("MessagingServiceSid", settings.messaging_service_sid))
    else:
        form.append(("From", settings.from_number or ""))
    attachment = message.attachment
    body = message.text or (attachment.caption if attachment is not None else None)
    if body:
        form.append(("Body", body))
    if attachment is not None:
        if not attachment.url:
            raise PermanentError(
                "This channel cannot send files without a public media URL; the file "
                f"{attachment.file_name!r} was not sent."
            )
        form.append(("MediaUrl", attachment.url))
    if not body and attachment is None:
        raise PermanentError(describe_code("21602"), code="21602")
    if settings.status_callback:
        form.append(("StatusCallback", status_callback_url(channel, message)))
    return form


_FORM_SAFE = frozenset(string.ascii_letters + string.digits + "_.-~")
#: What ``quote_plus`` makes of each byte (as the Latin-1 character of that byte): ASCII
#: letters, digits and ``_.-~`` stay, the space becomes ``+``, anything else ``%XX``.
_FORM_BYTES = [
    chr(i) if chr(i) in _FORM_SAFE else "+" if i == 0x20 else f"%{i:02X}" for i in range(256)
]


def _form_value(text: str) -> str:
    if not text.isascii():
        # UTF-8 bytes, one character each; a lone surrogate raises as in ``quote_plus``.
        text = text.encode().decode("latin-1")
    return text.translate(_FORM_BYTES)


def form_encode(pairs: list[tuple[str, str]]) -> bytes:
    """``urlencode(pairs).encode()``, byte for byte, at a fraction of its cost: ``quote_plus``
    looks at every byte of a value in Python once it has one to escape (a phone number's
    ``+``, a URL's ``:``), which made the form the dearest part of a send; ``str.translate``
    does the same in C."""
    return "&".join([f"{_form_value(k)}={_form_value(v)}" for k, v in pairs]).encode()


class _Api(NamedTuple):
    """What every send of one account repeats: worked out once per settings."""

    url: yarl.URL
    authorization: str
    timeout: aiohttp.ClientTimeout


@functools.lru_cache(maxsize=256)
def _api(settings: TwilioSettings) -> _Api:
    return _Api(
        yarl.URL(messages_url(settings)),
        basic_auth(settings.account_sid, settings.auth_token),
        aiohttp.ClientTimeout(total=settings.timeout),
    )


class _Created(msgspec.Struct, kw_only=True):
    sid: str
    status: str | None = None
    error_code: int | str | None = None
    error_message: str | None = None


async def send(
    session: aiohttp.ClientSession, channel: Channel, message: OutboundMessage
) -> SendResult:
    """Create the message through Twilio's Messages API.

    :raises RetryableError: throttling, 5xx, network trouble or a timeout.
    :raises PermanentError: Twilio refused the message (see :mod:`.errors`).
    """
    api = _api(channel.settings)
    # Encoded here, as aiohttp's FormData would, without its per-call multipart set-up.
    form = form_encode(send_form(channel, message))
    headers = {
        "Accept": "application/json",
        "Authorization": api.authorization,
        "Content-Type": "application/x-www-form-urlencoded",
        **logcontext.outgoing_headers(),
    }
    try:
        async with session.post(
            api.url, data=form, headers=headers, timeout=api.timeout
        ) as response:
            body = await response.read()
            status, reply_headers = response.status, response.headers
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise RetryableError(
            f"Could not reach Twilio ({type(exc).__name__}); the message will be retried."
        ) from exc
    if status >= 400:
        error: DeliveryError = error_from_response(status, body, reply_headers)
        log.warning(
            "twilio send %s to %s failed: HTTP %s code %s",
            message.id,
            mask(message.contact.address),
            status,
            error.code,
        )
        raise error
    try:
        created = msgspec.json.decode(body, type=_Created)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RetryableError(
            f"Twilio answered HTTP {status} without a message id; the message will be retried."
        ) from exc
    if (created.status or "").lower() in ("failed", "undelivered"):
        code = None if created.error_code is None else str(created.error_code)
        raise PermanentError(describe_code(code, created.error_message), code=code)
    log.info("twilio sent %s to %s as %s", message.id, mask(message.contact.address), created.sid)
    return SendResult(provider_message_id=created.sid)
