"""The embedded store: SQLite in WAL mode.

* **Writes** are queued for :mod:`.sqlite_writer`, which commits whatever one turn of the event
  loop queued as one transaction: webhook intake, job claims and completions from every worker
  share commits.
* **Point reads** (a row or a few by key, through an index) run on the event loop's thread, on
  the writer's connection between its commits (a commit never spans an ``await``, so they see
  exactly what is committed). They take some ten microseconds where a trip to a thread and
  back costs ten times that in event-loop time, and the connection's page cache stays warm
  across its own commits, which a second connection would have to re-read after each one.
* **Slow work** — reads that may scan (listings, counts, media blobs), purges, checkpoints of
  the log — runs in the thread of an aiosqlite connection, so it never holds up the loop.

``[store] synchronous`` (``normal`` by default) is SQLite's setting of that name. With NORMAL,
in WAL mode, every commit survives a crash of the process (kill -9): it is in the log, which
the operating system holds; the log is synced to disk only at checkpoints, so a power loss or
a crash of the OS can drop the last commits, acknowledged ones included (the file stays
consistent). FULL syncs the log at every commit, so an acknowledgement survives those too.
Group commit makes FULL affordable: one sync per batch, not per request, is what it costs
(``benchmarks/run.py --synchronous full`` measures both against a floor that syncs alike).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from ..errors import LeaseLost, StoreMissing
from ..models import MessageState
from .base import (
    PURGED_PREFIX,
    ChannelRow,
    ContactRow,
    ConversationRow,
    Direction,
    Erasure,
    Intake,
    IntakeResult,
    Job,
    JobState,
    MediaRow,
    MessageRow,
    NewJob,
    NewMessage,
    PartSent,
    PayloadRefs,
    StatusOutcome,
    Store,
    ThreadView,
    fence_of,
    parts_state,
    purged_payload,
    status_target,
)
from .erasure import CANCELLED, Found, lane_channel, needles
from .migrations import MIGRATIONS
from .rows import (
    JOB_COLUMNS,
    MESSAGE_COLUMNS,
    VIEW_COLUMNS,
    channel_row,
    contact_row,
    conversation_row,
    job_row,
    media_row,
    message_key,
    message_row,
    update_message_sql,
    view_row,
)
from .sqlite_writer import BatchWriter
from .suppression import KEY_NAME, address_hash, new_key

__all__ = ["SqliteStore"]

log = logging.getLogger("extmsg.store")


# Every lane's head (its oldest unfinished job) carries ``head = 1``: intake marks a job that
# opens its lane, finishing a job passes the mark to the next one of its lane. A claim then
# reads the ready, due heads in claim order from their own index, however many lanes and jobs
# wait behind running heads.
_CLAIM = f"""
UPDATE jobs SET state = 'running', lease_until = ?, updated_at = ?, fence = fence + 1
WHERE id IN (
    SELECT id FROM jobs INDEXED BY jobs_ready_heads
    WHERE head = 1 AND state = 'ready' AND next_at <= ? ORDER BY next_at, id LIMIT ?)
RETURNING {JOB_COLUMNS}
"""  # noqa: S608

_COMPLETE = (
    "UPDATE jobs SET state = 'done', head = 0, lease_until = NULL, in_doubt = 0,"
    " attempts = attempts + 1, updated_at = ? WHERE id = ? AND state = 'running'"
    " AND fence = COALESCE(?, fence)"
)

# After a job of the lane of job ``?`` finished: its oldest unfinished job is the head, unless
# a dead letter older than it holds the lane (``holds_lane``; the holder is not the head: it
# is not claimable, and nothing after it is either).
_NEXT_HEAD = """
UPDATE jobs SET head = 1 WHERE id = (
    SELECT MIN(id) FROM jobs INDEXED BY jobs_unfinished
    WHERE state IN ('ready', 'running') AND lane = (SELECT lane FROM jobs WHERE id = ?))
AND NOT EXISTS (
    SELECT 1 FROM jobs AS h INDEXED BY jobs_held
    WHERE h.holds_lane = 1 AND h.lane = jobs.lane AND h.id < jobs.id)
