"""``extmsg outbox``: list, show, retry and purge jobs in the store a config names."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from extmsg.engine.cli import outbox
from extmsg.errors import HandledError
from extmsg.models import MessageState
from extmsg.store.base import Intake, NewJob, NewMessage
from extmsg.store.sqlite import SqliteStore


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config whose store holds job 1 dead (its message failed), job 2 done, job 3 ready
    (with a binary payload) and job 4 running."""
    path = tmp_path / "extmsg.toml"
    path.write_text('[store]\npath = "data/outbox.sqlite3"\n', encoding="utf-8")

    async def fill() -> None:
        store = SqliteStore(tmp_path / "data" / "outbox.sqlite3")
        await store.open()
        payload = json.dumps({"text": "Grüezi", "to": "+41790000001"}).encode()
        await store.intake(
            [
                Intake(
                    message=NewMessage(
                        id="m1", channel="sms", direction="out", thread="t1", unblu_message_id="u1"
                    ),
                    job=NewJob(kind="outbound.send", lane="sms:+41790000001", payload=payload),
                ),
                Intake(job=NewJob(kind="inbound.forward", lane="sms:+41790000002", payload=b"{}")),
                Intake(
                    job=NewJob(
                        kind="inbound.forward", lane="sms:+41790000003", payload=b"\x00\xffbinary"
                    )
                ),
                Intake(job=NewJob(kind="outbound.send", lane="sms:+41790000004", payload=b"[]")),
            ]
        )
        claimed = await store.claim_jobs(4, 60)
        assert [j.id for j in claimed] == [1, 2, 3, 4]
        await store.advance_state("m1", MessageState.FAILED, "opted out")
        await store.bury_job(1, "the contact opted out [code 21610]")
        await store.complete_job(2)
        await store.release_jobs([3])
        await store.close()

    asyncio.run(fill())
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(outbox, list(args), catch_exceptions=True)


def jobs_in(config: Path) -> dict[int, tuple[str, int]]:
    async def read() -> dict[int, tuple[str, int]]:
        store = SqliteStore(config.parent / "data" / "outbox.sqlite3")
        await store.open()
        try:
            rows = await store.list_jobs(("ready", "running", "done", "dead"), 100)
            return {j.id: (j.state, j.attempts) for j in rows}
        finally:
            await store.close()

    return asyncio.run(read())


def test_list_shows_unfinished_and_dead_jobs(config: Path) -> None:
    result = run("list", "--config", str(config))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "ID",
        "STATE",
        "KIND",
        "LANE",
        "ATTEMPTS",
        "NEXT",
        "ATTEMPT",
        "LAST",
        "ERROR",
    ]
    assert [line.split()[:2] for line in lines[1:-1]] == [
        ["1", "dead"],
        ["3", "ready"],
        ["4", "running"],
    ]
    assert "the contact opted out" in lines[1]
    assert lines[-1] == "3 job(s)"


def test_list_one_state_as_json(config: Path) -> None:
    result = run("list", "--config", str(config), "--state", "done", "--json")
    assert result.exit_code == 0, result.output
    [job] = json.loads(result.output)
    assert (job["id"], job["state"], job["kind"], job["attempts"]) == (
        2,
        "done",
        "inbound.forward",
        1,
    )
    assert "payload" not in job


def test_list_limit_says_there_may_be_more(config: Path) -> None:
    result = run("list", "--config", str(config), "--limit", "2")
    assert result.output.splitlines()[-1] == "2 job(s) (the first 2; see --limit)"


def test_show_pretty_prints_a_json_payload(config: Path) -> None:
    result = run("show", "1", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "state:        dead" in result.output
    assert "last error:   the contact opted out [code 21610]" in result.output
    assert '    "text": "Grüezi",' in result.output


def test_show_a_binary_payload_and_a_missing_job(config: Path) -> None:
    result = run("show", "3", "--config", str(config))
    assert "(8 bytes, not JSON) 00 ff 62 69" in result.output
    assert "(now)" in result.output  # ready: its next attempt is due

    missing = run("show", "99", "--config", str(config))
    assert isinstance(missing.exception, HandledError)
    assert str(missing.exception) == "there is no job 99"


def test_retry_named_jobs(config: Path) -> None:
    result = run("retry", "1", "2", "99", "--config", str(config))
    assert "1 job(s) will run again: 1" in result.output
    assert isinstance(result.exception, HandledError)
    assert str(result.exception) == "job 2 is done, not dead; job 99 does not exist"
    assert jobs_in(config)[1] == ("ready", 0)

    async def message_state() -> MessageState:
        store = SqliteStore(config.parent / "data" / "outbox.sqlite3")
        await store.open()
        row = await store.get_message("m1")
        await store.close()
        assert row is not None
        return row.state

    assert asyncio.run(message_state()) is MessageState.PENDING


def test_retry_all_dead(config: Path) -> None:
    result = run("retry", "--all-dead", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "1 job(s) will run again: 1"
    again = run("retry", "--all-dead", "--config", str(config))
    assert again.output.strip() == "there are no dead jobs"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "name the jobs to retry, or give --all-dead"),
        (("1", "--all-dead"), "give job ids or --all-dead, not both"),
    ],
)
def test_retry_needs_jobs(config: Path, args: tuple[str, ...], message: str) -> None:
    result = run("retry", *args, "--config", str(config))
    assert isinstance(result.exception, HandledError)
    assert str(result.exception) == message


