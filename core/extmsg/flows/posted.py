"""Before posting a contact's message again, ask Unblu which of its parts it already has.

An attempt whose lease ran out while it ran (``job.in_doubt``) may have posted some or all of a
message before it was cut off, and a retry of a message of several parts (text, then each
attachment as its own Unblu message) may follow an attempt that posted the first parts. Every
Unblu message we post carries our stable id as ``externalMessageId`` (:func:`external_id`), so
a v4 server's message log (``exportMessageLog``) tells which parts are there: they are not
posted again. Such a look costs one history call, and only those jobs pay it.

Where no look is possible the message is posted again, and the possible double is counted in
``extmsg_in_doubt_total{direction="to_unblu"}``: web API v3 lists no id of ours per message
(``unknown``), and a v4 API user without role ADMIN is refused the log (``lookup_failed``, with
one warning per process naming the role; :func:`check_lookup` says so at start-up).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from ..models import InboundMessage
from ..runtime import Runtime
from ..store.base import Job
from ..unblu.client import MESSAGE_LOG_ROLE
from ..unblu.errors import UnbluError

__all__ = ["already_posted", "check_lookup", "external_id", "part_count"]

log = logging.getLogger("extmsg.to_unblu")

Outcome = Literal["found", "not_found", "unknown", "lookup_failed"]

#: How far before the job was stored the log is read: room for Unblu's clock to run behind
#: ours. The log is read newest first, so a wide window costs nothing when the message is there.
CLOCK_SKEW = 3600.0


def external_id(message_id: str, part: int) -> str:
    """Our ``externalMessageId`` for part ``part`` of a message: its id, suffixed for the
    parts after the first, so each Unblu message has its own stable id."""
    return message_id if part == 0 else f"{message_id}#{part}"


def part_count(message: InboundMessage) -> int:
    """How many Unblu messages the message becomes: the text (or an empty text when there is
    nothing else), then one per attachment."""
    return (1 if message.text or not message.attachments else 0) + len(message.attachments)


async def already_posted(
    runtime: Runtime,
    job: Job,
    channel: str,
    conversation_id: str,
    message_id: str,
    message: InboundMessage,
) -> dict[str, str]:
    """The parts of the message the conversation already holds: our id → Unblu's id.

    Empty, without a call, unless an earlier attempt may have posted something: the job is in
    doubt, or it is a retry of a message of several parts (after a failed attempt, or by hand:
    a dead letter retried starts its attempts again at 0, but its fence tells it was claimed
    before). A failed look is empty too (the caller posts, and the double is counted).
    """
    parts = part_count(message)
    if not (job.in_doubt or (parts > 1 and (job.attempts > 0 or job.fence > 1))):
        return {}
    client = runtime.unblu_client()
    if not client.can_find_posted:
        _count(runtime, channel, "unknown")
        log.debug("message %s may be posted twice: Unblu v3 cannot be asked", message_id)
        return {}
    wanted = [external_id(message_id, n) for n in range(parts)]
    since = job.created_at - CLOCK_SKEW if job.created_at else None
    try:
        found = await client.find_posted(conversation_id, wanted, since=since)
    except UnbluError as exc:
        _count(runtime, channel, "lookup_failed")
        if exc.status == 403:
            _warn_forbidden(runtime, str(exc))
        else:
            log.warning(
                "could not ask Unblu whether message %s was posted (%s); posting it again",
                message_id,
                exc,
            )
        return {}
    _count(runtime, channel, "found" if found else "not_found")
    if found:
        log.info(
            "message %s: Unblu already has %d of its %d part(s); not posting them again",
            message_id,
            len(found),
            parts,
        )
    return found


async def check_lookup(runtime: Runtime, *, attempts: int = 6, delay: float = 1.0) -> None:
    """Say once at start-up when a message posted before a crash could be doubled because
    Unblu cannot be asked about it. Tries again while Unblu cannot be reached."""
    client = runtime.unblu_client()
    for attempt in range(attempts):
        access = await client.check_message_lookup()
        if access.available is not None or attempt == attempts - 1:
            break
        await asyncio.sleep(delay * 2**attempt)
    if access.available:
        log.debug("Unblu message look-up: %s", access.detail)
    elif access.available is None:
        log.info("could not check the Unblu message look-up: %s", access.detail)
    elif not client.can_find_posted:
        log.info(
            "a contact's message whose post was cut off by a crash is posted again and may "
            "show twice: %s",
            access.detail,
        )
    else:
        _warn_forbidden(runtime, access.detail)


def _warn_forbidden(runtime: Runtime, detail: str) -> None:
    if runtime.unblu_lookup_warned:
        log.debug("Unblu refused the message look-up: %s", detail)
        return
    runtime.unblu_lookup_warned = True
    log.warning(
        "Unblu refuses its message log (%s): a contact's message whose post was cut off by a "
        "crash is posted again and may show twice; give the Unblu API user role %s",
        detail,
        MESSAGE_LOG_ROLE,
    )


def _count(runtime: Runtime, channel: str, outcome: Outcome) -> None:
    runtime.metrics.in_doubt.labels(channel=channel, direction="to_unblu", outcome=outcome).inc()
