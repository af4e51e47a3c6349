"""What both SQL stores share: the column lists they select and the rows they hand out.

Both backends select columns in these orders, so one converter per table turns a database row
(an sqlite3 tuple or an asyncpg Record) into the Struct callers get.
"""

from __future__ import annotations

import functools
from typing import Any

from ..models import MessageState
from .base import ChannelRow, ContactRow, ConversationRow, Job, MediaRow, MessageRow, ThreadView

__all__ = [
    "CHANNEL_COLUMNS",
    "CONTACT_COLUMNS",
    "CONVERSATION_COLUMNS",
    "JOB_COLUMNS",
    "MEDIA_COLUMNS",
    "MESSAGE_COLUMNS",
    "VIEW_COLUMNS",
    "channel_row",
    "conversation_row",
    "job_row",
    "media_row",
    "message_key",
    "message_row",
    "update_message_sql",
    "view_row",
]

CHANNEL_COLUMNS = "name, messenger, unblu_channel_id, webhook_status, provisioned_at"
CONTACT_COLUMNS = (
    "channel, address, name, unblu_person_id, unblu_contact_id, opted_out, opted_out_reason"
)
CONVERSATION_COLUMNS = (
    "channel, thread, contact_address, unblu_conversation_id, state, created_at, ended_at"
)
MESSAGE_COLUMNS = (
    "id, channel, direction, thread, provider_message_id, unblu_message_id, conversation_id, "
    "state, error, created_at, updated_at"
)
JOB_COLUMNS = (
    "id, kind, lane, payload, state, attempts, next_at, message_id, lease_until, last_error, "
    "created_at, updated_at, fence, in_doubt, holds_lane"
)
MEDIA_COLUMNS = "id, channel, file_name, mime_type, data, expires_at"


def _qualified(columns: str, table: str) -> str:
    return ", ".join(f"{table}.{c.strip()}" for c in columns.split(","))


#: What a :class:`ThreadView` is read from: a contact (``k``) and a conversation (``c``), either
#: of them NULLs when there is none, then the thread's last inbound time (or NULL).
VIEW_COLUMNS = f"{_qualified(CONTACT_COLUMNS, 'k')}, {_qualified(CONVERSATION_COLUMNS, 'c')}"


def channel_row(row: Any) -> ChannelRow:
    return ChannelRow(
        name=row[0],
        messenger=row[1],
        unblu_channel_id=row[2],
        webhook_status=row[3],
        provisioned_at=row[4],
    )


def conversation_row(row: Any) -> ConversationRow:
    return ConversationRow(
        channel=row[0],
        thread=row[1],
        contact_address=row[2],
        unblu_conversation_id=row[3],
        state=row[4],
        created_at=row[5],
        ended_at=row[6],
    )


def contact_row(row: Any) -> ContactRow:
    return ContactRow(
        channel=row[0],
        address=row[1],
        name=row[2],
        unblu_person_id=row[3],
        unblu_contact_id=row[4],
        opted_out=bool(row[5]),
        opted_out_reason=row[6],
    )


def view_row(row: Any) -> ThreadView:
    """A row of :data:`VIEW_COLUMNS` and the last inbound time."""
    values = tuple(row)
    return ThreadView(
        contact=contact_row(values[0:7]) if values[1] is not None else None,
        conversation=conversation_row(values[7:14]) if values[10] is not None else None,
        last_inbound_at=float(values[14]) if values[14] is not None else None,
    )


def message_row(row: Any) -> MessageRow:
    return MessageRow(
        id=row[0],
        channel=row[1],
        direction=row[2],
        thread=row[3],
        provider_message_id=row[4],
        unblu_message_id=row[5],
        conversation_id=row[6],
        state=MessageState(row[7]),
        error=row[8],
        created_at=row[9],
        updated_at=row[10],
    )


def job_row(row: Any) -> Job:
    return Job(
        id=row[0],
        kind=row[1],
        lane=row[2],
        payload=bytes(row[3]),
        state=row[4],
        attempts=row[5],
        next_at=row[6],
        message_id=row[7],
        lease_until=row[8],
        last_error=row[9],
        created_at=row[10],
        updated_at=row[11],
        fence=row[12],
        in_doubt=bool(row[13]),
        holds_lane=bool(row[14]),
    )


def media_row(row: Any) -> MediaRow:
    return MediaRow(
        id=row[0],
        channel=row[1],
        file_name=row[2],
        mime_type=row[3],
        data=bytes(row[4]),
        expires_at=row[5],
    )


def message_key(provider_message_id: str | None, unblu_message_id: str | None) -> tuple[str, str]:
    """The column and value ``find_message`` looks a message up by."""
    if provider_message_id is not None:
        return "provider_message_id", provider_message_id
    if unblu_message_id is not None:
        return "unblu_message_id", unblu_message_id
    raise ValueError("give provider_message_id or unblu_message_id")


@functools.cache
def update_message_sql(columns: tuple[str, ...], mark: str, state_cast: str = "") -> str:
    """``Store.update_message``'s statement setting only ``columns`` (then ``updated_at``, by
    id): a column left out keeps its value, and the unique index of an id left out gets no new
    entry. The state moves only forward, and never away from FAILED. ``mark``: the backend's
    numbered placeholder (``?`` for SQLite's ``?1``, ``$`` for PostgreSQL's ``$1``);
    ``state_cast``: what the state's placeholder needs (PostgreSQL: ``::int``)."""
    failed = int(MessageState.FAILED)
    sets = [
        f"state = CASE WHEN {mark}{n}{state_cast} > state AND state != {failed}"
        f" THEN {mark}{n}{state_cast} ELSE state END"
        if column == "state"
        else f"{column} = {mark}{n}"
        for n, column in enumerate(columns, 1)
    ]
    n = len(columns)
    return (
        f"UPDATE messages SET {', '.join(sets)}{', ' if sets else ''}"  # noqa: S608
        f"updated_at = {mark}{n + 1} WHERE id = {mark}{n + 2}"
    )
