"""``extmsg serve --workers N``: how many by default, what the supervisor refuses, what runs once
per server, and the event loop. The end-to-end run under traffic (kills, readiness, SIGTERM) is
``plugins/sms_twilio/tests/test_twilio_workers.py``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from extmsg.cli import _loop_factory, main
from extmsg.config import parse_config
from extmsg.errors import HandledError
from extmsg.store.sqlite import SqliteStore

from .helpers import ServeProcess, free_port


def test_default_worker_count_is_the_cores_on_postgres_and_one_on_sqlite() -> None:
    cores = len(os.sched_getaffinity(0))
    pg = parse_config({"store": {"backend": "postgres", "dsn": "postgresql://h/db"}}, {})
    assert pg.worker_count() == cores
    assert parse_config({}, {}).worker_count() == 1
    assert parse_config({"server": {"workers": 3}}, {}).worker_count() == 3


def test_workers_below_one_are_refused() -> None:
    result = CliRunner().invoke(main, ["serve", "--workers", "0"])
    assert result.exit_code == 2
    assert "--workers" in result.output


def test_the_sandbox_refuses_several_workers(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["serve", "--sandbox", "--workers", "2", "--config", str(tmp_path / "none.toml")]
    )
    assert result.exit_code == 2, result.output
    assert "error: --sandbox runs in one process" in result.output


async def test_a_taken_port_stops_the_supervisor_before_any_worker(tmp_path: Path) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = tmp_path / "extmsg.toml"
    config.write_text(f'[server]\nport = {port}\nworkers = 2\n[store]\npath = "s.sqlite3"\n')
    proc = ServeProcess(config)
    proc.start()
    assert proc.proc is not None
    try:
        assert proc.proc.wait(30) == 2
        assert f"error: server: cannot listen on 127.0.0.1:{port}" in proc.log()
        assert "worker 0 started" not in proc.log()
    finally:
        taken.close()
        proc.kill()


async def test_a_worker_failing_at_start_stops_the_server_with_its_code(tmp_path: Path) -> None:
    """A store that cannot be opened fails every worker at start: the server stops (with the
    worker's code) instead of starting them again and again."""
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "s.sqlite3").mkdir()  # a directory where the file should be
    config = tmp_path / "extmsg.toml"
    config.write_text(
        f"[server]\nport = {free_port()}\nworkers = 2\n"
        f'[store]\npath = "{tmp_path / "store" / "s.sqlite3"}"\n'
    )
    proc = ServeProcess(config)
    proc.start()
    assert proc.proc is not None
    try:
        assert proc.proc.wait(60) != 0, proc.log()
        assert "before the server was ready" in proc.log()
    finally:
        proc.kill()


async def test_sqlite_exclusive_section_is_held_across_store_connections(tmp_path: Path) -> None:
    """What keeps two workers of one server from provisioning at once: the section is a lock
    on a file beside the store, not only one of the process."""
    path = tmp_path / "s.sqlite3"
    first, second = SqliteStore(path), SqliteStore(path)
    await first.open()
    await second.open()
    try:
        entered = asyncio.Event()

        async def wait_turn() -> None:
            async with second.exclusive("provision"):
                entered.set()

        async with first.exclusive("provision"):
            waiter = asyncio.create_task(wait_turn())
            await asyncio.sleep(0.3)
            assert not entered.is_set()
        await asyncio.wait_for(waiter, 5)
        assert entered.is_set()
    finally:
        await first.close()
        await second.close()


def test_event_loop_choice() -> None:
    assert _loop_factory("asyncio") is None
    try:
        import uvloop
    except ImportError:
        with pytest.raises(HandledError, match="uvloop is not installed"):
            _loop_factory("uvloop")
        assert _loop_factory("auto") is None
    else:
        assert _loop_factory("auto") is uvloop.new_event_loop
        assert _loop_factory("uvloop") is uvloop.new_event_loop
