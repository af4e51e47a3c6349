"""The PostgreSQL server the store tests run against: one fresh schema per test.

The server is named by ``EXTMSG_TEST_POSTGRES_DSN``; when none answers there, the tests that
need it are skipped (saying why), and the SQLite half of the suite still runs.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from extmsg.store.postgres import PostgresStore, describe_dsn

DSN = os.environ.get("EXTMSG_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")

_unreachable: dict[str, str] = {}
_checked: set[str] = set()


async def require_postgres() -> str:
    """The test server's DSN; skips the calling test when the server does not answer."""
    if DSN not in _checked:
        _checked.add(DSN)
        try:
            conn = await asyncpg.connect(DSN, timeout=3)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            _unreachable[DSN] = (
                f"no PostgreSQL server at {describe_dsn(DSN)} ({exc}); set"
                " EXTMSG_TEST_POSTGRES_DSN to run the PostgreSQL store tests"
            )
        else:
            await conn.close()
    if DSN in _unreachable:
        pytest.skip(_unreachable[DSN])
    return DSN


@contextlib.asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A new empty schema, dropped with everything in it afterwards."""
    dsn = await require_postgres()
    name = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE SCHEMA {name}")
        try:
            yield name
        finally:
            await admin.execute(f"DROP SCHEMA {name} CASCADE")
    finally:
        await admin.close()


def store_in(schema: str, **kw: int) -> PostgresStore:
    """A store (one pool: one "instance") on the test server, in ``schema``."""
    return PostgresStore(DSN, schema=schema, **kw)
