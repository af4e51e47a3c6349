"""The scale-out store: PostgreSQL through an asyncpg pool, shared by several extmsg instances.

**Claiming** is one READ COMMITTED transaction of three statements:

1. expired leases are taken back, their rows locked ``FOR UPDATE SKIP LOCKED`` so two claimers
   never wait on each other nor count one lost attempt twice;
2. the lane heads that are ready, due and whose lane runs nothing are listed oldest first (from
   the oldest ready jobs, or lane by lane when those mostly wait behind running heads), and the
   claimer takes a transaction-scoped advisory lock per lane (``pg_try_advisory_xact_lock``),
   passing over lanes another claimer holds: ``SKIP LOCKED`` for lanes;
3. one ``UPDATE`` re-checks every candidate under those locks (still ready, due, its lane's head,
   nothing of its lane running) and marks it running.

The lane, not a job row, is what must be exclusive, hence a lock per lane. Locking the head row
is not enough: intakes of several instances commit out of id order and a dead letter retried by
hand becomes its lane's head again, so two claimers can each lock a different "head" of one
lane. A ``lanes`` table would give each lane a lockable row, at the price of a write per intake
and of its own garbage collection; advisory locks cost nothing until taken and vanish at commit.
Statement 3 reads a snapshot taken after the locks were granted, so it sees every claim an
earlier holder of the lane committed. The partial unique index ``jobs_running_lane`` backs this
up (the database refuses a second running job in a lane) and serves the "lane busy" checks; it
is not the mechanism itself, because a colliding ``UPDATE`` waits and then aborts the claim.

**Intake** inserts messages and jobs with a few ``unnest`` statements in one transaction;
duplicates are whatever the unique indexes turn away (``ON CONFLICT DO NOTHING RETURNING``),
and rows go in in item order, so of two duplicates in one batch the earlier wins and job ids
follow arrival. Two instances inserting overlapping duplicates in opposite orders can deadlock;
PostgreSQL aborts one and it is retried.

**Time** is epoch seconds from each instance's clock, as in the SQLite store and the engine:
instances sharing a database need synchronized clocks (NTP), since one instance's lease is
judged by another's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import Any

import asyncpg

from ..errors import HandledError, LeaseLost, StoreMissing
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
from .migrations import POSTGRES_MIGRATIONS, Index
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
from .suppression import KEY_NAME, address_hash, new_key

__all__ = ["PostgresStore"]

log = logging.getLogger("extmsg.store")

# Advisory lock namespaces (the first key of the two-key form); the second key is a hash that
# starts with the schema, so deployments sharing a database in separate schemas do not contend.
_MIGRATION_LOCK = 0x65786D00
_LANE_LOCK = 0x65786D01
_THREAD_LOCK = 0x65786D02
_EXCLUSIVE_LOCK = 0x65786D03

# How often a waiter for an exclusive section asks for its lock again.
_EXCLUSIVE_POLL = 0.1

# The stall bound (see docs/delivery.md, "A stalled instance"): a transaction of ours is idle for
# milliseconds between its statements, so 3 s is far beyond a busy event loop's pauses, and a
# healthy instance's intake that waits on a stopped one's rows is answered within about 3 s:
# well inside Unblu's outbound timeout (10 s by default) and Twilio's 15 s. A lock held by a
# transaction that is not idle (a statement running long) is waited for 5 s at most.
IDLE_TRANSACTION_TIMEOUT = 3.0
LOCK_TIMEOUT = 5.0

# At most this many lanes are locked per claim transaction: advisory locks live in the shared
# lock table (sized by max_locks_per_transaction), so a large claim is taken in rounds.
_CLAIM_ROUND = 256

_LEASE_EXPIRED = "the worker running it stopped before it finished (lease expired)"

# Marks a running job done (under its fence, when one is given); the placeholders' numbers
# are filled in per use.
_COMPLETE = (
    "UPDATE jobs SET state = 'done', lease_until = NULL, attempts = attempts + 1,"
    " in_doubt = FALSE, updated_at = ${now} WHERE id = ${id} AND state = 'running'"
    " AND fence = COALESCE(${fence}::bigint, fence)"
)

_RECLAIM = """
UPDATE jobs SET state = 'ready', lease_until = NULL, attempts = attempts + 1, in_doubt = TRUE,
    last_error = $2, updated_at = $1
WHERE state = 'running' AND lease_until < $1 AND id IN (
    SELECT id FROM jobs WHERE state = 'running' AND lease_until < $1 FOR UPDATE SKIP LOCKED)
"""

# The lock taken per candidate lane; $4 is the lane namespace.
_LOCK_LANE = "pg_try_advisory_xact_lock($4, hashtext(current_schema() || '/' || lane))"

# A lane is held by a dead letter that gave up for want of retries (``holds_lane``): nothing
# newer than it runs until it is retried, skipped or purged. An older job retried by hand still
# may (it came first).
_NOT_HELD = """NOT EXISTS (SELECT 1 FROM jobs AS held
                WHERE held.holds_lane AND held.lane = {job}.lane AND held.id < {job}.id)"""

# Runnable heads, oldest first, found from the oldest ready jobs: only the first $3 of them are
# looked at, an index probe or two each, so in a backlog the cost does not grow with the number
# of lanes. "busy" is asked in a select list, where it stays a probe instead of becoming a join.
_OLDEST_HEADS = f"""
WITH oldest AS MATERIALIZED (
    SELECT id, lane, next_at FROM jobs
    WHERE state = 'ready' AND next_at <= $1 ORDER BY next_at, id LIMIT $3
), heads AS MATERIALIZED (
    SELECT o.id, o.lane, o.next_at,
           EXISTS (SELECT 1 FROM jobs AS r WHERE r.lane = o.lane AND r.state = 'running')
               AS busy
    FROM oldest AS o
    WHERE o.id = (SELECT MIN(u.id) FROM jobs AS u
                  WHERE u.lane = o.lane AND u.state IN ('ready', 'running'))
      AND {_NOT_HELD.format(job="o")}
    ORDER BY o.next_at, o.id
)
SELECT id, next_at FROM heads WHERE NOT busy AND {_LOCK_LANE} LIMIT $2
"""  # noqa: S608

# The same answer from the lanes' side, for when the oldest ready jobs mostly wait behind
# running heads: every lane's head, found by skipping from lane to lane through the partial
# index of unfinished jobs (a few index probes per lane, however long the lanes are).
_LANE_HEADS = f"""
WITH RECURSIVE lanes(lane) AS (
    (SELECT lane FROM jobs WHERE state IN ('ready', 'running') ORDER BY lane LIMIT 1)
    UNION ALL
    SELECT (SELECT j.lane FROM jobs AS j
            WHERE j.state IN ('ready', 'running') AND j.lane > lanes.lane
            ORDER BY j.lane LIMIT 1)
    FROM lanes WHERE lanes.lane IS NOT NULL
), heads AS MATERIALIZED (
    SELECT h.id, h.lane, h.next_at FROM lanes CROSS JOIN LATERAL (
        SELECT j.id, j.lane, j.state, j.next_at,
               EXISTS (SELECT 1 FROM jobs AS r WHERE r.lane = j.lane AND r.state = 'running')
                   AS busy
        FROM jobs AS j
        WHERE j.state IN ('ready', 'running') AND j.lane = lanes.lane
        ORDER BY j.id LIMIT 1
    ) AS h
    WHERE h.state = 'ready' AND h.next_at <= $1 AND NOT h.busy AND {_NOT_HELD.format(job="h")}
    ORDER BY h.next_at, h.id
    LIMIT $3
)
SELECT id, next_at FROM heads WHERE {_LOCK_LANE} LIMIT $2
"""  # noqa: S608

_TAKE = f"""
UPDATE jobs AS j SET state = 'running', lease_until = $3, updated_at = $2, fence = j.fence + 1
WHERE j.id = ANY($1::bigint[]) AND j.state = 'ready' AND j.next_at <= $2
  AND j.id = (SELECT MIN(u.id) FROM jobs AS u
              WHERE u.lane = j.lane AND u.state IN ('ready', 'running'))
  AND NOT EXISTS (SELECT 1 FROM jobs AS r WHERE r.lane = j.lane AND r.state = 'running')
  AND {_NOT_HELD.format(job="j")}
