"""The store interface: everything extmsg keeps, behind one abstract class.

Callers use only this interface, so the embedded SQLite store and a PostgreSQL store are
interchangeable. Rows cross it as the Structs below.

Three groups of data:

* **directory** — channels (with their Unblu ids), contacts (with their Unblu person/contact
  ids and opt-out state), conversations (Unblu conversation per channel thread);
* **messages** — one row per message in either direction with its ids on both sides and its
  delivery state, which only moves forward;
* **jobs** — the durable work queue of the delivery engine, ordered per lane.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Literal

import msgspec

from ..models import MessageState

__all__ = [
    "PURGED_PREFIX",
    "ChannelRow",
    "ContactRow",
    "ConversationRow",
    "Erasure",
    "Intake",
    "IntakeResult",
    "Job",
    "JobState",
    "MediaRow",
    "MessageRow",
    "NewJob",
    "NewMessage",
    "PartSent",
    "PayloadRefs",
    "StatusOutcome",
    "Store",
    "ThreadView",
    "fence_of",
    "first_run",
    "parts_state",
    "purged_payload",
    "status_target",
]

JobState = Literal["ready", "running", "done", "dead"]
Direction = Literal["in", "out"]


class _Row(msgspec.Struct, frozen=True, kw_only=True):
    pass


class ChannelRow(_Row, frozen=True):
    name: str
    messenger: str
    unblu_channel_id: str | None = None
    webhook_status: str | None = None
    provisioned_at: float | None = None


class ContactRow(_Row, frozen=True):
    channel: str
    address: str
    name: str | None = None
    unblu_person_id: str | None = None
    unblu_contact_id: str | None = None
    opted_out: bool = False
    opted_out_reason: str | None = None


class ConversationRow(_Row, frozen=True):
    channel: str
    thread: str
    contact_address: str
    unblu_conversation_id: str
    state: Literal["active", "ended"] = "active"
    created_at: float = 0.0
    ended_at: float | None = None


class NewMessage(_Row, frozen=True):
    """A message row to insert; ``(channel, direction, provider_message_id)`` and
    ``(channel, direction, unblu_message_id)`` are unique: a second insert is a duplicate."""

    id: str
    channel: str
    direction: Direction
    thread: str
    provider_message_id: str | None = None
    unblu_message_id: str | None = None
    conversation_id: str | None = None
    state: MessageState = MessageState.PENDING


class MessageRow(NewMessage, frozen=True):
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


class NewJob(_Row, frozen=True):
    """A job to enqueue. ``lane`` orders it: a lane's jobs run one at a time, oldest first."""

    kind: str
    lane: str
    payload: bytes
    message_id: str | None = None
    delay: float = 0.0


class Job(_Row, frozen=True):
    id: int
    kind: str
    lane: str
    payload: bytes
    state: JobState
    attempts: int
    next_at: float
    message_id: str | None = None
    lease_until: float | None = None
    last_error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    fence: int = 0
    """The claim's generation: raised by every claim, so a holder whose lease was taken over
    can be told apart from the new one."""
    in_doubt: bool = False
    """An earlier attempt may have reached the remote (its lease ran out while it ran, or it
    was cut off mid-call): look before sending again."""
    holds_lane: bool = False
    """A dead letter that holds its lane: the lane's later jobs wait until it is retried,
    skipped or purged (:meth:`Store.release_lane`)."""


def fence_of(job: Job | None) -> int | None:
    """The fence a write made for ``job`` must find, or None for no check: a job that did not
    come from a claim (fence 0, e.g. built by hand in a test) has nothing to check."""
    return job.fence if job is not None and job.fence > 0 else None


def first_run(job: Job) -> bool:
    """Whether no attempt of ``job`` can have run before this one: its first claim (fence 1;
    every claim raises the fence and nothing lowers it), no attempt counted, not in doubt.

    Its handler need not look in the store for what an earlier attempt did: a job's handler
    runs only under a claim, so there was none. A job given back at a stop, retried by hand
    (its attempts start again at 0), rescheduled, or taken over once its lease ran out was
    claimed before and is not on its first run; nor is one that did not come from a claim
    (fence 0, built by hand)."""
    return job.fence == 1 and job.attempts == 0 and not job.in_doubt


