"""Does Twilio already have this message? The answer to ``extmsg_find_sent`` for a job in doubt.

Twilio has no idempotency key on message creation, and the Messages list resource does not
return a message's ``StatusCallback`` (where our id rides along), so our id cannot be read
back. What the list does return is ``to``, ``from`` / ``messaging_service_sid``, ``body``,
``num_media``, ``direction`` and ``date_created``. A part matches when all of these are what we
would have sent — same recipient, same sender, outbound, exactly the rendered body, media or
not — and Twilio created it no earlier than extmsg accepted the agent's message (less
:data:`CLOCK_SKEW`).

We list ``To`` (and ``From`` for a number; a Messaging Service picks its sender, so there the
service's SID is compared instead), newest first, and stop at the first message *sent* before
the window (the list is ordered by ``date_sent``, and a message is never sent before it was
created). We do not filter by ``DateSent``: it counts only messages Twilio already sent, and a
message the crash caught may still sit in Twilio's queue (where the list puts a message not
sent yet is not documented; the fake puts it first, as the newest). At most
:data:`MAX_PAGES` pages of :data:`PAGE_SIZE` are read: one request in all but the busiest
conversations.

Answers:

* one match: its SID (the part is recorded and not sent again);
* several matches (the contact got the same text twice since the message was accepted): the
  newest. Within one conversation parts go out strictly in order, so an earlier identical text
  was sent before this message's first attempt and the newest match, if any is ours, is ours.
  The core refuses a SID it already recorded for another message (it sends again and counts the
  possible double), which covers the case where ours never arrived;
* no match after reading back past the window: ``False`` (send);
* no match and the pages ran out, or no ``accepted_at`` to bound the search: ``None``
  (send; the core counts the possible double).

Limits, stated plainly: a body Twilio changed on the way (a Messaging Service's Smart Encoding
or link shortening) does not match, and the part is sent again. Third parties report that the
list can lag behind a message just created (twilio/twilio-node#647); the look happens only
after the earlier attempt's lease ran out, which leaves Twilio that time to catch up.
"""

from __future__ import annotations

import logging
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode

import aiohttp
import msgspec

from extmsg.errors import DeliveryError, RetryableError
from extmsg.logsafe import mask_address as mask
from extmsg.models import Channel, OutboundMessage, SendResult

from .errors import error_from_response
from .outbound import messages_url
from .session import basic_auth
from .settings import TwilioSettings

__all__ = ["CLOCK_SKEW", "MAX_PAGES", "PAGE_SIZE", "find_sent"]

log = logging.getLogger("extmsg.sms_twilio")

#: Messages per list page asked for.
PAGE_SIZE = 50
#: Most pages read for one lookup; beyond, the answer is "cannot tell".
MAX_PAGES = 4
#: How far Twilio's clock may run behind ours, in seconds: a message Twilio dates up to this
#: long before extmsg accepted the agent's message still counts.
CLOCK_SKEW = 60.0


class _Message(msgspec.Struct, kw_only=True):
    sid: str
    to: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    messaging_service_sid: str | None = None
    body: str | None = None
    num_media: str | int | None = None
    direction: str | None = None
    status: str | None = None
    date_created: str | None = None
    date_sent: str | None = None


class _Page(msgspec.Struct, kw_only=True):
    messages: list[_Message] = []
    next_page_uri: str | None = None


def _epoch(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _body(message: OutboundMessage) -> str:
    """The ``Body`` :func:`.outbound.send_form` puts in the create call ("" for none)."""
    attachment = message.attachment
    return message.text or (attachment.caption if attachment is not None else None) or ""


def _matches(item: _Message, settings: TwilioSettings, message: OutboundMessage) -> bool:
    if not (item.direction or "").startswith("outbound") or item.to != message.contact.address:
        return False
    if settings.messaging_service_sid:
        if item.messaging_service_sid != settings.messaging_service_sid:
            return False
    elif item.from_ != settings.from_number:
        return False
    media = int(item.num_media or 0) > 0
    return (item.body or "") == _body(message) and media == (message.attachment is not None)


async def _page(session: aiohttp.ClientSession, settings: TwilioSettings, url: str) -> _Page:
    headers = {
        "Accept": "application/json",
        "Authorization": basic_auth(settings.account_sid, settings.auth_token),
    }
    try:
        async with session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=settings.timeout)
        ) as response:
            body = await response.read()
            status, reply_headers = response.status, response.headers
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise RetryableError(
            f"Could not reach Twilio to look the message up ({type(exc).__name__})."
        ) from exc
    if status >= 400:
        error: DeliveryError = error_from_response(status, body, reply_headers)
        raise error
    try:
        return msgspec.json.decode(body, type=_Page)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RetryableError(f"Twilio's message list was not readable: {exc}") from exc


async def find_sent(
    session: aiohttp.ClientSession, channel: Channel, message: OutboundMessage
) -> SendResult | bool | None:
    """The part's Twilio message if Twilio has it, False if it has not, None if unsure.

    :raises RetryableError: Twilio unreachable, throttling or 5xx (the core retries the job).
    :raises PermanentError: Twilio refused the lookup (e.g. credentials without read access).
    """
    settings: TwilioSettings = channel.settings
    who = mask(message.contact.address)
    if message.accepted_at is None:
        log.info("twilio lookup of %s to %s: no time to search from", message.id, who)
        return None
    since = message.accepted_at - CLOCK_SKEW
    query = [("To", message.contact.address), ("PageSize", str(PAGE_SIZE))]
    if settings.from_number:
        query.insert(1, ("From", settings.from_number))
    url = f"{messages_url(settings)}?{urlencode(query)}"
    matches: list[_Message] = []
    complete = False
    pages = 0
    while pages < MAX_PAGES:
        page = await _page(session, settings, url)
        pages += 1
        for item in page.messages:
            sent_at = _epoch(item.date_sent)
            if sent_at is not None and sent_at < since:
                complete = True  # everything further down was sent earlier still
                break
            created = _epoch(item.date_created)
            if created is not None and created >= since and _matches(item, settings, message):
                matches.append(item)
        if complete or not page.next_page_uri:
            complete = True
            break
        if not page.next_page_uri.startswith("/"):
            break  # a path on the API is all we follow: the credentials go nowhere else
        url = settings.api_root + page.next_page_uri
    log.info(
        "twilio lookup of %s part %d to %s: %d match(es) in %d page(s)%s",
        message.id,
        message.part,
        who,
        len(matches),
        pages,
        "" if complete else " (stopped before the window's start)",
    )
    if matches:
        newest = max(matches, key=lambda m: _epoch(m.date_created) or 0.0)
        if (newest.status or "") in ("delivered", "read"):
            return SendResult(provider_message_id=newest.sid, state="delivered")
        return SendResult(provider_message_id=newest.sid)
    return False if complete else None