RETURNING {JOB_COLUMNS}
"""  # noqa: S608

_INSERT_MESSAGES = f"""
INSERT INTO messages ({MESSAGE_COLUMNS})
SELECT m.id, m.channel, m.direction, m.thread, m.provider, m.unblu, m.conversation, m.state,
       NULL, $9, $9
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::int[])
     WITH ORDINALITY AS m(id, channel, direction, thread, provider, unblu, conversation, state,
                          ord)
ORDER BY m.ord
ON CONFLICT DO NOTHING
RETURNING id, channel, direction, provider_message_id, unblu_message_id
"""  # noqa: S608

# The stored message each duplicate repeats: same channel and direction with the same provider
# or Unblu id, else the same id of ours. One branch per unique index, each an exact probe.
_EXISTING = """
SELECT d.ord, (
    SELECT x.id FROM (
        SELECT m.id, 0 AS pref FROM messages AS m
        WHERE m.channel = d.channel AND m.direction = d.direction
          AND m.provider_message_id = d.provider
        UNION ALL
        SELECT m.id, 1 FROM messages AS m
        WHERE m.channel = d.channel AND m.direction = d.direction
          AND m.unblu_message_id = d.unblu
        UNION ALL
        SELECT m.id, 2 FROM messages AS m WHERE m.id = d.id
    ) AS x ORDER BY x.pref LIMIT 1)
FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
     AS d(ord, id, channel, direction, provider, unblu)
"""

_INSERT_JOBS = """
INSERT INTO jobs (kind, lane, payload, message_id, state, attempts, next_at, created_at,
                  updated_at)
SELECT j.kind, j.lane, j.payload, j.message_id, 'ready', 0, j.next_at, $6, $6
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::float8[])
     WITH ORDINALITY AS j(kind, lane, payload, message_id, next_at, ord)