"""


def _reset_head(db: sqlite3.Connection, lane: str) -> None:
    """Mark the lane's head again after a hand-made change (a retry, a skip, a purge).

    The running job stays the head while it runs; else the oldest ready job, unless a dead
    letter older than it holds the lane.
    """
    row = db.execute(
        "SELECT id FROM jobs INDEXED BY jobs_unfinished"
        " WHERE lane = ? AND state IN ('ready', 'running') AND state = 'running'",
        (lane,),
    ).fetchone()
    if row is None:
        row = db.execute(
            "SELECT MIN(id) FROM jobs INDEXED BY jobs_unfinished"
            " WHERE lane = ? AND state IN ('ready', 'running')",
            (lane,),
        ).fetchone()
        held = db.execute(
            "SELECT MIN(id) FROM jobs INDEXED BY jobs_held WHERE lane = ? AND holds_lane = 1",
            (lane,),
        ).fetchone()
        if row is not None and held is not None and held[0] is not None and row[0] is not None:
            row = row if row[0] < held[0] else None
    head = row[0] if row is not None else None
    db.execute(
        "UPDATE jobs SET head = (id IS ?) WHERE lane = ? AND state IN ('ready', 'running')"
        " AND head != (id IS ?)",
        (head, lane, head),
    )


_LOCKED_RETRIES = 250  # about five seconds, like the busy timeout
# A point read finds the file locked only while another connection recovers the log; it
# runs on the event loop, so it tries again after a pause rather than block.
_READ_RETRIES = 50
_CHECKPOINT_EVERY = 100  # commits (ten pages or so each) between checkpoints of the log
_LOG_LIMIT = 4096  # pages (16 MiB) past which the log starts over, writes held back
# Copies the rest of the log, then writes a page (unchanged): that write starts the log over
# when all of it was copied (else it appends, harmlessly). extmsg never sets user_version.
_RESTART_LOG = "PRAGMA wal_checkpoint(PASSIVE); BEGIN IMMEDIATE; PRAGMA user_version = 0; COMMIT;"
_DELETE_CHUNK = 2000
# Claims look for expired leases when one this store handed out may have run out, and at
# least this often for the rest (another process's): the sweep would otherwise be a statement
# in every claim.
_LEASE_SWEEP_INTERVAL = 1.0


class SqliteStore(Store):
    """The SQLite store.

    :param synchronous: SQLite's ``synchronous`` setting for the file (``NORMAL`` or ``FULL``,
        ``[store] synchronous``).
    """

    writes_in_call_order = True

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self._synchronous = synchronous
        self._writer: BatchWriter | None = None
        self._background: aiosqlite.Connection | None = None
        self._checkpointing: asyncio.Task[None] | None = None
        self._commits = 0
        self._next_lease_sweep = 0.0
        self._earliest_lease = math.inf  # of the leases this store handed out since its sweep
        self._exclusive: dict[str, asyncio.Lock] = {}
        self._suppression_key: bytes | None = None  # read once it exists; it never changes

    # -- lifecycle -----------------------------------------------------------------------------
    async def open(self, *, create: bool = True) -> None:
        if not create and not self.path.is_file():
            raise StoreMissing(f"there is no store at {self.path} ('extmsg serve' creates it)")
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._migrate_file)
        background = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            for pragma in self._pragmas(5000):
                await background.execute(pragma)
            # Checkpoints run here, in this connection's thread, not at the writer's commits.
            db = self._connect_plain(busy_timeout_ms=0)
            db.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            await background.close()
            raise
        self._background = background
        self._writer = BatchWriter(db, on_commit=self._committed)

    def _migrate_file(self) -> None:
        db = self._connect_plain()
        try:
            _migrate(db)
        finally:
            db.close()

    def _pragmas(self, busy_timeout_ms: int) -> list[str]:
        # The busy timeout first: switching a new file to WAL takes a lock another opener
        # may hold for a moment.
        return [
            f"PRAGMA busy_timeout={busy_timeout_ms}",
            "PRAGMA journal_mode=WAL",
            f"PRAGMA synchronous={self._synchronous}",
            "PRAGMA foreign_keys=ON",
        ]

    def _connect_plain(self, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in self._pragmas(busy_timeout_ms):
            for attempt in range(_LOCKED_RETRIES):
                try:
                    db.execute(pragma)
                    break
                except sqlite3.OperationalError as exc:
                    # A new file's switch to WAL is refused, not waited for, while another
                    # connection opens it at the same moment.
                    if "locked" not in str(exc) or attempt == _LOCKED_RETRIES - 1:
                        raise
                    time.sleep(0.02)
        return db

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.close()
        if self._checkpointing is not None:
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        background, self._background = self._background, None
        if background is not None:
            with contextlib.suppress(sqlite3.Error):
                await background.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await background.close()

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """A lock of this process, then a lock file beside the store (``<store>.<name>.lock``,
        ``flock``) that the processes of ``serve --workers N`` take in turn; waiting for it
        polls, so it never blocks the loop and can be cancelled."""
        async with self._exclusive.setdefault(name, asyncio.Lock()):
            path = self.path.with_name(f"{self.path.name}.{name}.lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(0.05)
                yield
            finally:
                os.close(fd)  # releases the lock

    async def schema_version(self) -> int:
        row = await self._one("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        return int(row[0]) if row else 0

    @property
    def transactions(self) -> int:
        """Write transactions committed since the store was opened."""
        return self._writer.transactions if self._writer is not None else 0

    def _committed(self, writes: int) -> None:
        """After every so many commits, copy the log into the file in a thread."""
        self._commits += 1
        if self._commits % _CHECKPOINT_EVERY or self._checkpointing is not None:
            return
        self._checkpointing = asyncio.get_running_loop().create_task(
            self._checkpoint(), name="extmsg-sqlite-checkpoint"
        )

    async def _checkpoint(self) -> None:
        """A passive checkpoint, beside the writer. Once the log has passed ``_LOG_LIMIT``
        pages, it starts over from its beginning, with commits held back for a moment.

        A log starts over only when a write finds all of it copied into the file, and these
        checkpoints run while the writer's commits append to it: left to the writer, the log
        would not start over under steady writes. And the write that starts it over syncs its
        new header to disk. So, with the writer's commits held, this thread copies what was
        appended meanwhile and makes that write itself (``user_version``, unchanged): the sync
        happens here, not at a commit on the event loop. One trip to the thread for all of it,
        and nothing waits for readers (another process's long read would hold the writes back
        all that time): a log still in use goes on and starts over at a later checkpoint.
        """
        try:
            if self._background is None or self._writer is None:
                return
            rows = await self._background.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
            _, pages, _ = next(iter(rows), (0, 0, 0))
            if pages <= _LOG_LIMIT:
                return
            started = time.monotonic()
            async with self._writer.hold():
                try:
                    await self._background.executescript(_RESTART_LOG)
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        await self._background.execute("ROLLBACK")
                    raise
            log.info(
                "the SQLite log had grown to %d pages; starting it over held writes for %.1f ms",
                pages,
                (time.monotonic() - started) * 1000,
            )
        except sqlite3.Error:
            log.warning("checkpointing the SQLite log failed; trying again later", exc_info=True)
        finally:
            self._checkpointing = None

    # -- plumbing ------------------------------------------------------------------------------
    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Apply a write in this turn's transaction (see :mod:`.sqlite_writer`)."""
        if self._writer is None:
            raise RuntimeError("the store is not open")
        return await self._writer.run(fn)

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in this turn's transaction; answer the rows it changed."""
        return await self._run(lambda db: db.execute(sql, params).rowcount)

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """A point read by key, on the event loop's own thread (see the module's notes)."""
        return next(iter(await self._few(sql, params)), None)

    async def _few(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The few rows under one key, read like :meth:`_one`."""
        if self._writer is None:
            raise RuntimeError("the store is not open")
        for attempt in range(_READ_RETRIES):
            try:
                # fetchall: a statement left unfinished would hold its read snapshot open
                return self._writer.connection.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == _READ_RETRIES - 1:
                    raise
            await asyncio.sleep(0.01)
        raise AssertionError("unreachable")

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """A read that may scan: in the background connection's thread."""
        if self._background is None:
            raise RuntimeError("the store is not open")
        return list(await self._background.execute_fetchall(sql, params))

    async def _bulk_delete(self, table: str, where: str, params: Sequence[Any]) -> int:
        """Delete many rows in the background connection's thread, a chunk per transaction,
        so the writer never waits long for the file's lock."""
        if self._background is None:
            raise RuntimeError("the store is not open")
        sql = (
            f"DELETE FROM {table} WHERE rowid IN"  # noqa: S608
            f" (SELECT rowid FROM {table} WHERE {where} LIMIT {_DELETE_CHUNK})"
        )
        deleted = 0
        while True:
            cursor = await self._background.execute(sql, params)
            deleted += cursor.rowcount
            if cursor.rowcount < _DELETE_CHUNK:
                return deleted

    # -- directory -----------------------------------------------------------------------------
    async def upsert_channel(self, row: ChannelRow) -> None:
        await self._write(
            "INSERT INTO channels (name, messenger, unblu_channel_id, webhook_status,"
            " provisioned_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
            " messenger = excluded.messenger,"
            " unblu_channel_id = COALESCE(excluded.unblu_channel_id, unblu_channel_id),"
            " webhook_status = COALESCE(excluded.webhook_status, webhook_status),"
            " provisioned_at = COALESCE(excluded.provisioned_at, provisioned_at)",
            (row.name, row.messenger, row.unblu_channel_id, row.webhook_status, row.provisioned_at),
        )

    async def get_channel(self, name: str) -> ChannelRow | None:
        row = await self._one(
            "SELECT name, messenger, unblu_channel_id, webhook_status, provisioned_at"
            " FROM channels WHERE name = ?",
            (name,),
        )
        return channel_row(row) if row else None

    async def list_channels(self) -> list[ChannelRow]:
        rows = await self._all(
            "SELECT name, messenger, unblu_channel_id, webhook_status, provisioned_at"
            " FROM channels ORDER BY name"
        )
        return [channel_row(r) for r in rows]

    async def get_contact(self, channel: str, address: str) -> ContactRow | None:
        row = await self._one(
            "SELECT channel, address, name, unblu_person_id, unblu_contact_id, opted_out,"
            " opted_out_reason FROM contacts WHERE channel = ? AND address = ?",
            (channel, address),
        )
        if row is None:
            return await self._suppressed(channel, address)
        return contact_row(row)

    async def _suppressed(self, channel: str, address: str) -> ContactRow | None:
        """An opted-out stand-in for an erased contact that had opted out, else None."""
        if self._suppression_key is None:
            key = await self._one("SELECT secret FROM store_keys WHERE name = ?", (KEY_NAME,))
            if key is None:
                return None  # no entry was ever kept
            self._suppression_key = bytes(key[0])
        entry = await self._one(
            "SELECT reason FROM suppressions WHERE address_hash = ?",
            (address_hash(self._suppression_key, channel, address),),
        )
        if entry is None:
            return None
        return ContactRow(
            channel=channel, address=address, opted_out=True, opted_out_reason=entry[0]
        )

    async def upsert_contact(self, row: ContactRow) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO contacts (channel, address, name, unblu_person_id, unblu_contact_id,"
                " opted_out, opted_out_reason, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (channel, address) DO UPDATE SET name = excluded.name,"
                " unblu_person_id = excluded.unblu_person_id,"
                " unblu_contact_id = excluded.unblu_contact_id, updated_at = excluded.updated_at",
                (
                    row.channel,
                    row.address,
                    row.name,
                    row.unblu_person_id,
                    row.unblu_contact_id,
                    int(row.opted_out),
                    row.opted_out_reason,
                    time.time(),
                ),
            )
            lifted = _take_suppression(db, row.channel, row.address)
            if lifted is not None:  # the row carries the opt-out from now on
                db.execute(
                    "UPDATE contacts SET opted_out = 1, opted_out_reason = ?"
                    " WHERE channel = ? AND address = ?",
                    (lifted[0], row.channel, row.address),
                )

        await self._run(write)

    async def set_opt_out(
        self, channel: str, address: str, opted_out: bool, reason: str | None
    ) -> None:
        def write(db: sqlite3.Connection) -> None:
            # The row says it from now on: opted in again, or opted out on its own.
            _take_suppression(db, channel, address)
            db.execute(
                "INSERT INTO contacts (channel, address, opted_out, opted_out_reason, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (channel, address) DO UPDATE SET"
                " opted_out = excluded.opted_out, opted_out_reason = excluded.opted_out_reason,"
                " updated_at = excluded.updated_at",
                (channel, address, int(opted_out), reason, time.time()),
            )

        await self._run(write)

    _CONV = (
        "SELECT channel, thread, contact_address, unblu_conversation_id, state, created_at,"
        " ended_at FROM conversations"
    )

    async def active_conversation(self, channel: str, thread: str) -> ConversationRow | None:
        row = await self._one(
            f"{self._CONV} WHERE channel = ? AND thread = ? AND state = 'active'",
            (channel, thread),
        )
        return conversation_row(row) if row else None

    async def find_conversation(self, unblu_conversation_id: str) -> ConversationRow | None:
        row = await self._one(
            f"{self._CONV} WHERE unblu_conversation_id = ?",
            (unblu_conversation_id,),
        )
        return conversation_row(row) if row else None

    async def inbound_view(self, channel: str, address: str, thread: str) -> ThreadView:
        row = await self._one(
            f"SELECT {VIEW_COLUMNS}, NULL FROM (SELECT 1) AS one"  # noqa: S608
            " LEFT JOIN contacts AS k ON k.channel = ? AND k.address = ?"
            " LEFT JOIN conversations AS c"
            " ON c.channel = ? AND c.thread = ? AND c.state = 'active'",
            (channel, address, channel, thread),
        )
        return await self._with_contact(view_row(row), channel, address)

    async def outbound_view(self, channel: str, unblu_conversation_id: str) -> ThreadView:
        row = await self._one(
            f"SELECT {VIEW_COLUMNS}, (SELECT MAX(m.created_at) FROM messages AS m"  # noqa: S608
            "  WHERE m.channel = ? AND m.thread = c.thread AND m.direction = 'in')"
            " FROM conversations AS c"
            " LEFT JOIN contacts AS k ON k.channel = ? AND k.address = c.contact_address"
            " WHERE c.unblu_conversation_id = ?",
            (channel, channel, unblu_conversation_id),
        )
        if row is None:
            return ThreadView()
        view = view_row(row)
        assert view.conversation is not None
        return await self._with_contact(view, channel, view.conversation.contact_address)

    async def add_conversation(self, row: ConversationRow) -> None:
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE conversations SET state = 'ended', ended_at = ?"
                " WHERE channel = ? AND thread = ? AND state = 'active'",
                (now, row.channel, row.thread),
            )
            db.execute(
                "INSERT INTO conversations (unblu_conversation_id, channel, thread,"
                " contact_address, state, created_at) VALUES (?, ?, ?, ?, 'active', ?)"
                " ON CONFLICT (unblu_conversation_id) DO UPDATE SET state = 'active',"
                " ended_at = NULL",
                (
                    row.unblu_conversation_id,
                    row.channel,
                    row.thread,
                    row.contact_address,
                    row.created_at or now,
                ),
            )

        await self._run(write)

    async def end_conversation(self, unblu_conversation_id: str) -> None:
        await self._write(
            "UPDATE conversations SET state = 'ended', ended_at = ?"
            " WHERE unblu_conversation_id = ? AND state = 'active'",
            (time.time(), unblu_conversation_id),
        )

    # -- intake and messages -------------------------------------------------------------------
    async def intake(self, items: Sequence[Intake]) -> list[IntakeResult]:
        if not items:
            return []
        now = time.time()
        return await self._run(lambda db: _intake(db, items, now))

    async def get_message(self, message_id: str) -> MessageRow | None:
        row = await self._one(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?",  # noqa: S608
            (message_id,),
        )
        return message_row(row) if row else None

    async def find_message(
        self,
        channel: str,
        direction: Direction,
        *,
        provider_message_id: str | None = None,
        unblu_message_id: str | None = None,
    ) -> MessageRow | None:
        column, value = message_key(provider_message_id, unblu_message_id)
        row = await self._one(
            f"SELECT {MESSAGE_COLUMNS} FROM messages"  # noqa: S608
            f" WHERE channel = ? AND direction = ? AND {column} = ?",
            (channel, direction, value),
        )
        return message_row(row) if row else None

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
        fence = fence_of(job)
        given = {
            "provider_message_id": provider_message_id,
            "unblu_message_id": unblu_message_id,
            "conversation_id": conversation_id,
            "state": None if state is None else int(state),
        }
        given = {column: value for column, value in given.items() if value is not None}
        sql = update_message_sql(tuple(given), "?")
        params = (*given.values(), time.time(), message_id)

        def update(db: sqlite3.Connection) -> None:
            _held(db, job, fence, complete=complete)
            db.execute(sql, params)

        await self._run(update)

    async def advance_state(
        self,
        message_id: str,
        state: MessageState,
        error: str | None = None,
        *,
        job: Job | None = None,
    ) -> bool:
        failed = int(MessageState.FAILED)
        fence = fence_of(job)

        def advance(db: sqlite3.Connection) -> bool:
            _held(db, job, fence)
            return (
                db.execute(
                    "UPDATE messages SET state = ?, error = COALESCE(?, error), updated_at = ?"
                    " WHERE id = ? AND state < ? AND state != ?",
                    (int(state), error, time.time(), message_id, int(state), failed),
                ).rowcount
                == 1
            )

        return await self._run(advance)

    # -- jobs ----------------------------------------------------------------------------------
    async def claim_jobs(self, limit: int, lease_seconds: float) -> list[Job]:
        if limit <= 0:
            return []
        now = time.time()
        lease = now + lease_seconds

        sweep = now >= min(self._next_lease_sweep, self._earliest_lease)
        if sweep:
            self._next_lease_sweep = now + _LEASE_SWEEP_INTERVAL
            self._earliest_lease = math.inf
        self._earliest_lease = min(self._earliest_lease, lease)

        def claim(db: sqlite3.Connection) -> list[Any]:
            if sweep:
                # A lease ran out: the worker holding it stopped without finishing (killed,
                # or stalled for longer than the lease). The job is runnable again, and the
                # lost attempt counts, so a job that kills its worker every time still ends.
                # It may have reached the remote before it stopped: it is in doubt.
                db.execute(
                    "UPDATE jobs SET state = 'ready', lease_until = NULL, in_doubt = 1,"
                    " attempts = attempts + 1, last_error = 'the worker running it stopped"
                    " before it finished (lease expired)', updated_at = ?"
                    " WHERE state = 'running' AND lease_until < ?",
                    (now, now),
                )
            return db.execute(_CLAIM, (lease, now, now, limit)).fetchall()

        rows = await self._run(claim)
        rows.sort(key=lambda r: (r[6], r[0]))  # next_at, id: RETURNING has no order
        return [job_row(r) for r in rows]

    async def renew_lease(
        self,
        job_ids: Sequence[int],
        lease_seconds: float,
        *,
        fences: Mapping[int, int] | None = None,
    ) -> list[int]:
        if not job_ids:
            return []
        now = time.time()
        fenced = fences or {}

        def renew(db: sqlite3.Connection) -> list[int]:
            # A statement per job: a primary-key update costs microseconds here.
            return [
                i
                for i in job_ids
                if db.execute(
                    "UPDATE jobs SET lease_until = ?, updated_at = ?"
                    " WHERE id = ? AND state = 'running' AND fence = COALESCE(?, fence)",
                    (now + lease_seconds, now, i, fenced.get(i)),
                ).rowcount
            ]

        return await self._run(renew)

    async def hold_job(self, job_id: int, fence: int, lease_seconds: float) -> bool:
        now = time.time()
        changed = await self._write(
            "UPDATE jobs SET lease_until = ?, updated_at = ?"
            " WHERE id = ? AND fence = ? AND state = 'running'",
            (now + lease_seconds, now, job_id, fence),
        )
        return changed == 1

    async def complete_job(self, job_id: int, *, fence: int | None = None) -> bool:
        return await self._finish(_COMPLETE, (time.time(), job_id, fence), job_id)

    async def _finish(self, sql: str, params: Sequence[Any], job_id: int) -> bool:
        """A job leaves its lane's unfinished ones: the next of its lane becomes the head."""

        def finish(db: sqlite3.Connection) -> bool:
            if not db.execute(sql, params).rowcount:
                return False
            db.execute(_NEXT_HEAD, (job_id,))
            return True

        return await self._run(finish)

    async def reschedule_job(
        self,
        job_id: int,
        next_at: float,
        error: str,
        *,
        fence: int | None = None,
        in_doubt: bool = False,
    ) -> bool:
        changed = await self._write(
            "UPDATE jobs SET state = 'ready', lease_until = NULL, attempts = attempts + 1,"
            " next_at = ?, last_error = ?, in_doubt = ?, updated_at = ?"
            " WHERE id = ? AND state = 'running' AND fence = COALESCE(?, fence)",
            (next_at, error, int(in_doubt), time.time(), job_id, fence),
        )
        return changed == 1

    async def bury_job(
        self, job_id: int, error: str, *, fence: int | None = None, hold: bool = False
    ) -> bool:
        # in_doubt stays: a dead letter retried by hand still looks before sending.
        sql = (
            "UPDATE jobs SET state = 'dead', head = 0, lease_until = NULL,"
            " attempts = attempts + 1, last_error = ?, updated_at = ?, holds_lane = ?"
            " WHERE id = ? AND (state = 'running' OR state = 'ready' AND ? IS NULL)"
            " AND fence = COALESCE(?, fence)"
        )
        params = (error, time.time(), int(hold), job_id, fence, fence)
        if hold:
            # the head mark is not passed on: the lane waits
            return await self._write(sql, params) == 1
        return await self._finish(sql, params, job_id)

    async def release_jobs(
        self,
        job_ids: Sequence[int],
        *,
        fences: Mapping[int, int] | None = None,
        in_doubt: Collection[int] = (),
    ) -> None:
        if not job_ids:
            return
        now = time.time()
        fenced = fences or {}
        doubt = set(in_doubt)
        await self._run(
            lambda db: db.executemany(
                "UPDATE jobs SET state = 'ready', lease_until = NULL, updated_at = ?,"
                " in_doubt = in_doubt OR ? WHERE id = ? AND state = 'running'"
                " AND fence = COALESCE(?, fence)",
                [(now, int(i in doubt), i, fenced.get(i)) for i in job_ids],
            )
        )

    async def list_jobs(
        self, states: Sequence[JobState] = ("ready", "running", "dead"), limit: int = 100
    ) -> list[Job]:
        marks = ",".join("?" * len(states))
        rows = await self._all(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ({marks})"  # noqa: S608
            " ORDER BY id LIMIT ?",
            (*states, limit),
        )
        return [job_row(r) for r in rows]

    async def get_job(self, job_id: int) -> Job | None:
        row = await self._one(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?",  # noqa: S608
            (job_id,),
        )
        return job_row(row) if row else None

    async def retry_job(self, job_id: int) -> bool:
        now = time.time()

        def retry(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "UPDATE jobs SET state = 'ready', next_at = ?, attempts = 0, holds_lane = 0,"
                " updated_at = ? WHERE id = ? AND state = 'dead' RETURNING lane",
                (now, now, job_id),
            ).fetchone()
            changed = row is not None
            if row is not None:
                # The job is unfinished again, and older than the rest of its lane.
                _reset_head(db, row[0])
                # A hand retry re-opens the message's failed state.
                db.execute(
                    "UPDATE messages SET state = ?, error = NULL, updated_at = ?"
                    " WHERE id = (SELECT message_id FROM jobs WHERE id = ?) AND state = ?",
                    (int(MessageState.PENDING), now, job_id, int(MessageState.FAILED)),
                )
            return changed

        return await self._run(retry)

    async def release_lane(self, job_id: int) -> bool:
        def release(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "UPDATE jobs SET holds_lane = 0, updated_at = ?"
                " WHERE id = ? AND state = 'dead' AND holds_lane = 1 RETURNING lane",
                (time.time(), job_id),
            ).fetchone()
            if row is not None:
                _reset_head(db, row[0])
            return row is not None

        return await self._run(release)

    async def purge_jobs(self, states: Sequence[JobState], older_than: float | None = None) -> int:
        unfinished = set(states) - {"done", "dead"}
        if unfinished:
            raise ValueError(f"only done or dead jobs can be purged, not {sorted(unfinished)}")
        if not states:
            return 0
        marks = ",".join("?" * len(states))
        cutoff = time.time() - older_than if older_than is not None else time.time() + 1
        if "dead" in states:
            # The lanes the purged dead letters held go on (released first: a crash between
            # the two steps leaves released dead letters, not lanes held by nothing).
            def release(db: sqlite3.Connection) -> None:
                lanes = db.execute(
                    "UPDATE jobs SET holds_lane = 0"
                    " WHERE holds_lane = 1 AND state = 'dead' AND updated_at < ? RETURNING lane",
                    (cutoff,),
                ).fetchall()
                for lane in {r[0] for r in lanes}:
                    _reset_head(db, lane)

            await self._run(release)
        return await self._bulk_delete(
            "jobs", f"state IN ({marks}) AND updated_at < ?", (*states, cutoff)
        )

    async def record_part(
        self,
        message_id: str,
        channel: str,
        part: int,
        provider_message_id: str,
        *,
        job: Job | None = None,
    ) -> None:
        now = time.time()
        fence = fence_of(job)

        def record(db: sqlite3.Connection) -> None:
            _held(db, job, fence)
            _record_part(
                db,
                message_id,
                PartSent(channel=channel, part=part, provider_message_id=provider_message_id),
                now,
            )

        await self._run(record)

    async def sent_parts(self, message_id: str) -> dict[int, str]:
        rows = await self._few(
            "SELECT part, provider_message_id FROM message_parts WHERE message_id = ?",
            (message_id,),
        )
        return {int(r[0]): str(r[1]) for r in rows}

    async def find_message_by_part(
        self, channel: str, provider_message_id: str
    ) -> MessageRow | None:
        row = await self._one(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ("  # noqa: S608
            " SELECT message_id FROM message_parts"
            " WHERE channel = ? AND provider_message_id = ? LIMIT 1)",
            (channel, provider_message_id),
        )
        return message_row(row) if row else None

    async def complete_message(
        self,
        message_id: str,
        *,
        job: Job | None = None,
        complete: bool = False,
        report: Callable[[MessageRow], NewJob | None] | None = None,
        last: PartSent | None = None,
    ) -> MessageRow | None:
        fence = fence_of(job)

        def settle(db: sqlite3.Connection) -> MessageRow | None:
            _held(db, job, fence, complete=complete)
            now = time.time()
            # Part 0's provider id goes into the message's row with its new state, in one
            # update (or alone, when the state stays).
            first = None
            if last is not None:
                _insert_part(db, message_id, last, now)
                first = last.provider_message_id if last.part == 0 else None
            row = db.execute("SELECT state FROM messages WHERE id = ?", (message_id,)).fetchone()
            target, error = MessageState.PENDING, None
            if row is not None and row[0] != MessageState.FAILED:
                parts = db.execute(
                    "SELECT state, error FROM message_parts WHERE message_id = ? ORDER BY part",
                    (message_id,),
                ).fetchall()
                target = parts_state(MessageState(p[0]) for p in parts)
                error = next((p[1] for p in parts if p[0] == MessageState.FAILED), None)
            if row is None or row[0] == MessageState.FAILED or target <= row[0]:
                if first is not None:
                    _set_first_part(db, message_id, first, now)
                return None
            settled = _set_state(db, message_id, target, error, first=first)
            then = report(settled) if report is not None else None
            if then is not None:
                _enqueue(db, then, time.time())
            return settled

        return await self._run(settle)

    async def apply_status(
        self,
        message_id: str,
        provider_message_id: str | None,
        state: MessageState,
        error: str | None = None,
    ) -> StatusOutcome:
        failed = error if state == MessageState.FAILED else None

        def apply(db: sqlite3.Connection) -> StatusOutcome:
            row = db.execute(
                "SELECT state, channel FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None:
                return StatusOutcome(applied=False)
            current = MessageState(row[0])
            placed = False
            if provider_message_id is not None:
                placed = (
                    db.execute(
                        "UPDATE message_parts SET"
                        " state = CASE WHEN ? > state AND state != ? THEN ? ELSE state END,"
                        " error = COALESCE(?, error)"
                        " WHERE message_id = ? AND provider_message_id = ?",
                        (
                            int(state),
                            int(MessageState.FAILED),
                            int(state),
                            failed,
                            message_id,
                            provider_message_id,
                        ),
                    ).rowcount
                    > 0
                )
                if not placed and current == MessageState.PENDING:
                    placed = _first_part(db, message_id, row[1], provider_message_id, state, failed)
            parts: list[MessageState] | None = None
            if placed:
                parts = [
                    MessageState(p[0])
                    for p in db.execute(
                        "SELECT state FROM message_parts WHERE message_id = ?", (message_id,)
                    )
                ]
            target = status_target(current, state, parts)
            if target is None:
                return StatusOutcome(applied=False)
            if target <= current:
                return StatusOutcome(applied=True)
            _set_state(db, message_id, target, failed)
            return StatusOutcome(applied=True, state=target)

        return await self._run(apply)

    async def thread_meta(self, channel: str, thread: str) -> dict[str, str]:
        rows = await self._few(
            "SELECT key, value FROM thread_meta WHERE channel = ? AND thread = ?",
            (channel, thread),
        )
        return {str(r[0]): str(r[1]) for r in rows}

    async def put_thread_meta(self, channel: str, thread: str, meta: dict[str, str]) -> None:
        now = time.time()

        def put(db: sqlite3.Connection) -> None:
            for key, value in meta.items():
                if value:
                    db.execute(
                        "INSERT INTO thread_meta (channel, thread, key, value, updated_at)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (channel, thread, key)"
                        " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                        (channel, thread, key, value, now),
                    )
                else:
                    db.execute(
                        "DELETE FROM thread_meta WHERE channel = ? AND thread = ? AND key = ?",
                        (channel, thread, key),
                    )

        await self._run(put)

    async def put_media(self, row: MediaRow) -> None:
        await self._write(
            "INSERT INTO media (id, channel, file_name, mime_type, data, expires_at, message_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.channel,
                row.file_name,
                row.mime_type,
                row.data,
                row.expires_at,
                row.message_id,
            ),
        )

    async def get_media(self, media_id: str) -> MediaRow | None:
        rows = await self._all(  # a blob: read in the reader's thread
            "SELECT id, channel, file_name, mime_type, data, expires_at FROM media"
            " WHERE id = ? AND expires_at > ?",
            (media_id, time.time()),
        )
        row = rows[0] if rows else None
        return media_row(row) if row is not None else None

    async def purge_media(self, now: float) -> int:
        return await self._bulk_delete("media", "expires_at <= ?", (now,))

    async def last_inbound_at(self, channel: str, thread: str) -> float | None:
        row = await self._one(
            "SELECT MAX(created_at) FROM messages"
            " WHERE channel = ? AND thread = ? AND direction = 'in'",
            (channel, thread),
        )
        return float(row[0]) if row and row[0] is not None else None

    async def job_counts(self) -> dict[str, int]:
        rows = await self._all(
            "SELECT state, COUNT(*) FROM jobs GROUP BY state UNION ALL"
            " SELECT 'held', COUNT(*) FROM jobs INDEXED BY jobs_held WHERE holds_lane = 1"
        )
        counts = {"ready": 0, "running": 0, "done": 0, "dead": 0, "held": 0}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    async def oldest_due_at(self, now: float) -> float | None:
        row = await self._one(
            "SELECT MIN(next_at) FROM jobs INDEXED BY jobs_runnable"
            " WHERE state = 'ready' AND next_at <= ?",
            (now,),
        )
        return float(row[0]) if row and row[0] is not None else None

    # -- erasure and retention -----------------------------------------------------------------
    async def forget_contact(
        self,
        channel: str,
        addresses: Sequence[str],
        refs: PayloadRefs,
        *,
        apply: bool,
        cancel_pending: bool = False,
    ) -> Erasure:
        if self._writer is None:
            raise RuntimeError("the store is not open")
        # The look-up reads every job once (payloads and lanes): on a snapshot in a thread,
        # without the write lock. Under the lock only what came since, or may have changed,
        # is read again, so the server's writes wait for milliseconds, not for a table scan.
        first = Found(channel, tuple(dict.fromkeys(addresses)))
        seen = await asyncio.to_thread(self._look_up_snapshot, first, refs)
        if not apply:
            return first.report(applied=False)

        def forget(db: sqlite3.Connection) -> Erasure:
            found = first.seeded()
            _look_up(db, found, refs, after_id=seen)
            if found.refusal(cancel_pending):
                return found.report(applied=False)
            # Every job of the contact's lanes is the contact's: no lane is left to go on.
            _erase(db, found, time.time())
            return found.report(applied=True)

        return await self._run(forget)

    def _look_up_snapshot(self, found: Found, refs: PayloadRefs) -> int:
        db = self._connect_plain()
        try:
            db.execute("BEGIN")  # one read snapshot for every statement
            try:
                return _look_up(db, found, refs, after_id=0)
            finally:
                db.execute("ROLLBACK")
        finally:
            db.close()

    async def purge_payloads(self, older_than: float) -> int:
        if self._background is None:
            raise RuntimeError("the store is not open")
        cutoff = time.time() - older_than
        purged = 0
        after = 0  # each chunk goes on where the last one stopped, in id order ("+state":
        # not through the index of states, which would sort the whole set for every chunk)
        # A chunk per transaction in the background connection's thread, like other purges;
        # ``updated_at`` stays, so finished jobs are still deleted when their time comes.
        while True:
            rows = list(
                await self._background.execute_fetchall(
                    "SELECT id, lane FROM jobs WHERE id > ? AND +state IN ('done', 'dead')"
                    " AND updated_at < ? AND substr(payload, 1, ?) != ? ORDER BY id LIMIT ?",
                    (after, cutoff, len(PURGED_PREFIX), PURGED_PREFIX, _DELETE_CHUNK),
                )
            )
            if not rows:
                return purged
            # One transaction per chunk, not one per row.
            await self._background.execute("BEGIN IMMEDIATE")
            try:
                await self._background.executemany(
                    "UPDATE jobs SET payload = ? WHERE id = ?",
                    [(purged_payload(lane_channel(r[1]), "retention"), r[0]) for r in rows],
                )
            except BaseException:
                await self._background.execute("ROLLBACK")
                raise
            await self._background.execute("COMMIT")
            after = int(rows[-1][0])
            purged += len(rows)
            if len(rows) < _DELETE_CHUNK:
                return purged


def _intake(db: sqlite3.Connection, items: Sequence[Intake], now: float) -> list[IntakeResult]:
    """Write a batch of intakes with a few multi-row statements (the transaction is open).

    Messages go first, ``ON CONFLICT DO NOTHING``; the rows the insert returns tell which were
    new. A duplicate (also of an earlier item in the same batch) enqueues no job. Jobs are
    inserted in item order, so their ids keep the order in which the work arrived.
    """
    inserted: set[tuple[Any, ...]] = set()
    messages = [item.message for item in items if item.message is not None]
    for batch in _chunks(messages, 500):
        values = ",".join(["(?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)"] * len(batch))
        params: list[Any] = []
        for new in batch:
            params += (
                new.id,
                new.channel,
                new.direction,
                new.thread,
                new.provider_message_id,
                new.unblu_message_id,
                new.conversation_id,
                int(new.state),
                now,
                now,
            )
        returned = db.execute(
            f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES {values}"  # noqa: S608
            " ON CONFLICT DO NOTHING"
            " RETURNING id, channel, direction, provider_message_id, unblu_message_id",
            params,
        ).fetchall()
        inserted.update(tuple(r) for r in returned)

    results: list[IntakeResult] = []
    jobs: list[tuple[Any, ...]] = []
    for item in items:
        message_id: str | None = None
        m = item.message
        if m is not None:
            key = (m.id, m.channel, m.direction, m.provider_message_id, m.unblu_message_id)
            if key not in inserted:
                results.append(IntakeResult(accepted=False, message_id=_existing(db, m)))
                continue
            inserted.discard(key)  # a later item with the same key is a duplicate of this one
            message_id = m.id
        if item.job is not None:
            j = item.job
            jobs.append(
                (
                    j.kind,
                    j.lane,
                    j.payload,
                    j.message_id or message_id,
                    now + max(j.delay, 0.0),
                    now,
                    now,
                )
            )
        results.append(IntakeResult(accepted=True, message_id=message_id))

    # A job that finds its lane empty (nothing unfinished, no dead letter holding it) is its head.
    taken: set[str] = set()
    # Held lanes are rare: their (tiny) index is asked only when it holds anything.
    held = db.execute(
        "SELECT 1 FROM jobs INDEXED BY jobs_held WHERE holds_lane = 1 LIMIT 1"
    ).fetchone()
    for lanes in _chunks(sorted({row[1] for row in jobs}), 500):
        marks = ",".join("?" * len(lanes))
        taken.update(
            r[0]
            for r in db.execute(
                "SELECT DISTINCT lane FROM jobs INDEXED BY jobs_unfinished"  # noqa: S608
                f" WHERE lane IN ({marks}) AND state IN ('ready', 'running')",
                lanes,
            )
        )
        if held:
            taken.update(
                r[0]
                for r in db.execute(
                    "SELECT lane FROM jobs INDEXED BY jobs_held"  # noqa: S608
                    f" WHERE lane IN ({marks}) AND holds_lane = 1",
                    lanes,
                )
            )
    heads: list[int] = []
    for row in jobs:
        heads.append(int(row[1] not in taken))
        taken.add(row[1])
    for rows in _chunks(list(zip(jobs, heads, strict=True)), 500):
        values = ",".join(["(?, ?, ?, ?, 'ready', 0, ?, ?, ?, ?)"] * len(rows))
        db.execute(
            "INSERT INTO jobs (kind, lane, payload, message_id, state, attempts,"  # noqa: S608
            f" next_at, created_at, updated_at, head) VALUES {values}",
            [v for row, head in rows for v in (*row, head)],
        )
    return results


def _enqueue(db: sqlite3.Connection, job: NewJob, now: float) -> None:
    """One job, as :func:`_intake` enqueues it, in one statement: the head of its lane when
    that has nothing unfinished and no dead letter holding it."""
    db.execute(
        "INSERT INTO jobs (kind, lane, payload, message_id, state, attempts, next_at,"
        " created_at, updated_at, head) VALUES (?1, ?2, ?3, ?4, 'ready', 0, ?5, ?6, ?6,"
        " NOT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_unfinished"
        "  WHERE lane = ?2 AND state IN ('ready', 'running'))"
        " AND NOT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_held"
        "  WHERE lane = ?2 AND holds_lane = 1))",
        (job.kind, job.lane, job.payload, job.message_id, now + max(job.delay, 0.0), now),
    )


def _first_part(
    db: sqlite3.Connection,
    message_id: str,
    channel: str,
    provider_message_id: str,
    state: MessageState,
    error: str | None,
) -> bool:
    """Record a status's id as part 0 of a message none of whose parts is recorded yet: parts
    go out one at a time, each recorded before the next, so the provider's only part of such
    a message is its first (sent by an attempt cut off before recording it, or by the running
    one, not yet recorded). With a part recorded, an unknown id may be a double of one."""
    now = time.time()
    if not db.execute(
        "INSERT INTO message_parts (message_id, part, channel, provider_message_id, created_at,"
        " state, error) SELECT ?, 0, ?, ?, ?, ?, ?"
        " WHERE NOT EXISTS (SELECT 1 FROM message_parts WHERE message_id = ?)",
        (
            message_id,
            channel,
            provider_message_id,
            now,
            int(max(state, MessageState.SENT)),
            error,
            message_id,
        ),
    ).rowcount:
        return False
    db.execute(
        "UPDATE messages SET provider_message_id = ?, updated_at = ? WHERE id = ?",
        (provider_message_id, now, message_id),
    )
    return True


def _set_state(
    db: sqlite3.Connection,
    message_id: str,
    state: MessageState,
    error: str | None,
    *,
    first: str | None = None,
) -> MessageRow:
    """Move the message to ``state``; ``first``: its part 0's provider id, set as well."""
    row = db.execute(
        "UPDATE messages SET state = ?, error = COALESCE(?, error), updated_at = ?,"  # noqa: S608
        " provider_message_id = COALESCE(?, provider_message_id)"
        f" WHERE id = ? RETURNING {MESSAGE_COLUMNS}",
        (int(state), error, time.time(), first, message_id),
    ).fetchone()
    return message_row(row)


def _held(
    db: sqlite3.Connection, job: Job | None, fence: int | None, *, complete: bool = False
) -> None:
    """Raise :class:`LeaseLost` unless ``job`` still runs under the claim ``fence`` (None:
    nothing to check); raised inside a write, it undoes that write (see :mod:`.sqlite_writer`).
    With ``complete``, mark the job done as well (the check is the completion's own)."""
    if complete:
        if job is None:
            raise ValueError("complete=True needs the job to complete")
        if not _complete(db, job.id, fence):
            raise LeaseLost(job.id, job.fence)
        return
    if job is None or fence is None:
        return
    if not db.execute(
        "SELECT 1 FROM jobs WHERE id = ? AND fence = ? AND state = 'running'", (job.id, fence)
    ).fetchone():
        raise LeaseLost(job.id, fence)


def _record_part(db: sqlite3.Connection, message_id: str, sent: PartSent, now: float) -> None:
    _insert_part(db, message_id, sent, now)
    if sent.part == 0:
        _set_first_part(db, message_id, sent.provider_message_id, now)


def _insert_part(db: sqlite3.Connection, message_id: str, sent: PartSent, now: float) -> None:
    db.execute(
        "INSERT INTO message_parts (message_id, part, channel, provider_message_id,"
        " created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (message_id, sent.part, sent.channel, sent.provider_message_id, now),
    )


def _set_first_part(
    db: sqlite3.Connection, message_id: str, provider_message_id: str, now: float
) -> None:
    """The message's provider id is its part 0's (a reply to it quotes that one)."""
    db.execute(
        "UPDATE messages SET provider_message_id = ?, updated_at = ? WHERE id = ?",
        (provider_message_id, now, message_id),
    )


def _complete(db: sqlite3.Connection, job_id: int, fence: int | None) -> bool:
    """Mark a running job done (under ``fence``, when given) and pass its lane's head mark
    on; False when it does not run (under that fence), and nothing changed."""
    if not db.execute(_COMPLETE, (time.time(), job_id, fence)).rowcount:
        return False
    db.execute(_NEXT_HEAD, (job_id,))
    return True


def _existing(db: sqlite3.Connection, m: NewMessage) -> str | None:
    """The id of the stored message ``m`` duplicates."""
    row = db.execute(
        "SELECT id FROM messages WHERE channel = ? AND direction = ? AND"
        " (provider_message_id = ? OR unblu_message_id = ?)"
        " UNION ALL SELECT id FROM messages WHERE id = ? LIMIT 1",
        (m.channel, m.direction, m.provider_message_id, m.unblu_message_id, m.id),
    ).fetchone()
    return str(row[0]) if row else None


T = TypeVar("T")


def _chunks(values: Sequence[T], size: int) -> list[Sequence[T]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


def _migrate(db: sqlite3.Connection) -> None:
    """Apply pending migrations, each in one transaction with its version row.

    The current version is read inside each migration's ``BEGIN IMMEDIATE`` so two
    processes opening one file at once cannot both apply the same migration.
    """
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    for migration in MIGRATIONS:
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
            if (int(row[0]) if row else 0) >= migration.version:
                db.execute("ROLLBACK")
                continue
            for statement in _statements(migration.sql):
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.description, time.time()),
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]


