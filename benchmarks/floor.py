"""The floors: the least a server must do for a Twilio inbound webhook, on the same stack.

    python benchmarks/floor.py bare   --port 8001
    python benchmarks/floor.py sqlite --port 8002 --db /tmp/floor.sqlite3 [--synchronous FULL]
    python benchmarks/floor.py postgres --port 8003 --dsn postgresql://postgres@127.0.0.1/bench

``bare`` parses the form and answers the empty TwiML extmsg answers. ``sqlite`` does the same
plus one SQLite commit per request (WAL, ``synchronous=NORMAL`` like extmsg's store by default,
or ``--synchronous FULL`` like ``[store] synchronous = "full"``; through aiosqlite like the
store): the request's row is inserted in its own autocommitted statement
before the answer. ``postgres`` inserts the row with asyncpg instead, one autocommitted
``INSERT`` per request from a pool of 10 connections (the size of an extmsg process's pool), in
a table of its own (``floor_messages``): one round trip, as the pool sends no reset statement
when a connection goes back. None checks the signature. ``GET /readyz`` answers 200.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiosqlite
from aiohttp import web

if TYPE_CHECKING:
    import asyncpg

TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
PATH = "/channels/{channel}/inbound"
DB = web.AppKey("db", aiosqlite.Connection)
PG: web.AppKey[asyncpg.Pool] = web.AppKey("pg")
PG_POOL_SIZE = 10
PG_INSERT = (
    "INSERT INTO floor_messages (sid, sender, body, created_at) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT DO NOTHING"
)


async def bare(request: web.Request) -> web.Response:
    form = await request.post()
    if not form.get("MessageSid"):
        return web.Response(status=400, text="no MessageSid")
    return web.Response(body=TWIML, content_type="text/xml")


async def with_commit(request: web.Request) -> web.Response:
    form = await request.post()
    sid = form.get("MessageSid")
    if not sid:
        return web.Response(status=400, text="no MessageSid")
    await request.app[DB].execute(
        "INSERT INTO messages (sid, sender, body, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (str(sid), str(form.get("From", "")), str(form.get("Body", "")), time.time()),
    )
    return web.Response(body=TWIML, content_type="text/xml")


async def with_pg_commit(request: web.Request) -> web.Response:
    form = await request.post()
    sid = form.get("MessageSid")
    if not sid:
        return web.Response(status=400, text="no MessageSid")
    await request.app[PG].execute(
        PG_INSERT, str(sid), str(form.get("From", "")), str(form.get("Body", "")), time.time()
    )
    return web.Response(body=TWIML, content_type="text/xml")


async def readyz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


def create_app(
    kind: str, db_path: str | None, synchronous: str = "NORMAL", dsn: str | None = None
) -> web.Application:
    app = web.Application()
    app.router.add_get("/readyz", readyz)
    if kind == "bare":
        app.router.add_post(PATH, bare)
        return app
    if kind == "postgres":
        return _with_postgres(app, dsn)
    if db_path is None:
        raise SystemExit("sqlite needs --db")

    async def database(app: web.Application) -> AsyncIterator[None]:
        db = await aiosqlite.connect(db_path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA synchronous={synchronous}")
        await db.execute(
            "CREATE TABLE IF NOT EXISTS messages (sid TEXT PRIMARY KEY, sender TEXT,"
            " body TEXT, created_at REAL)"
        )
        app[DB] = db
        yield
        await db.close()

    app.cleanup_ctx.append(database)
    app.router.add_post(PATH, with_commit)
    return app


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset: an autocommitted INSERT leaves no session state behind, so the floor
    spares the statement asyncpg's pool otherwise sends whenever a connection is released."""


def _with_postgres(app: web.Application, dsn: str | None) -> web.Application:
    if dsn is None:
        raise SystemExit("postgres needs --dsn")

    async def database(app: web.Application) -> AsyncIterator[None]:
        import asyncpg

        pool = await asyncpg.create_pool(
            dsn, min_size=PG_POOL_SIZE, max_size=PG_POOL_SIZE, reset=_keep_session
        )
        await pool.execute(
            "CREATE TABLE IF NOT EXISTS floor_messages (sid TEXT PRIMARY KEY, sender TEXT,"
            " body TEXT, created_at DOUBLE PRECISION)"
        )
        app[PG] = pool
        yield
        await pool.close()

    app.cleanup_ctx.append(database)
    app.router.add_post(PATH, with_pg_commit)
    return app


async def serve(
    kind: str, port: int, db_path: str | None, synchronous: str, dsn: str | None = None
) -> None:
    runner = web.AppRunner(create_app(kind, db_path, synchronous, dsn), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="a floor server")
    parser.add_argument("kind", choices=("bare", "sqlite", "postgres"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db")
    parser.add_argument("--synchronous", choices=("NORMAL", "FULL"), default="NORMAL")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("FLOOR_POSTGRES_DSN"),
        help="the PostgreSQL database (postgres; default: $FLOOR_POSTGRES_DSN, which keeps a"
        " password out of the process list)",
    )
    args = parser.parse_args(argv)
    asyncio.run(serve(args.kind, args.port, args.db, args.synchronous, args.dsn))


if __name__ == "__main__":
    main(sys.argv[1:])