ORDER BY j.ord
"""


class PostgresStore(Store):
    """:param dsn: a libpq connection URI or key/value string.
    :param schema: put extmsg's tables into this (existing) schema instead of the search path's
        first one.
    :param command_timeout: seconds after which a statement is given up, so a stalled network
        cannot hold a worker forever.
    :param idle_transaction_timeout: seconds after which the server aborts a transaction of
        ours whose client went quiet (``idle_in_transaction_session_timeout``): an instance
        stopped (SIGSTOP, a frozen VM) in the middle of a transaction then holds its row locks
        that long at most. Ours are idle for milliseconds between statements.
    :param lock_timeout: seconds a statement waits for a row lock before it fails
        (``lock_timeout``): the bound for a lock held by a transaction that is not idle.
    :param exclusive_wait: seconds :meth:`exclusive` waits for another instance's section
        before it goes ahead without it (that instance may be stopped while holding it).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float | None = 60.0,
        idle_transaction_timeout: float | None = IDLE_TRANSACTION_TIMEOUT,
        lock_timeout: float | None = LOCK_TIMEOUT,
        exclusive_wait: float = 60.0,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout = command_timeout
        self._idle_transaction_timeout = idle_transaction_timeout
        self._lock_timeout = lock_timeout
        self._exclusive_wait = exclusive_wait
        self._pool: asyncpg.Pool | None = None
        self._suppression_key: bytes | None = None  # read once it exists; it never changes

    def __repr__(self) -> str:
        return f"PostgresStore({describe_dsn(self.dsn)!r})"

    # -- lifecycle -----------------------------------------------------------------------------
    async def open(self, *, create: bool = True) -> None:
        settings = {"search_path": self.schema} if self.schema else {}
        if self._idle_transaction_timeout:
            settings["idle_in_transaction_session_timeout"] = _ms(self._idle_transaction_timeout)
        if self._lock_timeout:
            settings["lock_timeout"] = _ms(self._lock_timeout)
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                command_timeout=self._command_timeout,
                server_settings=settings,
                reset=_keep_session,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise HandledError(
                f"cannot connect to PostgreSQL at {describe_dsn(self.dsn)}: {exc}"
            ) from exc
        try:
            if not create and await pool.fetchval("SELECT to_regclass('schema_version')") is None:
                raise StoreMissing(
                    f"there is no extmsg store in PostgreSQL at {describe_dsn(self.dsn)}"
                    f"{f' (schema {self.schema})' if self.schema else ''}"
                    " ('extmsg serve' creates it)"
                )
            await self._migrate()
        except asyncpg.PostgresError as exc:
            # Typically the user may not create tables there (PostgreSQL 15 and later no longer
            # let every user create in the "public" schema).
            await pool.close()
            raise HandledError(
                f"cannot set up extmsg's tables in PostgreSQL at {describe_dsn(self.dsn)}: {exc}"
            ) from exc
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=10.0)
        except TimeoutError:
            log.warning("closing the PostgreSQL pool took too long; its connections were cut")
            pool.terminate()

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    async def _migrate(self) -> None:
        """Apply pending migrations, each in one transaction with its version row, then build
        its indexes on existing tables ``CONCURRENTLY``: instances still serving (the older
        version, during an upgrade) write on while a large table is indexed.

        A session advisory lock (per schema) serializes instances starting at once: the second
        waits, then finds the migrations applied. Even the version table is created under it,
        since two concurrent ``CREATE TABLE IF NOT EXISTS`` can collide. The lock is taken by
        polling: a statement waiting for it in the server would hold a snapshot, which a
        concurrent index build waits out — each waiting on the other. The work runs on a
        connection of its own, without the pool's statement timeout and with no lock timeout:
        a migration of a large table may take minutes, and is waited out.
        """
        settings = {"lock_timeout": "0"}
        if self.schema:
            settings["search_path"] = self.schema
        try:
            conn = await asyncpg.connect(self.dsn, server_settings=settings)
        except (OSError, TimeoutError) as exc:
            raise HandledError(
                f"cannot connect to PostgreSQL at {describe_dsn(self.dsn)}: {exc}"
            ) from exc
        try:
            await _take_migration_lock(conn)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                " description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
            current = int(
                await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            )
            # A build cut off (a crash, a kill, a lost connection) after its migration
            # committed: finished before any later migration, which may rely on it.
            applied = [m for m in POSTGRES_MIGRATIONS if m.version <= current]
            await _build_indexes(conn, [i for m in applied for i in m.indexes])
            for migration in POSTGRES_MIGRATIONS:
                if migration.version <= current:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_version (version, description, applied_at)"
                        " VALUES ($1, $2, $3)",
                        migration.version,
                        migration.description,
                        time.time(),
                    )
                await _build_indexes(conn, migration.indexes)
                log.info(
                    "store migrated to version %d: %s", migration.version, migration.description
                )
        finally:
            # Closing releases the session lock.
            try:
                await asyncio.wait_for(conn.close(), timeout=5.0)
            except BaseException:
                conn.terminate()
                raise

    async def schema_version(self) -> int:
        return int(await self._fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """A session advisory lock (per schema and name) held on a connection of its own for
        the block, outside the pool (the block uses the pool) and outside a transaction, so a
        block that waits on the network (provisioning in Unblu) is not cut off as an idle
        transaction. Taken by polling rather than waiting in the server, so waiting is bounded
        by ``exclusive_wait`` and can be cancelled; closing the connection releases it."""
        conn = await asyncpg.connect(
            self.dsn, server_settings={"search_path": self.schema} if self.schema else None
        )
        try:
            deadline = time.monotonic() + self._exclusive_wait
            while not await conn.fetchval(
                "SELECT pg_try_advisory_lock("
                " $1, hashtext(COALESCE(current_schema(), '') || '/' || $2::text))",
                _EXCLUSIVE_LOCK,
                name,
            ):
                if time.monotonic() >= deadline:
                    log.warning(
                        "another instance has held %r for over %.0fs (stopped?); going ahead",
                        name,
                        self._exclusive_wait,
                    )
                    break
                await asyncio.sleep(_EXCLUSIVE_POLL)
            yield
        finally:
            try:
                await asyncio.wait_for(conn.close(), timeout=5.0)
            except BaseException:
                conn.terminate()
                raise

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def _p(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._p.acquire() as conn, conn.transaction(isolation="read_committed"):
            yield conn

    async def _execute(self, sql: str, *args: Any) -> int:
        """Run one statement; the number of rows it changed."""
        return _rowcount(await self._p.execute(sql, *args))

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        return await self._p.fetchrow(sql, *args)

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        return list(await self._p.fetch(sql, *args))

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        return await self._p.fetchval(sql, *args)

    # -- directory -----------------------------------------------------------------------------
    async def upsert_channel(self, row: ChannelRow) -> None:
        await self._execute(
            "INSERT INTO channels (name, messenger, unblu_channel_id, webhook_status,"
            " provisioned_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET"
            " messenger = EXCLUDED.messenger,"
            " unblu_channel_id = COALESCE(EXCLUDED.unblu_channel_id, channels.unblu_channel_id),"
            " webhook_status = COALESCE(EXCLUDED.webhook_status, channels.webhook_status),"
            " provisioned_at = COALESCE(EXCLUDED.provisioned_at, channels.provisioned_at)",
            row.name,
            row.messenger,
            row.unblu_channel_id,
            row.webhook_status,
            row.provisioned_at,
        )

    async def get_channel(self, name: str) -> ChannelRow | None:
        row = await self._fetchrow(
            "SELECT name, messenger, unblu_channel_id, webhook_status, provisioned_at"
            " FROM channels WHERE name = $1",
            name,
        )
        return channel_row(row) if row else None

    async def list_channels(self) -> list[ChannelRow]:
        rows = await self._fetch(
            "SELECT name, messenger, unblu_channel_id, webhook_status, provisioned_at"
            " FROM channels ORDER BY name"
        )
        return [channel_row(r) for r in rows]

    async def get_contact(self, channel: str, address: str) -> ContactRow | None:
        row = await self._fetchrow(
            "SELECT channel, address, name, unblu_person_id, unblu_contact_id, opted_out,"
            " opted_out_reason FROM contacts WHERE channel = $1 AND address = $2",
            channel,
            address,
        )
        if row is None:
            return await self._suppressed(channel, address)
        return contact_row(row)

    async def _suppressed(self, channel: str, address: str) -> ContactRow | None:
        """An opted-out stand-in for an erased contact that had opted out, else None."""
        if self._suppression_key is None:
            key = await self._fetchval("SELECT secret FROM store_keys WHERE name = $1", KEY_NAME)
            if key is None:
                return None  # no entry was ever kept
            self._suppression_key = bytes(key)
        entry = await self._fetchrow(
            "SELECT reason FROM suppressions WHERE address_hash = $1",
            address_hash(self._suppression_key, channel, address),
        )
        if entry is None:
            return None
        return ContactRow(
            channel=channel, address=address, opted_out=True, opted_out_reason=entry[0]
        )

    async def upsert_contact(self, row: ContactRow) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO contacts (channel, address, name, unblu_person_id, unblu_contact_id,"
                " opted_out, opted_out_reason, updated_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " ON CONFLICT (channel, address) DO UPDATE SET name = EXCLUDED.name,"
                " unblu_person_id = EXCLUDED.unblu_person_id,"
                " unblu_contact_id = EXCLUDED.unblu_contact_id, updated_at = EXCLUDED.updated_at",
                row.channel,
                row.address,
                row.name,
                row.unblu_person_id,
                row.unblu_contact_id,
                row.opted_out,
                row.opted_out_reason,
                time.time(),
            )
            lifted = await _take_suppression(conn, row.channel, row.address)
            if lifted is not None:  # the row carries the opt-out from now on
                await conn.execute(
                    "UPDATE contacts SET opted_out = TRUE, opted_out_reason = $1"
                    " WHERE channel = $2 AND address = $3",
                    lifted[0],
                    row.channel,
                    row.address,
                )

    async def set_opt_out(
        self, channel: str, address: str, opted_out: bool, reason: str | None
    ) -> None:
        async with self._tx() as conn:
            # The row says it from now on: opted in again, or opted out on its own.
            await _take_suppression(conn, channel, address)
            await conn.execute(
                "INSERT INTO contacts (channel, address, opted_out, opted_out_reason, updated_at)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (channel, address) DO UPDATE SET"
                " opted_out = EXCLUDED.opted_out, opted_out_reason = EXCLUDED.opted_out_reason,"
                " updated_at = EXCLUDED.updated_at",
                channel,
                address,
                opted_out,
                reason,
                time.time(),
            )

    _CONV = (
        "SELECT channel, thread, contact_address, unblu_conversation_id, state, created_at,"
        " ended_at FROM conversations"
    )

    async def active_conversation(self, channel: str, thread: str) -> ConversationRow | None:
        row = await self._fetchrow(
            f"{self._CONV} WHERE channel = $1 AND thread = $2 AND state = 'active'",
            channel,
            thread,
        )
        return conversation_row(row) if row else None

    async def find_conversation(self, unblu_conversation_id: str) -> ConversationRow | None:
        row = await self._fetchrow(
            f"{self._CONV} WHERE unblu_conversation_id = $1", unblu_conversation_id
        )
        return conversation_row(row) if row else None

    async def inbound_view(self, channel: str, address: str, thread: str) -> ThreadView:
        row = await self._fetchrow(
            f"SELECT {VIEW_COLUMNS}, NULL::float8 FROM (SELECT 1) AS one"  # noqa: S608
            " LEFT JOIN contacts AS k ON k.channel = $1 AND k.address = $2"
            " LEFT JOIN conversations AS c"
            " ON c.channel = $1 AND c.thread = $3 AND c.state = 'active'",
            channel,
            address,
            thread,
        )
        return await self._with_contact(view_row(row), channel, address)

    async def outbound_view(self, channel: str, unblu_conversation_id: str) -> ThreadView:
        row = await self._fetchrow(
            f"SELECT {VIEW_COLUMNS}, (SELECT MAX(m.created_at) FROM messages AS m"  # noqa: S608
            "  WHERE m.channel = $1 AND m.thread = c.thread AND m.direction = 'in')"
            " FROM conversations AS c"
            " LEFT JOIN contacts AS k ON k.channel = $1 AND k.address = c.contact_address"
            " WHERE c.unblu_conversation_id = $2",
            channel,
            unblu_conversation_id,
        )
        if row is None:
            return ThreadView()
        view = view_row(row)
        assert view.conversation is not None
        return await self._with_contact(view, channel, view.conversation.contact_address)

    async def add_conversation(self, row: ConversationRow) -> None:
        now = time.time()
        async with self._tx() as conn:
            # Two instances opening a conversation on one thread at once take turns, so the
            # second ends the first's instead of colliding on the one-active-per-thread index.
            await conn.execute(
                "SELECT pg_advisory_xact_lock("
                " $1, hashtext(current_schema() || '/' || $2::text || '/' || $3::text))",
                _THREAD_LOCK,
                row.channel,
                row.thread,
            )
            await conn.execute(
                "UPDATE conversations SET state = 'ended', ended_at = $1"
                " WHERE channel = $2 AND thread = $3 AND state = 'active'",
                now,
                row.channel,
                row.thread,
            )
            await conn.execute(
                "INSERT INTO conversations (unblu_conversation_id, channel, thread,"
                " contact_address, state, created_at) VALUES ($1, $2, $3, $4, 'active', $5)"
                " ON CONFLICT (unblu_conversation_id) DO UPDATE SET state = 'active',"
                " ended_at = NULL",
                row.unblu_conversation_id,
                row.channel,
                row.thread,
                row.contact_address,
                row.created_at or now,
            )

    async def end_conversation(self, unblu_conversation_id: str) -> None:
        await self._execute(
            "UPDATE conversations SET state = 'ended', ended_at = $1"
            " WHERE unblu_conversation_id = $2 AND state = 'active'",
            time.time(),
            unblu_conversation_id,
        )

    # -- intake and messages -------------------------------------------------------------------
    async def intake(self, items: Sequence[Intake]) -> list[IntakeResult]:
        if not items:
            return []
        for attempt in range(1, 4):
            try:
                async with self._tx() as conn:
                    return await _intake(conn, items, time.time())
            except asyncpg.DeadlockDetectedError:
                if attempt == 3:
                    raise
                log.info("an intake deadlocked with another instance's; writing it again")
        raise AssertionError("unreachable")

    async def get_message(self, message_id: str) -> MessageRow | None:
        row = await self._fetchrow(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1",  # noqa: S608
            message_id,
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
        row = await self._fetchrow(
            f"SELECT {MESSAGE_COLUMNS} FROM messages"  # noqa: S608
            f" WHERE channel = $1 AND direction = $2 AND {column} = $3",
            channel,
            direction,
            value,
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
        given = {
            "provider_message_id": provider_message_id,
            "unblu_message_id": unblu_message_id,
            "conversation_id": conversation_id,
            "state": None if state is None else int(state),
        }
        given = {column: value for column, value in given.items() if value is not None}
        await self._update_held(
            job,
            update_message_sql(tuple(given), "$", "::int"),
            *given.values(),
            time.time(),
            message_id,
            complete=complete,
        )

    async def advance_state(
        self,
        message_id: str,
        state: MessageState,
        error: str | None = None,
        *,
        job: Job | None = None,
    ) -> bool:
        changed = await self._update_held(
            job,
            "UPDATE messages SET state = $1, error = COALESCE($2, error), updated_at = $3"
            " WHERE id = $4 AND state < $1 AND state <> $5",
            int(state),
            error,
            time.time(),
            message_id,
            int(MessageState.FAILED),
        )
        return changed == 1

    async def _update_held(
        self, job: Job | None, update: str, *args: Any, complete: bool = False
    ) -> int:
        """Run ``update`` (an UPDATE ending in its WHERE clause); with ``job``, only while
        that claim of it holds, else :class:`LeaseLost`. The job's row is locked
        ``FOR SHARE`` in the same statement: a claimer taking the job back skips it until
        the write has committed, so the next holder sees what this one recorded. With
        ``complete``, the same statement marks the job done (which locks its row too)."""
        fence = fence_of(job)
        if complete:
            if job is None:
                raise ValueError("complete=True needs the job to complete")
            n = len(args)
            row = await self._fetchrow(
                f"WITH done AS ({_COMPLETE.format(id=n + 1, fence=n + 2, now=n + 3)}"  # noqa: S608
                " RETURNING 1),"
                f" changed AS ({update} AND EXISTS (SELECT 1 FROM done) RETURNING 1)"
                " SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM changed)",
                *args,
                job.id,
                fence,
                time.time(),
            )
            if not row[0]:
                raise LeaseLost(job.id, job.fence)
            return int(row[1])
        if job is None or fence is None:
            return await self._execute(update, *args)
        n = len(args)
        row = await self._fetchrow(
            f"WITH held AS MATERIALIZED (SELECT 1 FROM jobs WHERE id = ${n + 1}"  # noqa: S608
            f" AND fence = ${n + 2} AND state = 'running' FOR SHARE),"
            f" changed AS ({update} AND EXISTS (SELECT 1 FROM held) RETURNING 1)"
            " SELECT (SELECT count(*) FROM held), (SELECT count(*) FROM changed)",
            *args,
            job.id,
            fence,
        )
        if not row[0]:
            raise LeaseLost(job.id, fence)
        return int(row[1])

    # -- jobs ----------------------------------------------------------------------------------
    async def claim_jobs(self, limit: int, lease_seconds: float) -> list[Job]:
        claimed: list[Job] = []
        while len(claimed) < limit:
            want = min(limit - len(claimed), _CLAIM_ROUND)
            got = await self._claim_round(want, lease_seconds)
            claimed += got
            if len(got) < want:
                break
        return claimed

    async def _claim_round(self, limit: int, lease_seconds: float) -> list[Job]:
        now = time.time()
        async with self._tx() as conn:
            # A lease ran out: the worker holding it stopped without finishing (killed, or
            # stalled for longer than the lease). The job is runnable again, and the lost
            # attempt counts, so a job that kills its worker every time still ends; it may
            # have reached the remote before it stopped, so it is in doubt.
            await conn.execute(_RECLAIM, now, _LEASE_EXPIRED)
            # Heads locked lane by lane, from the oldest ready jobs; the lane walk only when
            # those hold too few (most wait behind running heads, or other claimers hold them).
            found = await conn.fetch(_OLDEST_HEADS, now, limit, 4 * limit + 32, _LANE_LOCK)
            if len(found) < limit:
                found += await conn.fetch(_LANE_HEADS, now, limit, 2 * limit + 8, _LANE_LOCK)
            if not found:
                return []
            candidates = sorted({(r[1], r[0]) for r in found})[:limit]
            rows = await conn.fetch(
                _TAKE, [job_id for _, job_id in candidates], now, now + lease_seconds
            )
        jobs = [job_row(r) for r in rows]
        jobs.sort(key=lambda j: (j.next_at, j.id))
        return jobs

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
        rows = await self._fetch(
            "UPDATE jobs SET lease_until = $1, updated_at = $2"
            " FROM unnest($3::bigint[], $4::bigint[]) AS h(id, fence)"
            " WHERE jobs.id = h.id AND jobs.state = 'running'"
            " AND jobs.fence = COALESCE(h.fence, jobs.fence) RETURNING jobs.id",
            now + lease_seconds,
            now,
            list(job_ids),
            [fenced.get(i) for i in job_ids],
        )
        return sorted(int(r[0]) for r in rows)

    async def hold_job(self, job_id: int, fence: int, lease_seconds: float) -> bool:
        now = time.time()
        # One statement, committed without waiting for the log to reach the disk
        # (synchronous_commit off for this statement's own transaction only): a renewal lost
        # to a crash of the database changes nothing, since every lease is judged again after
        # it, while the flush would cost every send milliseconds (measured on a busy 2-core
        # box: 3-6 ms with it, under 1 ms without, against 0.4 ms for a bare read). The fence
        # check reads committed rows either way.
        held = await self._fetchval(
            "WITH quick AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true))"
            " UPDATE jobs SET lease_until = $1, updated_at = $2 FROM quick"
            " WHERE id = $3 AND fence = $4 AND state = 'running' RETURNING 1",
            now + lease_seconds,
            now,
            job_id,
            fence,
        )
        return held is not None

    async def complete_job(self, job_id: int, *, fence: int | None = None) -> bool:
        changed = await self._execute(
            _COMPLETE.format(id=2, fence=3, now=1), time.time(), job_id, fence
        )
        return changed == 1

    async def reschedule_job(
        self,
        job_id: int,
        next_at: float,
        error: str,
        *,
        fence: int | None = None,
        in_doubt: bool = False,
    ) -> bool:
        changed = await self._execute(
            "UPDATE jobs SET state = 'ready', lease_until = NULL, attempts = attempts + 1,"
            " next_at = $1, last_error = $2, in_doubt = $5, updated_at = $3"
            " WHERE id = $4 AND state = 'running' AND fence = COALESCE($6, fence)",
            next_at,
            error,
            time.time(),
            job_id,
            in_doubt,
            fence,
        )
        return changed == 1

    async def bury_job(
        self, job_id: int, error: str, *, fence: int | None = None, hold: bool = False
    ) -> bool:
        # in_doubt stays: a dead letter retried by hand still looks before sending.
        changed = await self._execute(
            "UPDATE jobs SET state = 'dead', lease_until = NULL, attempts = attempts + 1,"
            " last_error = $1, updated_at = $2, holds_lane = $5 WHERE id = $3"
            " AND (state = 'running' OR state = 'ready' AND $4::bigint IS NULL)"
            " AND fence = COALESCE($4, fence)",
            error,
            time.time(),
            job_id,
            fence,
            hold,
        )
        return changed == 1

    async def release_jobs(
        self,
        job_ids: Sequence[int],
        *,
        fences: Mapping[int, int] | None = None,
        in_doubt: Collection[int] = (),
    ) -> None:
        if not job_ids:
            return
        fenced = fences or {}
        doubt = set(in_doubt)
        await self._execute(
            "UPDATE jobs SET state = 'ready', lease_until = NULL, updated_at = $1,"
            " in_doubt = jobs.in_doubt OR h.doubt"
            " FROM unnest($2::bigint[], $3::bigint[], $4::bool[]) AS h(id, fence, doubt)"
            " WHERE jobs.id = h.id AND jobs.state = 'running'"
            " AND jobs.fence = COALESCE(h.fence, jobs.fence)",
            time.time(),
            list(job_ids),
            [fenced.get(i) for i in job_ids],
            [i in doubt for i in job_ids],
        )

    async def list_jobs(
        self, states: Sequence[JobState] = ("ready", "running", "dead"), limit: int = 100
    ) -> list[Job]:
        rows = await self._fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = ANY($1::text[])"  # noqa: S608
            " ORDER BY id LIMIT $2",
            list(states),
            limit,
        )
        return [job_row(r) for r in rows]

    async def get_job(self, job_id: int) -> Job | None:
        row = await self._fetchrow(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1",  # noqa: S608
            job_id,
        )
        return job_row(row) if row else None

    async def retry_job(self, job_id: int) -> bool:
        now = time.time()
        async with self._tx() as conn:
            row = await conn.fetchrow(
                "UPDATE jobs SET state = 'ready', next_at = $1, attempts = 0, updated_at = $1,"
                " holds_lane = FALSE WHERE id = $2 AND state = 'dead' RETURNING message_id",
                now,
                job_id,
            )
            if row is None:
                return False
            if row[0] is not None:
                # A hand retry re-opens the message's failed state.
                await conn.execute(
                    "UPDATE messages SET state = $1, error = NULL, updated_at = $2"
                    " WHERE id = $3 AND state = $4",
                    int(MessageState.PENDING),
                    now,
                    row[0],
                    int(MessageState.FAILED),
                )
        return True

    async def release_lane(self, job_id: int) -> bool:
        changed = await self._execute(
            "UPDATE jobs SET holds_lane = FALSE, updated_at = $1"
            " WHERE id = $2 AND state = 'dead' AND holds_lane",
            time.time(),
            job_id,
        )
        return changed == 1

    async def purge_jobs(self, states: Sequence[JobState], older_than: float | None = None) -> int:
        unfinished = set(states) - {"done", "dead"}
        if unfinished:
            raise ValueError(f"only done or dead jobs can be purged, not {sorted(unfinished)}")
        if not states:
            return 0
        cutoff = time.time() - older_than if older_than is not None else time.time() + 1
        return await self._execute(
            "DELETE FROM jobs WHERE state = ANY($1::text[]) AND updated_at < $2",
            list(states),
            cutoff,
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
        async with self._tx() as conn:
            await _hold(conn, job, fence)
            await _record_part(
                conn,
                message_id,
                PartSent(channel=channel, part=part, provider_message_id=provider_message_id),
                now,
            )

    async def sent_parts(self, message_id: str) -> dict[int, str]:
        rows = await self._fetch(
            "SELECT part, provider_message_id FROM message_parts WHERE message_id = $1",
            message_id,
        )
        return {int(r[0]): str(r[1]) for r in rows}

    async def find_message_by_part(
        self, channel: str, provider_message_id: str
    ) -> MessageRow | None:
        row = await self._fetchrow(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ("  # noqa: S608
            " SELECT message_id FROM message_parts"
            " WHERE channel = $1 AND provider_message_id = $2 LIMIT 1)",
            channel,
            provider_message_id,
        )
        return message_row(row) if row else None

    # complete_message and apply_status lock the message's row before they read its parts:
    # each runs after the other has committed and reads (READ COMMITTED, statement by
    # statement) the parts the other wrote, so a status kept on a part while the message was
    # still being sent is counted when the last part is recorded.
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
        async with self._tx() as conn:
            if complete:
                if job is None:
                    raise ValueError("complete=True needs the job to complete")
                if not _rowcount(
                    await conn.execute(
                        _COMPLETE.format(id=1, fence=2, now=3), job.id, fence, time.time()
                    )
                ):
                    raise LeaseLost(job.id, job.fence)
            else:
                await _hold(conn, job, fence)
            # The message's row is locked before the part's key, in the order apply_status
            # takes them; part 0's provider id goes into it with the new state, in one update
            # (or alone, when the state stays).
            current = await conn.fetchval(
                "SELECT state FROM messages WHERE id = $1 FOR UPDATE", message_id
            )
            now = time.time()
            first = None
            if last is not None:
                await _insert_part(conn, message_id, last, now)
                first = last.provider_message_id if last.part == 0 else None
            target, error = MessageState.PENDING, None
            if current is not None and current != MessageState.FAILED:
                parts = await conn.fetch(
                    "SELECT state, error FROM message_parts WHERE message_id = $1 ORDER BY part",
                    message_id,
                )
                target = parts_state(MessageState(p[0]) for p in parts)
                error = next((p[1] for p in parts if p[0] == MessageState.FAILED), None)
            if current is None or current == MessageState.FAILED or target <= current:
                if first is not None:
                    await _set_first_part(conn, message_id, first, now)
                return None
            settled = await _set_state(conn, message_id, target, error, first=first)
            then = report(settled) if report is not None else None
            if then is not None:
                await _intake(conn, [Intake(job=then)], time.time())
            return settled

    async def apply_status(
        self,
        message_id: str,
        provider_message_id: str | None,
        state: MessageState,
        error: str | None = None,
    ) -> StatusOutcome:
        failed = error if state == MessageState.FAILED else None
        async with self._tx() as conn:
            row = await conn.fetchrow(
                "SELECT state, channel FROM messages WHERE id = $1 FOR UPDATE", message_id
            )
            if row is None:
                return StatusOutcome(applied=False)
            current = MessageState(row[0])
            placed = False
            if provider_message_id is not None:
                placed = (
                    _rowcount(
                        await conn.execute(
                            "UPDATE message_parts SET"
                            " state = CASE WHEN $1 > state AND state <> $2 THEN $1"
                            " ELSE state END, error = COALESCE($3, error)"
                            " WHERE message_id = $4 AND provider_message_id = $5",
                            int(state),
                            int(MessageState.FAILED),
                            failed,
                            message_id,
                            provider_message_id,
                        )
                    )
                    > 0
                )
                if not placed and current == MessageState.PENDING:
                    placed = await _first_part(
                        conn, message_id, row[1], provider_message_id, state, failed
                    )
            parts: list[MessageState] | None = None
            if placed:
                parts = [
                    MessageState(p[0])
                    for p in await conn.fetch(
                        "SELECT state FROM message_parts WHERE message_id = $1", message_id
                    )
                ]
            target = status_target(current, state, parts)
            if target is None:
                return StatusOutcome(applied=False)
            if target <= current:
                return StatusOutcome(applied=True)
            await _set_state(conn, message_id, target, failed)
            return StatusOutcome(applied=True, state=target)

    async def thread_meta(self, channel: str, thread: str) -> dict[str, str]:
        rows = await self._fetch(
            "SELECT key, value FROM thread_meta WHERE channel = $1 AND thread = $2",
            channel,
            thread,
        )
        return {str(r[0]): str(r[1]) for r in rows}

    async def put_thread_meta(self, channel: str, thread: str, meta: dict[str, str]) -> None:
        now = time.time()
        async with self._tx() as conn:
            for key, value in meta.items():
                if value:
                    await conn.execute(
                        "INSERT INTO thread_meta (channel, thread, key, value, updated_at)"
                        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (channel, thread, key)"
                        " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                        channel,
                        thread,
                        key,
                        value,
                        now,
                    )
                else:
                    await conn.execute(
                        "DELETE FROM thread_meta WHERE channel = $1 AND thread = $2 AND key = $3",
                        channel,
                        thread,
                        key,
                    )

    async def put_media(self, row: MediaRow) -> None:
        await self._execute(
            "INSERT INTO media (id, channel, file_name, mime_type, data, expires_at, message_id)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            row.id,
            row.channel,
            row.file_name,
            row.mime_type,
            row.data,
            row.expires_at,
            row.message_id,
        )

    async def get_media(self, media_id: str) -> MediaRow | None:
        row = await self._fetchrow(
            "SELECT id, channel, file_name, mime_type, data, expires_at FROM media"
            " WHERE id = $1 AND expires_at > $2",
            media_id,
            time.time(),
        )
        return media_row(row) if row is not None else None

    async def purge_media(self, now: float) -> int:
        return await self._execute("DELETE FROM media WHERE expires_at <= $1", now)

    async def last_inbound_at(self, channel: str, thread: str) -> float | None:
        value = await self._fetchval(
            "SELECT MAX(created_at) FROM messages"
            " WHERE channel = $1 AND thread = $2 AND direction = 'in'",
            channel,
            thread,
        )
        return float(value) if value is not None else None

    async def job_counts(self) -> dict[str, int]:
        rows = await self._fetch(
            "SELECT state, COUNT(*) FROM jobs GROUP BY state"
            " UNION ALL SELECT 'held', COUNT(*) FROM jobs WHERE holds_lane"
        )
        counts = {"ready": 0, "running": 0, "done": 0, "dead": 0, "held": 0}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    async def oldest_due_at(self, now: float) -> float | None:
        value = await self._fetchval(
            "SELECT MIN(next_at) FROM jobs WHERE state = 'ready' AND next_at <= $1", now
        )
        return float(value) if value is not None else None

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
        found = Found(channel, tuple(dict.fromkeys(addresses)))
        async with self._tx() as conn:
            await _look_up(conn, found, refs, lock=apply)
            if not apply or found.refusal(cancel_pending):
                return found.report(applied=False)
            await _erase(conn, found, time.time())
        return found.report(applied=True)

    async def purge_payloads(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        purged = 0
        after = 0  # each chunk goes on where the last one stopped
        while True:  # in chunks, each its own short transaction
            async with self._tx() as conn:
                rows = await conn.fetch(
                    "SELECT id, lane FROM jobs WHERE id > $4 AND state IN ('done', 'dead')"
                    " AND updated_at < $1 AND substring(payload from 1 for $2) <> $3"
                    " ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED",
                    cutoff,
                    len(PURGED_PREFIX),
                    PURGED_PREFIX,
                    after,
                )
                if not rows:
                    return purged
                await conn.executemany(
                    "UPDATE jobs SET payload = $1 WHERE id = $2",
                    [(purged_payload(lane_channel(r[1]), "retention"), r[0]) for r in rows],
                )
            after = int(rows[-1][0])
            purged += len(rows)
            if len(rows) < 1000:
                return purged


async def _intake(
    conn: asyncpg.Connection, items: Sequence[Intake], now: float
) -> list[IntakeResult]:
    """Write a batch of intakes (the transaction is open); see the module's notes."""
    messages = [item.message for item in items if item.message is not None]
    inserted: set[tuple[Any, ...]] = set()
    if messages:
        rows = await conn.fetch(
            _INSERT_MESSAGES,
            [m.id for m in messages],
            [m.channel for m in messages],
            [m.direction for m in messages],
            [m.thread for m in messages],
            [m.provider_message_id for m in messages],
            [m.unblu_message_id for m in messages],
            [m.conversation_id for m in messages],
            [int(m.state) for m in messages],
            now,
        )
        inserted = {tuple(r) for r in rows}

    results: list[IntakeResult | None] = []
    duplicates: list[tuple[int, Any]] = []
    jobs: list[tuple[str, str, bytes, str | None, float]] = []
    for item in items:
        message_id: str | None = None
        m = item.message
        if m is not None:
            key = (m.id, m.channel, m.direction, m.provider_message_id, m.unblu_message_id)
            if key not in inserted:
                duplicates.append((len(results), m))
                results.append(None)
                continue
            inserted.discard(key)  # a later item with the same key is a duplicate of this one
            message_id = m.id
        if item.job is not None:
            j = item.job
            jobs.append(
                (j.kind, j.lane, j.payload, j.message_id or message_id, now + max(j.delay, 0.0))
            )
        results.append(IntakeResult(accepted=True, message_id=message_id))

    if duplicates:
        rows = await conn.fetch(
            _EXISTING,
            [i for i, _ in duplicates],
            [m.id for _, m in duplicates],
            [m.channel for _, m in duplicates],
            [m.direction for _, m in duplicates],
            [m.provider_message_id for _, m in duplicates],
            [m.unblu_message_id for _, m in duplicates],
        )
        for r in rows:
            results[r[0]] = IntakeResult(accepted=False, message_id=r[1])
    if jobs:
        await conn.execute(
            _INSERT_JOBS,
            [j[0] for j in jobs],
            [j[1] for j in jobs],
            [j[2] for j in jobs],
            [j[3] for j in jobs],
            [j[4] for j in jobs],
            now,
        )
    return [r if r is not None else IntakeResult(accepted=False) for r in results]


def _ms(seconds: float) -> str:
    return f"{max(int(seconds * 1000), 1)}ms"


def describe_dsn(dsn: str) -> str:
    """``user@host:port/database`` of a DSN, without its password, for messages and logs."""
    if "://" not in dsn:
        fields = dict(
            part.split("=", 1)
            for part in dsn.split()
            if "=" in part and not part.startswith("password")
        )
        host = fields.get("host", "localhost")
        user = f"{fields['user']}@" if "user" in fields else ""
        port = f":{fields['port']}" if "port" in fields else ""
        return f"{user}{host}{port}/{fields.get('dbname', '')}"
    url = urllib.parse.urlsplit(dsn)
    user = f"{url.username}@" if url.username else ""
    try:
        port = f":{url.port}" if url.port else ""
    except ValueError:
        port = ""
    return f"{user}{url.hostname or 'localhost'}{port}{url.path}"


async def _take_migration_lock(conn: asyncpg.Connection) -> None:
    """Take the session advisory lock for migrations (per schema), polling until it is free."""
    waiting = False
    while not await conn.fetchval(
        "SELECT pg_try_advisory_lock($1, hashtext(COALESCE(current_schema(), '')))",
        _MIGRATION_LOCK,
    ):
        if not waiting:
            log.info("waiting for another instance's store migrations")
            waiting = True
        await asyncio.sleep(_EXCLUSIVE_POLL)


# Which of the named indexes exist in the store's schema, and whether each is valid (an index
# whose concurrent build was cut off stays, INVALID: unused by queries, yet kept up by writes).
_INDEX_STATES = """
SELECT c.relname, i.indisvalid FROM pg_index AS i
JOIN pg_class AS c ON c.oid = i.indexrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relname = ANY($1::text[])
"""


async def _build_indexes(conn: asyncpg.Connection, indexes: Sequence[Index]) -> None:
    """Build each of ``indexes`` that is missing or INVALID, concurrently (outside a
    transaction): writers do not wait for the build; it waits for the transactions writing to
    the table when it starts. An INVALID one is dropped (also concurrently) and built again."""
    if not indexes:
        return
    valid: dict[str, bool] = dict(await conn.fetch(_INDEX_STATES, [i.name for i in indexes]))
    for index in indexes:
        if valid.get(index.name):
            continue
        if index.name in valid:
            log.warning(
                "index %s was left unfinished by a build cut off: building it again", index.name
            )
            await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index.name}")
        log.info("building index %s (writes go on meanwhile)", index.name)
        await conn.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index.name} {index.definition}"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection needs when it goes back to the pool: nothing beyond the rollback of
    an open transaction, which asyncpg does anyway. The store leaves no session state behind
    (its advisory locks are transaction-scoped, ``SET LOCAL`` only, no ``LISTEN``; the one
    session lock, :meth:`PostgresStore.exclusive`, lives on a connection of its own), so the
    default reset statement would be one more round trip after every store call."""


def _rowcount(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3`` or ``INSERT 0 1``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


async def _record_part(
    conn: asyncpg.Connection, message_id: str, sent: PartSent, now: float
) -> None:
    if sent.part == 0:
        # First, so the message's row is locked before the part's key, in the order
        # apply_status takes them (it may record part 0 from a status).
        await _set_first_part(conn, message_id, sent.provider_message_id, now)
    await _insert_part(conn, message_id, sent, now)


async def _insert_part(
    conn: asyncpg.Connection, message_id: str, sent: PartSent, now: float
) -> None:
    await conn.execute(
        "INSERT INTO message_parts (message_id, part, channel, provider_message_id,"
        " created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        message_id,
        sent.part,
        sent.channel,
        sent.provider_message_id,
        now,
    )


async def _set_first_part(
    conn: asyncpg.Connection, message_id: str, provider_message_id: str, now: float
) -> None:
    """The message's provider id is its part 0's (a reply to it quotes that one)."""
    await conn.execute(
        "UPDATE messages SET provider_message_id = $1, updated_at = $2 WHERE id = $3",
        provider_message_id,
        now,
        message_id,
    )


async def _hold(conn: asyncpg.Connection, job: Job | None, fence: int | None) -> None:
    """Raise :class:`LeaseLost` unless ``job`` still runs under the claim ``fence`` (None:
    nothing to check). The job's row is locked as in ``_update_held``, for the same reason."""
    if job is None or fence is None:
        return
    held = await conn.fetchval(
        "SELECT 1 FROM jobs WHERE id = $1 AND fence = $2 AND state = 'running' FOR SHARE",
        job.id,
        fence,
    )
    if held is None:
        raise LeaseLost(job.id, fence)


async def _first_part(
    conn: asyncpg.Connection,
    message_id: str,
    channel: str,
    provider_message_id: str,
    state: MessageState,
    error: str | None,
) -> bool:
    """As the SQLite store's ``_first_part``: a status's id is part 0 of a message none of
    whose parts is recorded yet. The caller holds the message's row, which ``record_part``
    locks before it records a part 0: the two run one after the other."""
    now = time.time()
    inserted = _rowcount(
        await conn.execute(
            "INSERT INTO message_parts (message_id, part, channel, provider_message_id,"
            " created_at, state, error) SELECT $1, 0, $2, $3, $4, $5, $6"
            " WHERE NOT EXISTS (SELECT 1 FROM message_parts WHERE message_id = $1)"
            " ON CONFLICT DO NOTHING",
            message_id,
            channel,
            provider_message_id,
            now,
            int(max(state, MessageState.SENT)),
            error,
        )
    )
    if not inserted:
        return False
    await conn.execute(
        "UPDATE messages SET provider_message_id = $1, updated_at = $2 WHERE id = $3",
        provider_message_id,
        now,
        message_id,
    )
    return True


async def _set_state(
    conn: asyncpg.Connection,
    message_id: str,
    state: MessageState,
    error: str | None,
    *,
    first: str | None = None,
) -> MessageRow:
    """Move the message to ``state``; ``first``: its part 0's provider id, set as well."""
    row = await conn.fetchrow(
        "UPDATE messages SET state = $1, error = COALESCE($2, error), updated_at = $3,"  # noqa: S608
        " provider_message_id = COALESCE($5, provider_message_id)"
        f" WHERE id = $4 RETURNING {MESSAGE_COLUMNS}",
        int(state),
        error,
        time.time(),
        message_id,
        first,
    )
    return message_row(row)


# -- erasure -------------------------------------------------------------------------------------
async def _look_up(
    conn: asyncpg.Connection, found: Found, refs: PayloadRefs, *, lock: bool
) -> None:
    """Fill ``found`` with the contact's rows; with ``lock``, its jobs are locked as read, so
    no claim takes one between the look-up and the erasure."""
    channel = found.channel
    addresses = list(found.addresses)
    for row in await conn.fetch(
        "SELECT unblu_person_id, unblu_contact_id, address, opted_out, opted_out_reason"
        " FROM contacts WHERE channel = $1 AND address = ANY($2::text[])",
        channel,
        addresses,
    ):
        found.contact_rows += 1
        if row[3]:
            found.opted_out[row[2]] = row[4]
        found.person_ids.update(v for v in (row[0],) if v)
        found.contact_ids.update(v for v in (row[1],) if v)
    for row in await conn.fetch(
        "SELECT unblu_conversation_id, thread FROM conversations"
        " WHERE channel = $1 AND contact_address = ANY($2::text[])",
        channel,
        addresses,
    ):
        found.conversations.add(row[0])
        found.threads.add(row[1])
    for row in await conn.fetch(
        "SELECT id, payload FROM jobs WHERE starts_with(lane, $1) AND EXISTS ("
        " SELECT 1 FROM unnest($2::bytea[]) AS n WHERE position(n IN payload) > 0)",
        found.lane_prefix(),
        needles(found.addresses),
    ):
        threads, conversations = refs(bytes(row[1]))
        found.jobs[int(row[0])] = ("", "", False)
        found.threads.update(threads)
        found.conversations.update(conversations)
    for row in await conn.fetch(
        "SELECT thread FROM conversations"
        " WHERE channel = $1 AND unblu_conversation_id = ANY($2::text[])",
        channel,
        sorted(found.conversations),
    ):
        found.threads.add(row[0])
        found.seen_threads.add(row[0])
    threads = found.all_threads()
    for row in await conn.fetch(
        "SELECT id, provider_message_id, thread FROM messages"
        " WHERE channel = $1 AND direction = 'in' AND thread = ANY($2::text[])"
        " UNION ALL SELECT id, provider_message_id, thread FROM messages"
        " WHERE channel = $1 AND direction = 'out' AND thread = ANY($2::text[])",
        channel,
        threads,
    ):
        found.messages.add(row[0])
        found.seen_threads.add(row[2])
        if row[1]:
            found.provider_ids.add(row[1])
    messages = sorted(found.messages)
    for row in await conn.fetch(
        "SELECT provider_message_id FROM message_parts WHERE message_id = ANY($1::text[])",
        messages,
    ):
        found.parts += 1
        found.provider_ids.add(row[0])
    for row in await conn.fetch(
        "SELECT id FROM jobs WHERE lane = ANY($1::text[]) OR message_id = ANY($2::text[])",
        found.lanes(),
        messages,
    ):
        found.jobs[int(row[0])] = ("", "", False)
    # As they are now, and locked: a claim that came first shows as running.
    current = (
        "SELECT id, state, lane, holds_lane FROM jobs WHERE id = ANY($1::bigint[]) ORDER BY id"
    )
    rows = await conn.fetch(current + " FOR UPDATE" if lock else current, sorted(found.jobs))
    found.jobs = {int(r[0]): (str(r[1]), str(r[2]), bool(r[3])) for r in rows}
    found.media = int(
        await conn.fetchval(
            "SELECT COUNT(*) FROM media WHERE message_id = ANY($1::text[])", messages
        )
    )
    found.thread_meta = int(
        await conn.fetchval(
            "SELECT COUNT(*) FROM thread_meta WHERE channel = $1 AND thread = ANY($2::text[])",
            channel,
            threads,
        )
    )


async def _erase(conn: asyncpg.Connection, found: Found, now: float) -> None:
    """Remove what ``found`` lists, in the open transaction."""
    channel = found.channel
    messages = sorted(found.messages)
    await conn.execute(
        "DELETE FROM contacts WHERE channel = $1 AND address = ANY($2::text[])",
        channel,
        list(found.addresses),
    )
    await conn.execute(
        "DELETE FROM conversations WHERE channel = $1 AND unblu_conversation_id = ANY($2::text[])",
        channel,
        sorted(found.conversations),
    )
    await conn.execute("DELETE FROM message_parts WHERE message_id = ANY($1::text[])", messages)
    await conn.execute("DELETE FROM messages WHERE id = ANY($1::text[])", messages)
    await conn.execute("DELETE FROM media WHERE message_id = ANY($1::text[])", messages)
    await conn.execute(
        "DELETE FROM thread_meta WHERE channel = $1 AND thread = ANY($2::text[])",
        channel,
        found.all_threads(),
    )
    # The job rows stay for the counts, with nothing left that names the contact; one still to
    # run becomes a dead letter that says why.
    await conn.execute(
        "UPDATE jobs SET payload = $1, lane = $2, message_id = NULL, in_doubt = FALSE,"
        " holds_lane = FALSE, lease_until = NULL,"
        " last_error = CASE WHEN state = 'ready' THEN $3 END,"
        " updated_at = CASE WHEN state = 'ready' THEN $4 ELSE updated_at END,"
        " state = CASE WHEN state = 'ready' THEN 'dead' ELSE state END"
        " WHERE id = ANY($5::bigint[])",
        purged_payload(channel, "erasure"),
        found.erased_lane,
        CANCELLED,
        now,
        sorted(found.jobs),
    )
    if found.opted_out:
        key = await _suppression_key(conn, create=True)
        assert key is not None
        await conn.executemany(
            "INSERT INTO suppressions (address_hash, reason, created_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (address_hash) DO UPDATE SET reason = EXCLUDED.reason,"
            " created_at = EXCLUDED.created_at",
            [(address_hash(key, channel, a), r, now) for a, r in found.opted_out.items()],
        )


async def _suppression_key(conn: asyncpg.Connection, *, create: bool) -> bytes | None:
    """The store's key for suppression entries; made on first need when ``create`` (the
    first of several instances to make it wins)."""
    select = "SELECT secret FROM store_keys WHERE name = $1"
    key = await conn.fetchval(select, KEY_NAME)
    if key is None and create:
        await conn.execute(
            "INSERT INTO store_keys (name, secret, created_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (name) DO NOTHING",
            KEY_NAME,
            new_key(),
            time.time(),
        )
        key = await conn.fetchval(select, KEY_NAME)
    return bytes(key) if key is not None else None


async def _take_suppression(
    conn: asyncpg.Connection, channel: str, address: str
) -> tuple[str | None] | None:
    """Remove the address's suppression entry; answer its ``(reason,)``, or None if none."""
    key = await _suppression_key(conn, create=False)
    if key is None:
        return None
    row = await conn.fetchrow(
        "DELETE FROM suppressions WHERE address_hash = $1 RETURNING reason",
        address_hash(key, channel, address),
    )
    return None if row is None else (row[0],)