def test_purge(config: Path) -> None:
    kept = run("purge", "--config", str(config), "--older-than", "7d")
    assert kept.output.strip() == "purged 0 done job(s) older than 7d"
    result = run("purge", "--config", str(config))
    assert result.output.strip() == "purged 1 done job(s)"
    dead = run("purge", "--config", str(config), "--state", "dead", "--older-than", "0s")
    assert dead.output.strip() == "purged 1 dead job(s) older than 0s"
    assert sorted(jobs_in(config)) == [3, 4]

    bad = run("purge", "--config", str(config), "--older-than", "a week")
    assert bad.exit_code == 2
    assert "is not an age like 7d" in bad.output


def test_a_missing_config_or_store_is_a_handled_error(tmp_path: Path) -> None:
    result = run("list", "--config", str(tmp_path / "nope.toml"))
    assert isinstance(result.exception, HandledError)

    config = tmp_path / "extmsg.toml"
    config.write_text('[store]\npath = "missing.sqlite3"\n', encoding="utf-8")
    result = run("list", "--config", str(config))
    assert isinstance(result.exception, HandledError)
    assert "there is no store at" in str(result.exception)
    assert not (tmp_path / "missing.sqlite3").exists()  # looking does not create one


@pytest.fixture
def held(tmp_path: Path) -> Path:
    """A config whose store has lane A held by dead job 1 (out of retries), job 2 waiting
    behind it, and job 3 ready in lane B."""
    path = tmp_path / "extmsg.toml"
    path.write_text('[store]\npath = "held.sqlite3"\n', encoding="utf-8")

    async def fill() -> None:
        store = SqliteStore(tmp_path / "held.sqlite3")
        await store.open()
        jobs = [("sms/+41790000001", b"1"), ("sms/+41790000001", b"2"), ("sms/+41790000002", b"3")]
        await store.intake([Intake(job=NewJob(kind="k", lane=ln, payload=p)) for ln, p in jobs])
        claimed = await store.claim_jobs(1, 60)
        assert [j.id for j in claimed] == [1]
        await store.bury_job(1, "Unblu answered 503 (gave up after 3 attempts)", hold=True)
        await store.close()

    asyncio.run(fill())
    return path


def test_list_shows_a_held_lane_and_the_way_out(held: Path) -> None:
    result = run("list", "--config", str(held))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "after dead 1" in lines[2]  # job 2 waits behind it
    assert "after dead" not in lines[3]
    assert lines[-1].startswith("1 lane(s) held by a dead letter that ran out of retries (1)")
    assert "extmsg outbox retry ID" in lines[-1]
    assert "extmsg outbox skip ID" in lines[-1]
    [first, *_] = json.loads(run("list", "--config", str(held), "--json").output)
    assert first["holds_lane"] is True
    assert "holds lane:" in run("show", "1", "--config", str(held)).output
    # listing other jobs still tells that a lane is held
    ready = run("list", "--config", str(held), "--state", "ready").output.splitlines()
    assert ready[-1].startswith("1 lane(s) held by a dead letter that ran out of retries:")
    assert ready[-1].endswith("not all are listed: see --state dead.")


def test_skip_lets_a_held_lane_go_on(held: Path) -> None:
    result = run("skip", "2", "--config", str(held))
    assert isinstance(result.exception, HandledError)
    assert "job 2 is ready, not a dead letter holding its lane" in str(result.exception)
    result = run("skip", "--all-held", "--config", str(held))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "1 lane(s) go on without their dead letter: 1"
    assert run("skip", "--all-held", "--config", str(held)).output.strip() == "no lane is held"
    assert "held" not in run("list", "--config", str(held)).output

    async def claim() -> list[int]:
        store = SqliteStore(held.parent / "held.sqlite3")
        await store.open()
        try:
            return [j.id for j in await store.claim_jobs(10, 60)]
        finally:
            await store.close()

    assert asyncio.run(claim()) == [2, 3]
