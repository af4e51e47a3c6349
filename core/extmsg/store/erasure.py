"""What both SQL stores share to erase a contact: what to look for, and the tally of what was
found (:meth:`~extmsg.store.base.Store.forget_contact`).

A contact's data is reached from its addresses on a channel:

* its contact row, and its conversations (``contact_address``);
* job payloads that name an address (found by the address as a JSON string inside the
  payload, then read by ``refs``), which name threads and conversations of the contact that
  may not be in the store yet (a mail thread whose first message never reached Unblu);
* the messages of its threads (a thread is the address itself, a messenger's own thread id,
  or ``conversation:{id}`` for an agent's message to a conversation the store did not know);
* the parts of those messages, the files published with them, the threads' remembered values;
* jobs in the contact's lanes or about its messages (their states, statuses and reads).

An opted-out contact's opt-out stays, as a suppression entry that holds no address
(:mod:`.suppression`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import msgspec

from .base import Erasure

__all__ = ["CANCELLED", "Found", "lane_channel", "needles"]

#: The last error of a job cancelled because its contact was erased.
CANCELLED = "cancelled: the contact's data was erased before this job ran"


def needles(addresses: Iterable[str]) -> list[bytes]:
    """Each address as it appears in a JSON payload: a whole string value, quotes included."""
    return [msgspec.json.encode(address) for address in addresses]


@dataclasses.dataclass
class Found:
    """The contact's rows as found so far; filled in by a store's look-up."""

    channel: str
    addresses: tuple[str, ...]
    contact_rows: int = 0
    person_ids: set[str] = dataclasses.field(default_factory=set)
    contact_ids: set[str] = dataclasses.field(default_factory=set)
    conversations: set[str] = dataclasses.field(default_factory=set)
    threads: set[str] = dataclasses.field(default_factory=set)
    seen_threads: set[str] = dataclasses.field(default_factory=set)
    """The threads that hold something of the contact (a conversation, messages)."""
    messages: set[str] = dataclasses.field(default_factory=set)
    provider_ids: set[str] = dataclasses.field(default_factory=set)
    parts: int = 0
    media: int = 0
    thread_meta: int = 0
    opted_out: dict[str, str | None] = dataclasses.field(default_factory=dict)
    """The opted-out addresses among the contact rows, with the reason: each leaves a
    suppression entry (:mod:`.suppression`)."""
    jobs: dict[int, tuple[str, str, bool]] = dataclasses.field(default_factory=dict)
    """Job id → (state, lane, holds its lane)."""

    def __post_init__(self) -> None:
        self.threads.update(self.addresses)

    def seeded(self) -> Found:
        """A new look-up that starts from what this one learned from payloads (threads,
        conversations, jobs), to be completed under the write lock."""
        again = Found(self.channel, self.addresses)
        again.threads.update(self.threads)
        again.conversations.update(self.conversations)
        again.jobs.update(self.jobs)
        return again

    def all_threads(self) -> list[str]:
        """The contact's threads, and the pseudo-threads of its conversations (an agent's
        message to a conversation the store did not know is filed under one)."""
        return sorted(self.threads | {f"conversation:{c}" for c in self.conversations})

    def lanes(self) -> list[str]:
        """Every lane a job of the contact can be in (see :func:`extmsg.flows.payloads.lane`)."""
        keys = set(self.all_threads())
        keys.update(f"state:{m}" for m in self.messages)
        keys.update(f"status:{m}" for m in self.messages)
        keys.update(f"status:{p}" for p in self.provider_ids)
        keys.update(f"read:{p}" for p in self.provider_ids)
        return sorted(f"{self.channel}/{key}" for key in keys)

    def lane_prefix(self) -> str:
        return f"{self.channel}/"

    @property
    def erased_lane(self) -> str:
        """The lane an erased job is left in: it names no one."""
        return f"{self.channel}/erased"

    def running(self) -> list[int]:
        return sorted(i for i, (state, _, _) in self.jobs.items() if state == "running")

    def pending(self) -> list[int]:
        return sorted(i for i, (state, _, _) in self.jobs.items() if state == "ready")

    def refusal(self, cancel_pending: bool) -> bool:
        """Whether nothing may be erased now: a job of the contact runs, or one is still to
        run and cancelling was not asked for."""
        return bool(self.running()) or (bool(self.pending()) and not cancel_pending)

    def report(self, *, applied: bool) -> Erasure:
        return Erasure(
            channel=self.channel,
            addresses=self.addresses,
            contact_rows=self.contact_rows,
            unblu_person_ids=tuple(sorted(self.person_ids)),
            unblu_contact_ids=tuple(sorted(self.contact_ids)),
            conversations=tuple(sorted(self.conversations)),
            threads=len(self.seen_threads),
            messages=len(self.messages),
            parts=self.parts,
            jobs=len(self.jobs),
            pending=tuple(self.pending()),
            running=tuple(self.running()),
            media=self.media,
            thread_meta=self.thread_meta,
            suppressions=len(self.opted_out),
            applied=applied,
        )


def lane_channel(lane: str) -> str:
    """The channel of a job, from its lane (``{channel}/{key}``, see
    :func:`extmsg.flows.payloads.lane`)."""
    return lane.split("/", 1)[0]