class Intake(_Row, frozen=True):
    """One unit of accepted work: an optional message row and an optional job.

    When the message is a duplicate, the job is not enqueued.
    """

    message: NewMessage | None = None
    job: NewJob | None = None


class IntakeResult(_Row, frozen=True):
    accepted: bool
    """False when the message was a duplicate of one already stored."""
    message_id: str | None = None
    """The stored message's id (the existing one for a duplicate)."""


class MediaRow(_Row, frozen=True):
    """A file published for a provider to fetch by URL (e.g. Twilio's MediaUrl)."""

    id: str
    channel: str
    file_name: str
    mime_type: str
    data: bytes
    expires_at: float
    message_id: str | None = None
    """The message the file was sent with (erased with its contact)."""


class PartSent(_Row, frozen=True):
    """A part of an outbound message the provider accepted (:meth:`Store.record_part`)."""

    channel: str
    part: int
    provider_message_id: str


class ThreadView(_Row, frozen=True):
    """What a message's job knows of the contact and the thread it goes to, read in one store
    call (:meth:`Store.inbound_view`, :meth:`Store.outbound_view`)."""

    contact: ContactRow | None = None
    """As :meth:`Store.get_contact` answers it."""
    conversation: ConversationRow | None = None
    last_inbound_at: float | None = None
    """As :meth:`Store.last_inbound_at` answers it for the conversation's thread (outbound)."""


class StatusOutcome(_Row, frozen=True):
    """What a provider's status did to the message it names (:meth:`Store.apply_status`)."""

    applied: bool
    """False when nothing could be applied yet: the message is still being sent and no part
    recorded so far has the status's id (the status outran the part's record, or names no
    part). Nothing changed; apply it again later."""
    state: MessageState | None = None
    """The message's new state when the status moved it forward; None when it stayed."""


class Erasure(_Row, frozen=True):
    """What :meth:`Store.forget_contact` found of a contact, and whether it removed it.

    The Unblu ids are listed because Unblu keeps its own copy of the person and the
    conversations: erasing the contact there is a separate step.
    """

    channel: str
    addresses: tuple[str, ...]
    contact_rows: int = 0
    unblu_person_ids: tuple[str, ...] = ()
    unblu_contact_ids: tuple[str, ...] = ()
    conversations: tuple[str, ...] = ()
    """The Unblu ids of the contact's conversations."""
    threads: int = 0
    messages: int = 0
    parts: int = 0
    jobs: int = 0
    """Jobs whose payloads are (or would be) erased; their rows stay, for the counts."""
    pending: tuple[int, ...] = ()
    """Jobs still to run (ready, or waiting behind a dead letter): cancelled only on request."""
    running: tuple[int, ...] = ()
    """Jobs running right now: nothing is erased while one does."""
    media: int = 0
    thread_meta: int = 0
    suppressions: int = 0
    """Opt-outs kept (or to be kept) as suppression entries, which hold no address: the
    erased address stays opted out (:mod:`extmsg.store.suppression`)."""
    applied: bool = False
    """True once everything listed was removed (in one transaction); False for a dry run or a
    refusal (running jobs, or pending ones without ``cancel_pending``)."""


PayloadRefs = Callable[[bytes], tuple[Collection[str], Collection[str]]]
"""Given a job payload that names the contact, the threads and the Unblu conversation ids it
names (see :func:`extmsg.flows.payloads.contact_refs`)."""

#: How a payload whose content was removed begins (see :func:`purged_payload`).
PURGED_PREFIX = b'{"kind":"purged"'


