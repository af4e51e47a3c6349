"""``extmsg store backup``: copy the SQLite store while the server runs.

SQLite's online backup API copies the database in one step, inside one read transaction: the
copy is the store as of one commit, with every message committed before it began. The store
is in WAL mode, so the server's writes go on meanwhile (they only keep the log from being
checkpointed until the copy is done). The copy is written beside its destination, checked,
switched to a single file (no ``-wal`` beside it) and only then renamed into place, so PATH
is never half written.

PostgreSQL stores are backed up with PostgreSQL's own tools (``pg_dump``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import NamedTuple

import click

from ..cli_options import CONTEXT_SETTINGS, config_option, load_for_command
from ..errors import HandledError

__all__ = ["Backup", "backup_sqlite", "store"]


class Backup(NamedTuple):
    path: Path
    size: int
    messages: int
    jobs: int
    schema_version: int
    seconds: float


def backup_sqlite(source: Path, target: Path) -> Backup:
    """Copy the SQLite store at ``source`` to ``target`` (replaced if it exists)."""
    started = time.monotonic()
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    src = sqlite3.connect(source, isolation_level=None)
    try:
        src.execute("PRAGMA busy_timeout=5000")
        dst = sqlite3.connect(partial, isolation_level=None)
        try:
            src.backup(dst)  # all pages in one step: one consistent snapshot
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            problems = [row[0] for row in dst.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise HandledError(f"the copy does not check out: {'; '.join(problems[:5])}")
            counts = [
                int(dst.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608
                for table in ("messages", "jobs")
            ]
            version = dst.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            schema = int(version.fetchone()[0])
        finally:
            dst.close()
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    finally:
        src.close()
    return Backup(
        target, target.stat().st_size, counts[0], counts[1], schema, time.monotonic() - started
    )


@click.group("store", context_settings=CONTEXT_SETTINGS)
def store() -> None:
    """The store: backups."""


@store.command("backup")
@config_option()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace PATH if it exists.")
def backup(config_path: Path, path: Path, force: bool) -> None:
    """Copy the SQLite store to PATH while the server runs (SQLite's online backup)."""
    config, _ = load_for_command(config_path)
    if config.store.backend != "sqlite":
        raise HandledError(
            f"the store is {config.store.backend}: back it up with PostgreSQL's pg_dump"
            " (e.g. pg_dump --format=custom --file=extmsg.dump DSN); 'extmsg store backup'"
            " copies SQLite stores"
        )
    source = config.store_path()
    if not source.exists():
        raise HandledError(
            f"there is no store at {source}: check store.path in {config_path}"
            " ('extmsg serve' creates it)"
        )
    if path.exists() and not force:
        raise HandledError(f"{path} exists (give --force to replace it)")
    if path.exists() and path.resolve() == source.resolve():
        raise HandledError(f"{path} is the store itself; name another file")
    if not path.parent.is_dir():
        raise HandledError(f"{path.parent} is not a directory")
    try:
        done = backup_sqlite(source, path)
    except sqlite3.Error as exc:
        raise HandledError(f"backing up {source} failed: {exc}") from exc
    click.echo(
        f"backed up {source} to {done.path}: {done.size} bytes, {done.messages} message(s),"
        f" {done.jobs} job(s), schema version {done.schema_version}, in {done.seconds:.1f}s"
    )