# -- erasure -------------------------------------------------------------------------------------
def _values(values: Collection[Any]) -> str:
    """A list as one parameter, read back with ``IN (SELECT value FROM json_each(?))``."""
    return json.dumps(sorted(values))


def _look_up(db: sqlite3.Connection, found: Found, refs: PayloadRefs, *, after_id: int) -> int:
    """Fill ``found`` with the contact's rows; read jobs only past ``after_id`` (besides those
    ``found`` holds and the unfinished ones of its lanes). Answer the last job id read."""
    channel = found.channel
    addresses = _values(found.addresses)
    for address, person, contact, opted_out, reason in db.execute(
        "SELECT address, unblu_person_id, unblu_contact_id, opted_out, opted_out_reason"
        " FROM contacts WHERE channel = ? AND address IN (SELECT value FROM json_each(?))",
        (channel, addresses),
    ):
        found.contact_rows += 1
        if opted_out:
            found.opted_out[address] = reason
        found.person_ids.update(v for v in (person,) if v)
        found.contact_ids.update(v for v in (contact,) if v)
    for conversation, thread in db.execute(
        "SELECT unblu_conversation_id, thread FROM conversations"
        " WHERE channel = ? AND contact_address IN (SELECT value FROM json_each(?))",
        (channel, addresses),
    ):
        found.conversations.add(conversation)
        found.threads.add(thread)
    last = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0])
    prefix = found.lane_prefix()
    names = needles(found.addresses)
    named = " OR ".join(["instr(payload, ?) > 0"] * len(names))
    for job_id, payload in db.execute(
        "SELECT id, payload FROM jobs WHERE id > ? AND id <= ?"  # noqa: S608
        f" AND substr(lane, 1, ?) = ? AND ({named})",
        (after_id, last, len(prefix), prefix, *names),
    ):
        threads, conversations = refs(bytes(payload))
        found.jobs[job_id] = ("", "", False)
        found.threads.update(threads)
        found.conversations.update(conversations)
    for _, thread in db.execute(
        "SELECT unblu_conversation_id, thread FROM conversations"
        " WHERE channel = ? AND unblu_conversation_id IN (SELECT value FROM json_each(?))",
        (channel, _values(found.conversations)),
    ):
        found.threads.add(thread)
        found.seen_threads.add(thread)
    threads = _values(found.all_threads())
    # A literal direction: each has its own partial index, named (the planner would rather
    # walk the whole channel in the Unblu id index).
    by_direction = (("in", "messages_inbound_thread"), ("out", "messages_outbound_thread"))
    for direction, index in by_direction:
        for message_id, provider_id, thread in db.execute(
            f"SELECT id, provider_message_id, thread FROM messages INDEXED BY {index}"  # noqa: S608
            f" WHERE channel = ? AND direction = '{direction}'"
            " AND thread IN (SELECT value FROM json_each(?))",
            (channel, threads),
        ):
            found.messages.add(message_id)
            found.seen_threads.add(thread)
            if provider_id:
                found.provider_ids.add(provider_id)
    messages = _values(found.messages)
    for (provider_id,) in db.execute(
        "SELECT provider_message_id FROM message_parts"
        " WHERE message_id IN (SELECT value FROM json_each(?))",
        (messages,),
    ):
        found.parts += 1
        found.provider_ids.add(provider_id)
    lanes = set(found.lanes())
    for job_id, lane, message_id in db.execute(
        "SELECT id, lane, message_id FROM jobs WHERE id > ? AND id <= ? AND substr(lane, 1, ?) = ?",
        (after_id, last, len(prefix), prefix),
    ):
        if lane in lanes or message_id in found.messages:
            found.jobs[job_id] = ("", "", False)
    lane_values = _values(lanes)
    for (job_id,) in db.execute(
        "SELECT id FROM jobs INDEXED BY jobs_unfinished"
        " WHERE lane IN (SELECT value FROM json_each(?)) AND state IN ('ready', 'running')"
        " UNION SELECT id FROM jobs INDEXED BY jobs_held"
        " WHERE lane IN (SELECT value FROM json_each(?)) AND holds_lane = 1",
        (lane_values, lane_values),
    ):
        found.jobs[job_id] = ("", "", False)
    # The jobs as they are now (one may have finished, or been purged, since it was found).
    rows = db.execute(
        "SELECT id, state, lane, holds_lane FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
        (_values(found.jobs),),
    ).fetchall()
    found.jobs = {int(r[0]): (str(r[1]), str(r[2]), bool(r[3])) for r in rows}
    found.media = int(
        db.execute(
            "SELECT COUNT(*) FROM media WHERE message_id IN (SELECT value FROM json_each(?))",
            (messages,),
        ).fetchone()[0]
    )
    found.thread_meta = int(
        db.execute(
            "SELECT COUNT(*) FROM thread_meta"
            " WHERE channel = ? AND thread IN (SELECT value FROM json_each(?))",
            (channel, threads),
        ).fetchone()[0]
    )
    return last


