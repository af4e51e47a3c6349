"""``[store] synchronous``: the SQLite store of a running server syncs as configured, and
PostgreSQL, whose server decides, refuses the option."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from extmsg.app import create_app
from extmsg.config import parse_config
from extmsg.errors import ConfigError
from extmsg.plugins import build_hooks
from extmsg.runtime import RUNTIME
from extmsg.store.sqlite import SqliteStore

from . import loopback_plugin

HOOKS = build_hooks(entry_points=False, extra=[loopback_plugin], disabled=())

# PRAGMA synchronous answers a number: 1 is NORMAL, 2 is FULL.
LEVELS = {None: 1, "normal": 1, "full": 2}


@pytest.mark.parametrize("setting", [None, "normal", "full"])
async def test_a_served_store_syncs_as_configured(
    setting: str | None, tmp_path: Path, aiohttp_client: Any
) -> None:
    store: dict[str, Any] = {"path": str(tmp_path / "store.sqlite3")}
    if setting is not None:
        store["synchronous"] = setting
    config = parse_config({"store": store}, HOOKS.messenger_types())
    client = await aiohttp_client(create_app(config, HOOKS))
    served = client.app[RUNTIME].store
    assert isinstance(served, SqliteStore)
    # Both of the store's connections: the writer commits on one, housekeeping on the other.
    assert served._writer is not None
    assert served._background is not None
    [(writer,)] = served._writer.connection.execute("PRAGMA synchronous").fetchall()
    async with served._background.execute("PRAGMA synchronous") as cursor:
        [(background,)] = list(await cursor.fetchall())
    assert (writer, background) == (LEVELS[setting], LEVELS[setting])


def _problems(store: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config({"store": store}, HOOKS.messenger_types())
    return info.value.problems


def test_an_unknown_synchronous_lists_the_allowed_values() -> None:
    assert _problems({"synchronous": "extra"}) == [
        "store.synchronous: invalid enum value 'extra' (allowed: 'normal', 'full')"
    ]


def test_postgres_refuses_full_and_names_what_decides_there() -> None:
    [problem] = _problems(
        {"backend": "postgres", "dsn": "postgresql://x@db/extmsg", "synchronous": "full"}
    )
    assert problem.startswith('store.synchronous: "full" is for SQLite')
    assert "synchronous_commit and fsync" in problem
    # The default means nothing there and is accepted.
    config = parse_config(
        {"store": {"backend": "postgres", "dsn": "postgresql://x@db/extmsg"}},
        HOOKS.messenger_types(),
    )
    assert config.store.synchronous == "normal"