def purged_payload(channel: str, reason: Literal["erasure", "retention"]) -> bytes:
    """What stays of a job's payload once its content is removed: the job still counts, shows
    in ``extmsg outbox`` and fails cleanly if retried (see ``extmsg.flows.payloads.PurgedJob``).
    """
    return msgspec.json.encode({"kind": "purged", "channel": channel, "reason": reason})


def parts_state(parts: Iterable[MessageState]) -> MessageState:
    """The state of a message all of whose parts went out, from its parts' states: FAILED when
    one failed, else the least any part reached (delivered when every part is delivered)."""
    states = list(parts)
    if MessageState.FAILED in states:
        return MessageState.FAILED
    return min(states, default=MessageState.SENT)


def status_target(
    current: MessageState, status: MessageState, parts: Sequence[MessageState] | None
) -> MessageState | None:
    """The state a message in state ``current`` moves to on a provider's ``status``.

    ``parts``: its parts' states after the status was applied to the part it names, or None
    when it names none of them. None: apply it again later (only while the message is still
    being sent, i.e. PENDING). Returns ``current`` when nothing moves.
    """
    if current == MessageState.FAILED:
        return current
    if parts is None:
        # A status naming no recorded part: the whole message's, once all its parts went out.
        if current == MessageState.PENDING:
            return None
        return max(current, status)
    if status == MessageState.FAILED:
        return status  # a part that failed fails the message, sent in full or not
    if current == MessageState.PENDING:
        return current  # kept on the part; the last part's record settles the message
    return max(current, parts_state(parts))