def _erase(db: sqlite3.Connection, found: Found, now: float) -> None:
    """Remove what ``found`` lists (the transaction is open)."""
    channel = found.channel
    messages = _values(found.messages)
    statements: list[tuple[str, tuple[Any, ...]]] = [
        (
            "DELETE FROM contacts"
            " WHERE channel = ? AND address IN (SELECT value FROM json_each(?))",
            (channel, _values(found.addresses)),
        ),
        (
            "DELETE FROM conversations"
            " WHERE channel = ? AND unblu_conversation_id IN (SELECT value FROM json_each(?))",
            (channel, _values(found.conversations)),
        ),
        (
            "DELETE FROM message_parts WHERE message_id IN (SELECT value FROM json_each(?))",
            (messages,),
        ),
        ("DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?))", (messages,)),
        ("DELETE FROM media WHERE message_id IN (SELECT value FROM json_each(?))", (messages,)),
        (
            "DELETE FROM thread_meta"
            " WHERE channel = ? AND thread IN (SELECT value FROM json_each(?))",
            (channel, _values(found.all_threads())),
        ),
        # The job rows stay for the counts, with nothing left that names the contact; one
        # still to run becomes a dead letter that says why.
        (
            "UPDATE jobs SET payload = ?, lane = ?, message_id = NULL, in_doubt = 0,"
            " holds_lane = 0, head = 0, lease_until = NULL,"
            " last_error = CASE WHEN state = 'ready' THEN ? END,"
            " updated_at = CASE WHEN state = 'ready' THEN ? ELSE updated_at END,"
            " state = CASE WHEN state = 'ready' THEN 'dead' ELSE state END"
            " WHERE id IN (SELECT value FROM json_each(?))",
            (
                purged_payload(channel, "erasure"),
                found.erased_lane,
                CANCELLED,
                now,
                _values(found.jobs),
            ),
        ),
    ]
    for sql, params in statements:
        db.execute(sql, params)
    if found.opted_out:
        key = _suppression_key(db, create=True)
        assert key is not None
        db.executemany(
            "INSERT OR REPLACE INTO suppressions (address_hash, reason, created_at)"
            " VALUES (?, ?, ?)",
            [(address_hash(key, channel, a), r, now) for a, r in found.opted_out.items()],
        )


def _suppression_key(db: sqlite3.Connection, *, create: bool) -> bytes | None:
    """The store's key for suppression entries; made on first need when ``create``."""
    select = "SELECT secret FROM store_keys WHERE name = ?"
    row = db.execute(select, (KEY_NAME,)).fetchone()
    if row is None and create:
        db.execute(
            "INSERT OR IGNORE INTO store_keys (name, secret, created_at) VALUES (?, ?, ?)",
            (KEY_NAME, new_key(), time.time()),
        )
        row = db.execute(select, (KEY_NAME,)).fetchone()
    return bytes(row[0]) if row else None


def _take_suppression(
    db: sqlite3.Connection, channel: str, address: str
) -> tuple[str | None] | None:
    """Remove the address's suppression entry; answer its ``(reason,)``, or None if none."""
    key = _suppression_key(db, create=False)
    if key is None:
        return None
    digest = address_hash(key, channel, address)
    row = db.execute("SELECT reason FROM suppressions WHERE address_hash = ?", (digest,)).fetchone()
    if row is None:
        return None
    db.execute("DELETE FROM suppressions WHERE address_hash = ?", (digest,))
    return (row[0],)
