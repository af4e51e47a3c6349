"""Numbered, described schema migrations for the SQL stores.

A migration runs in one transaction together with the version bump, so a crash leaves either
the old or the new schema. Never edit a released migration: add the next number.

On PostgreSQL an index on a table that exists already (and may be large: jobs, messages) goes
into :attr:`Migration.indexes`, not into its SQL: it is built ``CONCURRENTLY`` after the
migration's transaction, so other instances' writes go on during the build, where a plain
``CREATE INDEX`` would hold them up for all of it. Moving a released migration's index there
changes how it is built, not what: the schema is the same. An index on a table the same
migration creates stays in the SQL (an empty table is indexed at once).

Each backend has its own list (:data:`MIGRATIONS` for SQLite, :data:`POSTGRES_MIGRATIONS` for
PostgreSQL): the dialects differ in types and indexes, and their numbers advance on their own.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["MIGRATIONS", "POSTGRES_MIGRATIONS", "Index", "Migration"]


class Index(NamedTuple):
    """An index built ``CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} {definition}``."""

    name: str
    definition: str


class Migration(NamedTuple):
    version: int
    description: str
    sql: str
    #: PostgreSQL only: built concurrently, in order, once ``sql`` committed.
    indexes: tuple[Index, ...] = ()


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "channels, contacts and conversations",
        """
        CREATE TABLE channels (
            name TEXT PRIMARY KEY,
            messenger TEXT NOT NULL,
            unblu_channel_id TEXT,
            webhook_status TEXT,
            provisioned_at REAL
        );
        CREATE TABLE contacts (
            channel TEXT NOT NULL,
            address TEXT NOT NULL,
            name TEXT,
            unblu_person_id TEXT,
            unblu_contact_id TEXT,
            opted_out INTEGER NOT NULL DEFAULT 0,
            opted_out_reason TEXT,
            updated_at REAL NOT NULL,
            PRIMARY KEY (channel, address)
        );
        CREATE TABLE conversations (
            unblu_conversation_id TEXT PRIMARY KEY,
            channel TEXT NOT NULL,
            thread TEXT NOT NULL,
            contact_address TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('active', 'ended')),
            created_at REAL NOT NULL,
            ended_at REAL
        );
        CREATE UNIQUE INDEX conversations_active_thread
            ON conversations (channel, thread) WHERE state = 'active';
        """,
    ),
    Migration(
        2,
        "messages and the delivery engine's jobs",
        """
        CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            channel TEXT NOT NULL,
            direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
            thread TEXT NOT NULL,
            provider_message_id TEXT,
            unblu_message_id TEXT,
            conversation_id TEXT,
            state INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE UNIQUE INDEX messages_provider_id
            ON messages (channel, direction, provider_message_id);
        CREATE UNIQUE INDEX messages_unblu_id
            ON messages (channel, direction, unblu_message_id);
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            lane TEXT NOT NULL,
            payload BLOB NOT NULL,
            message_id TEXT,
            state TEXT NOT NULL CHECK (state IN ('ready', 'running', 'done', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL NOT NULL,
            lease_until REAL,
            last_error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX jobs_runnable ON jobs (state, next_at);
        CREATE INDEX jobs_lane ON jobs (lane, state, id);
        """,
    ),
    Migration(
        3,
        "index the unfinished jobs by lane, so finding lane heads costs per lane, not per job",
        """
        CREATE INDEX jobs_unfinished ON jobs (lane, id) WHERE state IN ('ready', 'running');
        DROP INDEX jobs_lane;
        """,
    ),
    Migration(
        4,
        "index inbound messages by thread, so the last inbound time is a seek, not a scan",
        """
        CREATE INDEX messages_inbound_thread
            ON messages (channel, thread, created_at) WHERE direction = 'in';
        """,
    ),
    Migration(
        5,
        "parts of split messages, and files published for providers to fetch",
        """
        CREATE TABLE message_parts (
            message_id TEXT NOT NULL,
            part INTEGER NOT NULL,
            channel TEXT NOT NULL,
            provider_message_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (message_id, part)
        );
        CREATE INDEX message_parts_provider ON message_parts (channel, provider_message_id);
        CREATE TABLE media (
            id TEXT PRIMARY KEY,
            channel TEXT NOT NULL,
            file_name TEXT NOT NULL,
            mime_type TEXT NOT NULL,
            data BLOB NOT NULL,
            expires_at REAL NOT NULL
        );
        CREATE INDEX media_expiry ON media (expires_at);
        """,
    ),
    Migration(
        6,
        "what messengers remember per thread (a mail thread's subject and last Message-ID)",
        """
        CREATE TABLE thread_meta (
            channel TEXT NOT NULL,
            thread TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (channel, thread, key)
        );
        """,
    ),
    Migration(
        7,
        "mark each lane's head job, so a claim reads the ready heads in order instead of walking"
        " every lane",
        """
        ALTER TABLE jobs ADD COLUMN head INTEGER NOT NULL DEFAULT 0;
        UPDATE jobs SET head = 1 WHERE state IN ('ready', 'running') AND id = (
            SELECT MIN(id) FROM jobs AS l INDEXED BY jobs_unfinished
            WHERE l.state IN ('ready', 'running') AND l.lane = jobs.lane);
        CREATE INDEX jobs_ready_heads ON jobs (next_at, id) WHERE head = 1 AND state = 'ready';
        """,
    ),
    Migration(
        8,
        "fence each claim of a job, so a worker whose lease was taken over cannot finish it,"
        " and mark jobs whose last attempt may have reached the remote as in doubt",
        """
        ALTER TABLE jobs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE jobs ADD COLUMN in_doubt INTEGER NOT NULL DEFAULT 0;
        """,
    ),
    Migration(
        9,
        "a dead letter that gave up for want of retries holds its lane until retried, skipped"
        " or purged, so that retrying it keeps the conversation's order",
        """
        ALTER TABLE jobs ADD COLUMN holds_lane INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX jobs_held ON jobs (lane, id) WHERE holds_lane = 1;
        """,
    ),
    Migration(
        10,
        "each part's own delivery state, so a message is sent, delivered or read only once all"
        " its parts are",
        """
        ALTER TABLE message_parts ADD COLUMN state INTEGER NOT NULL DEFAULT 1;
        ALTER TABLE message_parts ADD COLUMN error TEXT;
        """,
    ),
    Migration(
        11,
        "what erasing a contact needs: its conversations and outbound messages found by index,"
        " and the message a published file belongs to",
        """
        CREATE INDEX conversations_contact ON conversations (channel, contact_address);
        CREATE INDEX messages_outbound_thread
            ON messages (channel, thread) WHERE direction = 'out';
        ALTER TABLE media ADD COLUMN message_id TEXT;
        """,
    ),
    Migration(
        12,
        "opt-outs that outlive an erased contact: a keyed hash of channel and address, and the"
        " store's own key for it",
        """
        CREATE TABLE store_keys (
            name TEXT PRIMARY KEY,
            secret BLOB NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE suppressions (
            address_hash TEXT PRIMARY KEY,
            reason TEXT,
            created_at REAL NOT NULL
        );
        """,
    ),
)

# Times are epoch seconds (DOUBLE PRECISION) as in SQLite, so both stores hand out the same rows
# and the engine's clock stays the single time base. The message id indexes lead with the id, so
# a lookup by one id can only use its own index, whatever the planner's statistics say. Every job
# is written three or four times, so its table is vacuumed and analyzed more often than usual.
POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "channels, contacts and conversations",
        """
        CREATE TABLE channels (
            name TEXT PRIMARY KEY,
            messenger TEXT NOT NULL,
            unblu_channel_id TEXT,
            webhook_status TEXT,
            provisioned_at DOUBLE PRECISION
        );
        CREATE TABLE contacts (
            channel TEXT NOT NULL,
            address TEXT NOT NULL,
            name TEXT,
            unblu_person_id TEXT,
            unblu_contact_id TEXT,
            opted_out BOOLEAN NOT NULL DEFAULT FALSE,
            opted_out_reason TEXT,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (channel, address)
        );
        CREATE TABLE conversations (
            unblu_conversation_id TEXT PRIMARY KEY,
            channel TEXT NOT NULL,
            thread TEXT NOT NULL,
            contact_address TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('active', 'ended')),
            created_at DOUBLE PRECISION NOT NULL,
            ended_at DOUBLE PRECISION
        );
        CREATE UNIQUE INDEX conversations_active_thread
            ON conversations (channel, thread) WHERE state = 'active';
        """,
    ),
    Migration(
        2,
        "messages and the delivery engine's jobs, with one running job per lane at most",
        """
        CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            channel TEXT NOT NULL,
            direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
            thread TEXT NOT NULL,
            provider_message_id TEXT,
            unblu_message_id TEXT,
            conversation_id TEXT,
            state INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        );
        CREATE UNIQUE INDEX messages_provider_id
            ON messages (provider_message_id, channel, direction);
        CREATE UNIQUE INDEX messages_unblu_id
            ON messages (unblu_message_id, channel, direction);
        CREATE INDEX messages_inbound_thread
            ON messages (channel, thread, created_at) WHERE direction = 'in';
        CREATE TABLE jobs (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            kind TEXT NOT NULL,
            lane TEXT NOT NULL,
            payload BYTEA NOT NULL,
            message_id TEXT,
            state TEXT NOT NULL CHECK (state IN ('ready', 'running', 'done', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at DOUBLE PRECISION NOT NULL,
            lease_until DOUBLE PRECISION,
            last_error TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX jobs_unfinished ON jobs (lane, id) WHERE state IN ('ready', 'running');
        CREATE UNIQUE INDEX jobs_running_lane ON jobs (lane) WHERE state = 'running';
        CREATE INDEX jobs_ready ON jobs (next_at, id) WHERE state = 'ready';
        CREATE INDEX jobs_state ON jobs (state, id);
        ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.02,
                              autovacuum_analyze_scale_factor = 0.02);
        """,
    ),
    Migration(
        3,
        "parts of split messages, and files published for providers to fetch",
        """
        CREATE TABLE message_parts (
            message_id TEXT NOT NULL,
            part INTEGER NOT NULL,
            channel TEXT NOT NULL,
            provider_message_id TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (message_id, part)
        );
        CREATE INDEX message_parts_provider ON message_parts (provider_message_id, channel);
        CREATE TABLE media (
            id TEXT PRIMARY KEY,
            channel TEXT NOT NULL,
            file_name TEXT NOT NULL,
            mime_type TEXT NOT NULL,
            data BYTEA NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX media_expiry ON media (expires_at);
        """,
    ),
    Migration(
        4,
        "what messengers remember per thread (a mail thread's subject and last Message-ID)",
        """
        CREATE TABLE thread_meta (
            channel TEXT NOT NULL,
            thread TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (channel, thread, key)
        );
        """,
    ),
    Migration(
        5,
        "fence each claim of a job, so a worker whose lease was taken over cannot finish it,"
        " and mark jobs whose last attempt may have reached the remote as in doubt",
        # A constant default: PostgreSQL 11 and later add both without rewriting the table.
        """
        ALTER TABLE jobs ADD COLUMN fence BIGINT NOT NULL DEFAULT 0;
        ALTER TABLE jobs ADD COLUMN in_doubt BOOLEAN NOT NULL DEFAULT FALSE;
        """,
    ),
    Migration(
        6,
        "a dead letter that gave up for want of retries holds its lane until retried, skipped"
        " or purged, so that retrying it keeps the conversation's order",
        "ALTER TABLE jobs ADD COLUMN holds_lane BOOLEAN NOT NULL DEFAULT FALSE;",
        (Index("jobs_held", "ON jobs (lane, id) WHERE holds_lane"),),
    ),
    Migration(
        7,
        "each part's own delivery state, so a message is sent, delivered or read only once all"
        " its parts are",
        """
        ALTER TABLE message_parts ADD COLUMN state INTEGER NOT NULL DEFAULT 1;
        ALTER TABLE message_parts ADD COLUMN error TEXT;
        """,
    ),
    Migration(
        8,
        "what erasing a contact needs: its conversations and outbound messages found by index,"
        " and the message a published file belongs to",
        "ALTER TABLE media ADD COLUMN message_id TEXT;",
        (
            Index("conversations_contact", "ON conversations (channel, contact_address)"),
            Index(
                "messages_outbound_thread", "ON messages (channel, thread) WHERE direction = 'out'"
            ),
        ),
    ),
    Migration(
        9,
        "opt-outs that outlive an erased contact: a keyed hash of channel and address, and the"
        " store's own key for it",
        """
        CREATE TABLE store_keys (
            name TEXT PRIMARY KEY,
            secret BYTEA NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE suppressions (
            address_hash TEXT PRIMARY KEY,
            reason TEXT,
            created_at DOUBLE PRECISION NOT NULL
        );
        """,
    ),
)