class Store(abc.ABC):
    """Persistence for extmsg. Open with :meth:`open`, close with :meth:`close`."""

    #: A call made after another call's write was queued sees that write, even before the
    #: write's caller got its answer (SQLite: one writer applies writes in call order). The
    #: engine then claims a lane's next job in the same turn as the completion of the one
    #: before; without it, once that completion has answered.
    writes_in_call_order: bool = False

    # -- lifecycle -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self, *, create: bool = True) -> None:
        """Connect and apply pending migrations.

        :param create: make the store when there is none yet; with ``False`` (commands that
            only look) raise :class:`~extmsg.errors.StoreMissing` instead.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and disconnect."""

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The number of the last applied migration."""

    @property
    @abc.abstractmethod
    def is_open(self) -> bool: ...

    # -- directory -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def upsert_channel(self, row: ChannelRow) -> None: ...

    @abc.abstractmethod
    async def get_channel(self, name: str) -> ChannelRow | None: ...

    @abc.abstractmethod
    async def list_channels(self) -> list[ChannelRow]: ...

    @abc.abstractmethod
    async def get_contact(self, channel: str, address: str) -> ContactRow | None: ...

    @abc.abstractmethod
    async def upsert_contact(self, row: ContactRow) -> None:
        """Insert or replace the contact; ``opted_out`` is kept unless the row changes it."""

    @abc.abstractmethod
    async def set_opt_out(
        self, channel: str, address: str, opted_out: bool, reason: str | None
    ) -> None: ...

    @abc.abstractmethod
    async def active_conversation(self, channel: str, thread: str) -> ConversationRow | None: ...

    @abc.abstractmethod
    async def find_conversation(self, unblu_conversation_id: str) -> ConversationRow | None: ...

    async def inbound_view(self, channel: str, address: str, thread: str) -> ThreadView:
        """The contact ``address`` and the thread's active conversation: what a contact's
        message needs on its way into Unblu, in one read where the backend can."""
        return ThreadView(
            contact=await self.get_contact(channel, address),
            conversation=await self.active_conversation(channel, thread),
        )

    async def _with_contact(self, view: ThreadView, channel: str, address: str) -> ThreadView:
        """``view`` read in one statement, with its contact as :meth:`get_contact` answers it
        when that statement found no contact row (a suppression left by an erasure)."""
        if view.contact is not None:
            return view
        contact = await self.get_contact(channel, address)
        return view if contact is None else msgspec.structs.replace(view, contact=contact)

    async def outbound_view(self, channel: str, unblu_conversation_id: str) -> ThreadView:
        """The conversation, its contact on ``channel`` and when that contact last wrote on its
        thread: what an agent's message needs on its way out, in one read where the backend
        can. Empty when the conversation is unknown."""
        conversation = await self.find_conversation(unblu_conversation_id)
        if conversation is None:
            return ThreadView()
        return ThreadView(
            contact=await self.get_contact(channel, conversation.contact_address),
            conversation=conversation,
            last_inbound_at=await self.last_inbound_at(channel, conversation.thread),
        )

    @abc.abstractmethod
    async def add_conversation(self, row: ConversationRow) -> None:
        """Record a new active conversation; an older active one of the thread is ended."""

    @abc.abstractmethod
    async def end_conversation(self, unblu_conversation_id: str) -> None: ...

    # -- intake, messages and jobs -------------------------------------------------------------
    @abc.abstractmethod
    async def intake(self, items: Sequence[Intake]) -> list[IntakeResult]:
        """Store messages and their jobs in one transaction, deduplicating messages."""

    @abc.abstractmethod
    async def get_message(self, message_id: str) -> MessageRow | None: ...

    @abc.abstractmethod
    async def find_message(
        self,
        channel: str,
        direction: Direction,
        *,
        provider_message_id: str | None = None,
        unblu_message_id: str | None = None,
    ) -> MessageRow | None: ...

    @abc.abstractmethod
    async def update_message(
        self,
        message_id: str,
        *,
        provider_message_id: str | None = None,
        unblu_message_id: str | None = None,
        conversation_id: str | None = None,
        state: MessageState | None = None,
        job: Job | None = None,
        complete: bool = False,
    ) -> None:
        """Fill in ids learned later; ``None`` leaves a column unchanged. ``state`` moves the
        state forward in the same write, by the rules of :meth:`advance_state`.

        Given the ``job`` whose work this records, the write is made only while that claim of
        it still holds (see :meth:`hold_job`); otherwise nothing changes and
        :class:`~extmsg.errors.LeaseLost` is raised. With ``complete``, the job is marked
        done in the same write, as by :meth:`complete_job` under its fence (the job's last
        write; see :meth:`extmsg.engine.Engine.complete_with`)."""

    @abc.abstractmethod
    async def advance_state(
        self,
        message_id: str,
        state: MessageState,
        error: str | None = None,
        *,
        job: Job | None = None,
    ) -> bool:
        """Move a message's state forward; return False (and change nothing) when ``state`` is
        not after the stored one. FAILED is final, except that :meth:`retry_job` resets it.
        ``job``: as for :meth:`update_message`."""

    @abc.abstractmethod
    async def claim_jobs(self, limit: int, lease_seconds: float) -> list[Job]:
        """Lease up to ``limit`` runnable jobs: due, and each the oldest unfinished job of its
        lane while no other job of that lane is running. A job whose lease ran out (its worker
        died or stalled) is runnable again, with that lost attempt counted, and *in doubt*.
        Every claim raises the job's ``fence``."""

    @abc.abstractmethod
    async def renew_lease(
        self,
        job_ids: Sequence[int],
        lease_seconds: float,
        *,
        fences: Mapping[int, int] | None = None,
    ) -> list[int]:
        """Extend the leases of running jobs to ``lease_seconds`` from now, so a job that runs
        long is not taken for abandoned; return the ids that were still running (under the
        fence ``fences`` gives for them, when it gives one)."""

    @abc.abstractmethod
    async def hold_job(self, job_id: int, fence: int, lease_seconds: float) -> bool:
        """Renew the lease of a running job claimed under ``fence`` and answer True, in one
        write; False (nothing changed) when that claim no longer holds: its lease ran out and
        the job was taken back or over, or it finished."""

    @abc.abstractmethod
    async def complete_job(self, job_id: int, *, fence: int | None = None) -> bool:
        """Mark a leased job done (one more attempt counted). With ``fence``, only the claim
        it names may: False when another took the job over, and nothing changes."""

    @abc.abstractmethod
    async def reschedule_job(
        self,
        job_id: int,
        next_at: float,
        error: str,
        *,
        fence: int | None = None,
        in_doubt: bool = False,
    ) -> bool:
        """Release a leased job to run again at ``next_at`` (one more attempt counted);
        ``in_doubt``: the failed attempt may have reached the remote. ``fence``: as for
        :meth:`complete_job`."""

    @abc.abstractmethod
    async def bury_job(
        self, job_id: int, error: str, *, fence: int | None = None, hold: bool = False
    ) -> bool:
        """Make an unfinished job a dead letter (one more attempt counted): it stays visible.
        ``fence``: as for :meth:`complete_job`.

        With ``hold`` it keeps its place at the head of its lane: the lane's later jobs wait
        until it is retried (and runs first), skipped (:meth:`release_lane`) or purged.
        Without, the lane goes on with its next job."""

    @abc.abstractmethod
    async def release_jobs(
        self,
        job_ids: Sequence[int],
        *,
        fences: Mapping[int, int] | None = None,
        in_doubt: Collection[int] = (),
    ) -> None:
        """Give leased jobs back without counting an attempt (graceful shutdown); a job only
        under the fence ``fences`` gives for it, if any. The ids in ``in_doubt`` were cut off
        while they ran: they come back in doubt."""

    @abc.abstractmethod
    def exclusive(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Run the block while no other holder of ``name`` runs it: across every instance
        sharing the store where the backend can tell (PostgreSQL), else in this process."""

    @abc.abstractmethod
    async def list_jobs(
        self, states: Sequence[JobState] = ("ready", "running", "dead"), limit: int = 100
    ) -> list[Job]: ...

    @abc.abstractmethod
    async def get_job(self, job_id: int) -> Job | None: ...

    @abc.abstractmethod
    async def retry_job(self, job_id: int) -> bool:
        """Make a dead job ready again now (by hand); False when it is not dead.

        It runs before the jobs of its lane that came after it and have not run yet (after the
        one running, if any)."""

    @abc.abstractmethod
    async def release_lane(self, job_id: int) -> bool:
        """Let the lane a dead letter holds go on without it ("skip"); the job stays dead and
        can still be retried or purged. False when it is not a dead letter holding its lane."""

    @abc.abstractmethod
    async def purge_jobs(self, states: Sequence[JobState], older_than: float | None = None) -> int:
        """Delete done or dead jobs last changed more than ``older_than`` seconds ago (all of
        them when None); return how many. Other states raise :class:`ValueError`. A purged dead
        letter that held its lane releases it."""

    @abc.abstractmethod
    async def record_part(
        self,
        message_id: str,
        channel: str,
        part: int,
        provider_message_id: str,
        *,
        job: Job | None = None,
    ) -> None:
        """Record that part ``part`` of a message was accepted by the provider.

        Part 0's id also becomes the message's ``provider_message_id``. A retried job skips the
        parts already recorded, so a split message is never sent twice in part. ``job``: as for
        :meth:`update_message`.
        """

    @abc.abstractmethod
    async def sent_parts(self, message_id: str) -> dict[int, str]:
        """Part number → provider id, for the parts of a message already sent."""

    @abc.abstractmethod
    async def complete_message(
        self,
        message_id: str,
        *,
        job: Job | None = None,
        complete: bool = False,
        report: Callable[[MessageRow], NewJob | None] | None = None,
        last: PartSent | None = None,
    ) -> MessageRow | None:
        """Every part of the message is recorded: move its state forward to what its parts
        reached (:func:`parts_state`; SENT unless statuses for its parts came first), in one
        write with the statuses of :meth:`apply_status`, so none is lost between the two.

        The row after the write when the state moved; None when it stayed (e.g. FAILED).
        ``last``: the last part, recorded first in the same write (as by :meth:`record_part`).
        ``report``: given that row, the job that reports the new state (or None), enqueued in
        the same write; it may be called more than once (a write may be applied again before
        it commits), so it only builds the job. ``job`` and ``complete``: as for
        :meth:`update_message`.
        """

    @abc.abstractmethod
    async def apply_status(
        self,
        message_id: str,
        provider_message_id: str | None,
        state: MessageState,
        error: str | None = None,
    ) -> StatusOutcome:
        """Apply a provider's status for the outbound message ``message_id``.

        The part whose provider id is ``provider_message_id`` moves forward to ``state``; the
        message moves only as :func:`status_target` says: to SENT and beyond only once all its
        parts went out (:meth:`complete_message`), so a retry of a message some of whose parts
        are still to send never takes it for sent. ``error`` is kept with a failure.

        An id of no recorded part, for a message none of whose parts is recorded yet, is
        recorded as its part 0: parts go out one at a time, each recorded before the next, so
        the provider can hold no other part of it (the status outran the record, or the
        attempt that sent it was cut off before recording it — then its retry does not send
        it again). Once a part is recorded, an unknown id may be a double of one: it is not
        placed while the message is being sent.
        """

    @abc.abstractmethod
    async def find_message_by_part(
        self, channel: str, provider_message_id: str
    ) -> MessageRow | None:
        """The outbound message one of whose parts the provider knows by this id."""

    @abc.abstractmethod
    async def thread_meta(self, channel: str, thread: str) -> dict[str, str]:
        """What a messenger remembered about a thread (e.g. a mail's subject); may be empty."""

    @abc.abstractmethod
    async def put_thread_meta(self, channel: str, thread: str, meta: dict[str, str]) -> None:
        """Merge ``meta`` into the thread's remembered values (a key set to "" is removed)."""

    @abc.abstractmethod
    async def put_media(self, row: MediaRow) -> None: ...

    @abc.abstractmethod
    async def get_media(self, media_id: str) -> MediaRow | None:
        """The published file, or None when unknown or expired."""

    @abc.abstractmethod
    async def purge_media(self, now: float) -> int:
        """Delete files whose link has expired; return how many."""

    @abc.abstractmethod
    async def last_inbound_at(self, channel: str, thread: str) -> float | None:
        """When the contact last wrote on ``thread`` (epoch seconds), for reply windows."""

    @abc.abstractmethod
    async def job_counts(self) -> dict[str, int]:
        """Number of jobs per state, and ``held``: dead letters holding their lanes."""

    @abc.abstractmethod
    async def oldest_due_at(self, now: float) -> float | None:
        """When the longest-waiting ready job became due (the smallest ``next_at`` not after
        ``now``), or None when no ready job is due; read from the index of ready jobs."""

    # -- erasure and retention -----------------------------------------------------------------
    @abc.abstractmethod
    async def forget_contact(
        self,
        channel: str,
        addresses: Sequence[str],
        refs: PayloadRefs,
        *,
        apply: bool,
        cancel_pending: bool = False,
    ) -> Erasure:
        """Find everything stored of the contact known by ``addresses`` on ``channel`` and,
        with ``apply``, remove it in one transaction: the contact row, its conversations,
        threads' remembered values, messages and their parts, published files, and the
        payloads of its jobs (the job rows stay with an empty payload and a neutral lane, so
        counts hold; a dead letter holding a lane releases it).

        Jobs are the contact's when their payload names one of the addresses (``refs`` then
        says which threads and conversations it names), or their lane or message is one of
        the contact's. Nothing is removed while one of them runs, nor while one is still to
        run unless ``cancel_pending`` (they become dead letters with an empty payload)."""

    @abc.abstractmethod
    async def purge_payloads(self, older_than: float) -> int:
        """Replace the payloads of done and dead jobs last changed more than ``older_than``
        seconds ago by :func:`purged_payload` (message texts and files go, the job rows and
        their ids, states and counts stay); return how many were purged now."""
