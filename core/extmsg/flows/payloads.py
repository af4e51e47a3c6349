"""What a job carries: one tagged Struct per job kind, stored as JSON in the job's payload.

The tag is the job kind, so ``decode`` needs nothing but the payload.
"""

from __future__ import annotations

import os
import time
from typing import Literal

import msgspec

from .. import logcontext
from ..models import ContactUpdate, InboundMessage, MessageState, StatusUpdate
from ..unblu.calls import AgentMessage

__all__ = [
    "ContactJob",
    "JobPayload",
    "MarkReadJob",
    "NoticeJob",
    "OutboundMessageJob",
    "ProviderStatusJob",
    "PurgedJob",
    "ReportedState",
    "ToUnbluJob",
    "UnbluStateJob",
    "contact_refs",
    "decode",
    "encode",
    "is_notice",
    "lane",
    "new_id",
    "notice_key",
    "reported_state",
]


class _Payload(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    channel: str
    #: The request that created the job (see :mod:`extmsg.logcontext`): its worker logs it.
    request_id: str | None = None


class ToUnbluJob(_Payload, frozen=True, tag="to_unblu.message"):
    """A contact's message to post into Unblu."""

    message_id: str
    message: InboundMessage


class OutboundMessageJob(_Payload, frozen=True, tag="to_messenger.message"):
    """An agent's message to send to the contact."""

    message_id: str
    message: AgentMessage
    contact_address: str | None = None
    thread: str | None = None


class ProviderStatusJob(_Payload, frozen=True, tag="to_unblu.provider_status"):
    """The provider's status for a message we sent, to correlate and report to Unblu."""

    update: StatusUpdate


ReportedState = Literal["sent", "delivered", "read", "failed"]

_REPORTED: dict[MessageState, ReportedState] = {
    MessageState.SENT: "sent",
    MessageState.DELIVERED: "delivered",
    MessageState.READ: "read",
    MessageState.FAILED: "failed",
}


def reported_state(state: MessageState) -> ReportedState:
    """The name a state is reported to Unblu by (PENDING is never reported)."""
    return _REPORTED[state]


class UnbluStateJob(_Payload, frozen=True, tag="to_unblu.state"):
    """Report an agent message's state to Unblu (sent / delivered / read / failed)."""

    message_id: str
    state: ReportedState
    failure_text: str | None = None
    terminal: bool = True


class MarkReadJob(_Payload, frozen=True, tag="to_messenger.read"):
    """An agent read a contact's message: tell the provider."""

    provider_message_id: str


class ContactJob(_Payload, frozen=True, tag="contact.update"):
    """A contact opted out or back in."""

    update: ContactUpdate


#: How a notice's key starts: the key takes the place of the Unblu message id in the notice's
#: message row (unique per channel and direction), so a notice is stored once per cause.
NOTICE_PREFIX = "extmsg-notice:"


class NoticeJob(_Payload, frozen=True, tag="to_messenger.notice"):
    """A text extmsg itself sends a contact: ``ended_text`` when Unblu ended the conversation,
    or the reply confirming an opt-out or opt-in. No agent wrote it, so Unblu hears nothing of
    it; ``despite_opt_out`` lets an opt-out's confirmation through."""

    message_id: str
    text: str
    cause: Literal["ended", "opt_out", "opt_in"]
    conversation_id: str | None = None
    contact_address: str | None = None
    thread: str | None = None
    despite_opt_out: bool = False


def notice_key(cause: str, ref: str) -> str:
    """The dedup key of the notice ``cause`` for ``ref`` (a conversation id, a provider
    message id): stored as the notice's ``unblu_message_id``."""
    return f"{NOTICE_PREFIX}{cause}:{ref}"


def is_notice(unblu_message_id: str | None) -> bool:
    """Whether a message row is a notice extmsg sent (no Unblu message behind it)."""
    return bool(unblu_message_id) and str(unblu_message_id).startswith(NOTICE_PREFIX)


class PurgedJob(_Payload, frozen=True, tag="purged"):
    """What is left of a finished job whose content was removed (``store.purged_payload``):
    by ``extmsg contacts forget`` (``erasure``) or after ``[store] retention_days``
    (``retention``). The job row keeps its kind and state; run again, it fails for good."""

    reason: str = "retention"


JobPayload = (
    ToUnbluJob
    | OutboundMessageJob
    | ProviderStatusJob
    | UnbluStateJob
    | MarkReadJob
    | ContactJob
    | NoticeJob
    | PurgedJob
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(JobPayload)


def encode(payload: JobPayload) -> bytes:
    """The payload as stored; a job made while a request or job runs carries its request id."""
    if payload.request_id is None:
        rid = logcontext.request_id()
        if rid is not None:
            payload = msgspec.structs.replace(payload, request_id=rid)
    return _encoder.encode(payload)


def decode(data: bytes) -> JobPayload:
    payload: JobPayload = _decoder.decode(data)
    return payload


def contact_refs(data: bytes) -> tuple[set[str], set[str]]:
    """The threads and Unblu conversation ids a job's payload names for its contact (for
    erasing a contact: a mail thread may be known only from its first message's job)."""
    try:
        payload = decode(data)
    except msgspec.DecodeError:
        return set(), set()
    if isinstance(payload, ToUnbluJob):
        return {payload.message.thread_id}, set()
    if isinstance(payload, OutboundMessageJob):
        threads = {t for t in (payload.thread, payload.contact_address) if t}
        return threads, {payload.message.conversation_id}
    if isinstance(payload, NoticeJob):
        threads = {t for t in (payload.thread, payload.contact_address) if t}
        return threads, {payload.conversation_id} if payload.conversation_id else set()
    return set(), set()


def kind_of(payload_type: type[_Payload]) -> str:
    """The job kind of a payload type (its tag)."""
    tag = payload_type.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def kind(payload: JobPayload) -> str:
    return kind_of(type(payload))


def lane(channel: str, key: str) -> str:
    """The ordering key: jobs with the same lane run one after another."""
    return f"{channel}/{key}"


def new_id() -> str:
    """Our id for a message (Unblu's ``externalMessageId``, providers' references).

    32 hex digits: the time in milliseconds, then 80 random bits. Ids that grow with time land
    at the end of the messages table's key index, so a commit of many new messages writes a
    few index pages rather than one per message.
    """
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"
