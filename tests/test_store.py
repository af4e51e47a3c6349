"""Both stores (SQLite and PostgreSQL, every test on each): dedup with the job in one
transaction, forward-only message states, lane ordering of jobs, leases, dead letters; and the
SQLite migrations (PostgreSQL's multi-instance behaviour is in test_store_postgres.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from extmsg.models import MessageState
from extmsg.store.base import (
    ContactRow,
    ConversationRow,
    Intake,
    MediaRow,
    NewJob,
    NewMessage,
    PartSent,
    StatusOutcome,
    Store,
    ThreadView,
    parts_state,
    status_target,
)
from extmsg.store.migrations import MIGRATIONS
from extmsg.store.postgres import PostgresStore
from extmsg.store.sqlite import SqliteStore

from . import pg


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "store.sqlite3")
        await s.open()
        yield s
        await s.close()
        return
    async with pg.fresh_schema() as schema:
        p = pg.store_in(schema)
        await p.open()
        try:
            yield p
        finally:
            await p.close()


def message(
    n: int | str,
    *,
    provider: str | None = None,
    unblu: str | None = None,
    channel: str = "sms",
    direction: str = "in",
) -> NewMessage:
    return NewMessage(
        id=f"m{n}",
        channel=channel,
        direction=direction,  # type: ignore[arg-type]
        thread="+41790000001",
        provider_message_id=provider
        if provider is not None
        else (f"p{n}" if unblu is None else None),
        unblu_message_id=unblu,
    )


def job(lane: str, payload: bytes = b"{}", kind: str = "k", delay: float = 0.0) -> NewJob:
    return NewJob(kind=kind, lane=lane, payload=payload, delay=delay)


async def enqueue(store: Store, *lanes: str) -> list[int]:
    """One job per lane name given (repeat a name for several), in order; their ids."""
    before = {j.id for j in await store.list_jobs(("ready", "running", "done", "dead"), 10**6)}
    await store.intake(
        [Intake(job=job(lane, payload=str(i).encode())) for i, lane in enumerate(lanes)]
    )
    after = await store.list_jobs(("ready", "running", "done", "dead"), 10**6)
    return [j.id for j in after if j.id not in before]


async def count(store: Store, table: str) -> int:
    if isinstance(store, PostgresStore):
        return int(await store._fetchval(f"SELECT COUNT(*) FROM {table}"))  # noqa: S608
    assert isinstance(store, SqliteStore)
    row = await store._one(f"SELECT COUNT(*) FROM {table}")  # noqa: S608
    return int(row[0])


def integrity_error(store: Store) -> type[Exception]:
    """What the store's driver raises for a violated CHECK constraint."""
    error: type[Exception] = (
        asyncpg.CheckViolationError if isinstance(store, PostgresStore) else sqlite3.IntegrityError
    )
    return error


# -- intake and dedup -------------------------------------------------------------------------
async def test_a_duplicate_message_enqueues_no_job(store: Store) -> None:
    first = await store.intake([Intake(message=message(1), job=job("a"))])
    assert [r.accepted for r in first] == [True]
    assert first[0].message_id == "m1"

    # the provider sends the same message again (same provider id, a fresh id of ours)
    again = await store.intake([Intake(message=message("x", provider="p1"), job=job("a"))])
    assert again[0].accepted is False
    assert again[0].message_id == "m1"
    assert await count(store, "messages") == 1
    assert await count(store, "jobs") == 1


async def test_duplicates_within_one_batch_and_by_unblu_id(store: Store) -> None:
    results = await store.intake(
        [
            Intake(message=message(1), job=job("a")),
            Intake(message=message(2, provider="p1"), job=job("a")),  # same provider id as m1
            Intake(message=message(3, unblu="u1", direction="out"), job=job("b")),
            Intake(message=message(4, unblu="u1", direction="out"), job=job("b")),
            Intake(message=message(5, unblu="u1", direction="in"), job=job("c")),  # other direction
            Intake(message=message(6, provider="p1", channel="wa"), job=job("d")),  # other channel
            Intake(job=job("e")),  # a job without a message is always accepted
        ]
    )
    assert [(r.accepted, r.message_id) for r in results] == [
        (True, "m1"),
        (False, "m1"),
        (True, "m3"),
        (False, "m3"),
        (True, "m5"),
        (True, "m6"),
        (True, None),
    ]
    jobs = await store.list_jobs(("ready",))
    assert [j.lane for j in jobs] == ["a", "b", "c", "d", "e"]
    assert [j.message_id for j in jobs] == ["m1", "m3", "m5", "m6", None]


async def test_a_failed_intake_stores_nothing(store: Store) -> None:
    bad = message(2, direction="sideways")  # violates the CHECK constraint
    with pytest.raises(integrity_error(store)):
        await store.intake([Intake(message=message(1), job=job("a")), Intake(message=bad)])
    assert await count(store, "messages") == 0
    assert await count(store, "jobs") == 0


async def test_large_batches_keep_their_order(store: Store) -> None:
    items = [
        Intake(message=message(i), job=job(f"lane{i % 3}", payload=str(i).encode()))
        for i in range(1200)
    ]
    results = await store.intake(items)
    assert all(r.accepted for r in results)
    jobs = await store.list_jobs(("ready",), 5000)
    assert [int(j.payload) for j in jobs] == list(range(1200))
    assert [j.message_id for j in jobs] == [f"m{i}" for i in range(1200)]


async def test_delayed_jobs_wait(store: Store) -> None:
    await store.intake([Intake(job=job("a", delay=30))])
    assert await store.claim_jobs(5, 10) == []


# -- message states ---------------------------------------------------------------------------
async def test_message_states_only_move_forward(store: Store) -> None:
    await store.intake([Intake(message=message(1))])

    async def state() -> MessageState:
        row = await store.get_message("m1")
        assert row is not None
        return row.state

    assert await store.advance_state("m1", MessageState.DELIVERED)
    assert not await store.advance_state("m1", MessageState.SENT)
    assert await state() is MessageState.DELIVERED
    assert await store.advance_state("m1", MessageState.READ)
    assert not await store.advance_state("m1", MessageState.DELIVERED)
    assert not await store.advance_state("m1", MessageState.READ)
    assert await state() is MessageState.READ


async def test_failed_is_final_until_the_job_is_retried(store: Store) -> None:
    await store.intake([Intake(message=message(1), job=job("a"))])
    [claimed] = await store.claim_jobs(1, 30)
    assert await store.advance_state("m1", MessageState.FAILED, "opted out")
    for later in MessageState:
        assert not await store.advance_state("m1", later)
    await store.bury_job(claimed.id, "opted out")

    assert await store.retry_job(claimed.id)
    row = await store.get_message("m1")
    assert row is not None
    assert row.state is MessageState.PENDING
    assert await store.advance_state("m1", MessageState.SENT)
    retried = await store.get_job(claimed.id)
    assert retried is not None
    assert (retried.state, retried.attempts) == ("ready", 0)


# -- claiming ---------------------------------------------------------------------------------
async def test_a_jobs_view_answers_as_the_reads_it_stands_for(store: Store) -> None:
    ann, bob = "+41790000001", "+41790000002"
    assert await store.inbound_view("sms", ann, ann) == ThreadView()
    assert await store.outbound_view("sms", "c1") == ThreadView()
    await store.upsert_contact(
        ContactRow(channel="sms", address=ann, name="Ann", unblu_person_id="p1")
    )
    await store.set_opt_out("sms", ann, True, "STOP")
    await store.add_conversation(
        ConversationRow(channel="sms", thread=ann, contact_address=ann, unblu_conversation_id="c1")
    )
    await store.intake([Intake(message=message(1)), Intake(message=message(2))])

    inbound = await store.inbound_view("sms", ann, ann)
    assert inbound == ThreadView(
        contact=await store.get_contact("sms", ann),
        conversation=await store.active_conversation("sms", ann),
    )
    assert inbound.contact is not None
    assert inbound.conversation is not None
    assert (inbound.contact.name, inbound.contact.opted_out) == ("Ann", True)
    assert inbound.conversation.unblu_conversation_id == "c1"
    outbound = await store.outbound_view("sms", "c1")
    assert outbound == ThreadView(
        contact=inbound.contact,
        conversation=await store.find_conversation("c1"),
        last_inbound_at=await store.last_inbound_at("sms", ann),
    )
    assert outbound.last_inbound_at is not None
    # The conversation's contact and messages on the channel asked for.
    assert await store.outbound_view("wa", "c1") == ThreadView(conversation=outbound.conversation)

    await store.end_conversation("c1")
    assert await store.inbound_view("sms", ann, ann) == ThreadView(contact=inbound.contact)
    ended = await store.outbound_view("sms", "c1")
    assert ended.conversation is not None
    assert ended.conversation.state == "ended"
    await store.add_conversation(
        ConversationRow(channel="sms", thread=bob, contact_address=bob, unblu_conversation_id="c2")
    )
    assert await store.outbound_view("sms", "c2") == ThreadView(
        conversation=await store.find_conversation("c2")
    )
    assert await store.inbound_view("sms", bob, bob) == ThreadView(
        conversation=await store.find_conversation("c2")
    )


async def test_claims_follow_lane_order(store: Store) -> None:
    a1, a2, a3, b1, b2 = await enqueue(store, "a", "a", "a", "b", "b")
    first = await store.claim_jobs(10, 30)
    assert [j.id for j in first] == [a1, b1]
    assert all(j.state == "running" and j.lease_until for j in first)
    assert await store.claim_jobs(10, 30) == []  # both heads run: their lanes wait

    await store.complete_job(a1)
    assert [j.id for j in await store.claim_jobs(10, 30)] == [a2]

    # a2 fails and backs off: it stays the head of lane a and blocks it
    await store.reschedule_job(a2, time.time() + 0.2, "try later")
    await store.complete_job(b1)
    assert [j.id for j in await store.claim_jobs(10, 30)] == [b2]
    assert await store.claim_jobs(10, 30) == []
    backing_off = await store.get_job(a2)
    assert backing_off is not None
    assert (backing_off.state, backing_off.attempts, backing_off.last_error) == (
        "ready",
        1,
        "try later",
    )

    await asyncio.sleep(0.25)
    assert [j.id for j in await store.claim_jobs(10, 30)] == [a2]
    await store.complete_job(a2)
    assert [j.id for j in await store.claim_jobs(10, 30)] == [a3]


async def test_work_queued_behind_a_running_head_waits_for_it(store: Store) -> None:
    [a1] = await enqueue(store, "a")
    assert [j.id for j in await store.claim_jobs(10, 30)] == [a1]
    a2, b1 = await enqueue(store, "a", "b")  # arrives while a1 runs
    assert [j.id for j in await store.claim_jobs(10, 30)] == [b1]
    await store.complete_job(a1)
    assert [j.id for j in await store.claim_jobs(10, 30)] == [a2]


async def test_a_backlog_behind_running_heads_hides_no_other_lane(store: Store) -> None:
    busy = await enqueue(store, *[f"busy{i % 4}" for i in range(200)])
    assert len(await store.claim_jobs(4, 30)) == 4  # the four busy lanes' heads run
    [late] = await enqueue(store, "late")  # the oldest ready jobs are all behind those four
    assert [j.id for j in await store.claim_jobs(10, 30)] == [late]
    assert late > max(busy)


async def test_claim_limit(store: Store) -> None:
    ids = await enqueue(store, *[f"lane{i}" for i in range(6)])
    assert [j.id for j in await store.claim_jobs(4, 30)] == ids[:4]
    assert [j.id for j in await store.claim_jobs(4, 30)] == ids[4:]
    assert await store.claim_jobs(0, 30) == []


async def test_dead_jobs_do_not_block_their_lane(store: Store) -> None:
    a1, a2 = await enqueue(store, "a", "a")
    await store.claim_jobs(10, 30)
    await store.bury_job(a1, "permanent")
    [next_job] = await store.claim_jobs(10, 30)
    assert next_job.id == a2
    dead = await store.get_job(a1)
    assert dead is not None
    assert (dead.state, dead.last_error, dead.attempts) == ("dead", "permanent", 1)
    assert await store.job_counts() == {"ready": 0, "running": 1, "done": 0, "dead": 1, "held": 0}


# -- how long due work has waited (extmsg_oldest_ready_job_seconds) ---------------------------
async def test_the_oldest_due_ready_job_is_the_one_waiting_longest(store: Store) -> None:
    now = time.time()
    assert await store.oldest_due_at(now) is None  # nothing waits
    await store.intake([Intake(job=job("later", delay=600))])
    assert await store.oldest_due_at(now) is None  # not due yet: it does not wait
    before = time.time()
    a1, a2, b1 = await enqueue(store, "a", "a", "b")
    after = time.time()
    due = await store.oldest_due_at(after + 5)
    assert due is not None
    assert before - 1 <= due <= after
    # the running head no longer waits, the job behind it does (since it became due)
    [head_a, head_b] = await store.claim_jobs(10, 30)
    assert {head_a.id, head_b.id} == {a1, b1}
    assert await store.oldest_due_at(after + 5) == due
    # a job retrying later waits again only once it is due
    await store.complete_job(a1)
    await store.complete_job(b1)
    [head] = await store.claim_jobs(10, 30)
    assert head.id == a2
    await store.reschedule_job(a2, after + 100, "Unblu answered 503")
    assert await store.oldest_due_at(after + 5) is None
    assert await store.oldest_due_at(after + 130) == after + 100


# -- lanes held by a dead letter --------------------------------------------------------------
async def _hold(store: Store, lane: str = "a") -> int:
    """The lane's head runs out of retries: a dead letter holding the lane; its id."""
    [head] = [j for j in await store.claim_jobs(10, 30) if j.lane == lane]
    await store.bury_job(head.id, "Unblu answered 503 (gave up after 3 attempts)", hold=True)
    return head.id


async def test_a_dead_letter_that_holds_its_lane_keeps_later_jobs_waiting(store: Store) -> None:
    a1, a2, b1 = await enqueue(store, "a", "a", "b")
    assert await _hold(store) == a1
    await store.complete_job(b1)
    assert await store.claim_jobs(10, 30) == []  # a2 waits behind the dead a1
    a3, b2 = await enqueue(store, "a", "b")  # new work of a held lane waits too
    assert [j.id for j in await store.claim_jobs(10, 30)] == [b2]
    dead = await store.get_job(a1)
    assert dead is not None
    assert (dead.state, dead.holds_lane) == ("dead", True)
    counts = await store.job_counts()
    assert (counts["dead"], counts["held"], counts["ready"]) == (1, 1, 2)

    # retried by hand, it runs first, then the lane goes on in order
    assert await store.retry_job(a1)
    assert (await store.job_counts())["held"] == 0
    assert [j.id for j in await store.claim_jobs(10, 30)] == [a1]
    assert await store.claim_jobs(10, 30) == []
    for done, following in ((a1, a2), (a2, a3)):
        await store.complete_job(done)
        assert [j.id for j in await store.claim_jobs(10, 30)] == [following]


async def test_skipping_a_held_lane_lets_it_go_on_and_keeps_the_dead_letter(
    store: Store,
) -> None:
    a1, a2 = await enqueue(store, "a", "a")
    await _hold(store)
    assert not await store.release_lane(a2)  # not dead
    assert await store.release_lane(a1)
    assert not await store.release_lane(a1)  # released already
    assert [j.id for j in await store.claim_jobs(10, 30)] == [a2]
    dead = await store.get_job(a1)
    assert dead is not None
    assert (dead.state, dead.holds_lane) == ("dead", False)
    await store.complete_job(a2)
    assert await store.retry_job(a1)  # still retryable: now it lands after a2
    assert [j.id for j in await store.claim_jobs(10, 30)] == [a1]


async def test_purging_a_holding_dead_letter_releases_its_lane(store: Store) -> None:
    _a1, a2 = await enqueue(store, "a", "a")
    await _hold(store)
    assert await store.purge_jobs(["dead"], older_than=3600) == 0
    assert await store.claim_jobs(10, 30) == []
    assert await store.purge_jobs(["dead"]) == 1
    assert [j.id for j in await store.claim_jobs(10, 30)] == [a2]
    assert (await store.job_counts())["held"] == 0


async def test_an_older_dead_letter_retried_in_a_held_lane_runs_before_the_holder(
    store: Store,
) -> None:
    a1, a2, a3 = await enqueue(store, "a", "a", "a")
    await store.claim_jobs(10, 30)
    await store.bury_job(a1, "refused for good")  # permanent: the lane goes on
    [second] = await store.claim_jobs(10, 30)
    assert second.id == a2
    await store.bury_job(a2, "gave up after 3 attempts", hold=True)
    assert await store.retry_job(a1)
    assert [j.id for j in await store.claim_jobs(10, 30)] == [a1]  # it came first
    await store.complete_job(a1)
    assert await store.claim_jobs(10, 30) == []  # a2 still holds a3
    assert await store.retry_job(a2)
    assert [j.id for j in await store.claim_jobs(10, 30)] == [a2]
    await store.complete_job(a2)
    assert [j.id for j in await store.claim_jobs(10, 30)] == [a3]


async def test_a_retried_dead_letter_waits_for_the_job_running_in_its_lane(store: Store) -> None:
    a1, a2 = await enqueue(store, "a", "a")
    await store.claim_jobs(10, 30)
    await store.bury_job(a1, "refused for good")
    assert [j.id for j in await store.claim_jobs(10, 30)] == [a2]
    assert await store.retry_job(a1)
    assert await store.claim_jobs(10, 30) == []  # a2 runs: one job per lane at a time
    await store.complete_job(a2)
    assert [j.id for j in await store.claim_jobs(10, 30)] == [a1]


async def test_an_expired_lease_is_claimed_again_and_counts_an_attempt(
    store: Store,
) -> None:
    [a1] = await enqueue(store, "a")
    await store.claim_jobs(1, 0.05)
    assert await store.claim_jobs(1, 30) == []
    await asyncio.sleep(0.1)
    [again] = await store.claim_jobs(1, 30)
    assert again.id == a1
    assert again.attempts == 1
    assert "lease expired" in (again.last_error or "")


async def test_renewing_a_lease_keeps_the_job(store: Store) -> None:
    a1, b1 = await enqueue(store, "a", "b")
    await store.claim_jobs(2, 0.1)
    assert await store.renew_lease([a1], 30) == [a1]
    await asyncio.sleep(0.15)
    assert [j.id for j in await store.claim_jobs(5, 30)] == [b1]  # only b1's lease ran out
    await store.complete_job(a1)
    assert await store.renew_lease([a1], 30) == []  # not running any more
    assert await store.renew_lease([], 30) == []


async def test_releasing_counts_no_attempt(store: Store) -> None:
    [a1] = await enqueue(store, "a")
    await store.claim_jobs(1, 30)
    await store.release_jobs([a1])
    released = await store.get_job(a1)
    assert released is not None
    assert (released.state, released.attempts, released.lease_until) == ("ready", 0, None)
    assert [j.id for j in await store.claim_jobs(1, 30)] == [a1]


async def test_only_a_running_job_can_be_completed(store: Store) -> None:
    [a1] = await enqueue(store, "a")
    await store.complete_job(a1)  # never claimed: nothing happens
    job_row = await store.get_job(a1)
    assert job_row is not None
    assert job_row.state == "ready"


# -- maintenance ------------------------------------------------------------------------------
async def test_retry_only_dead_jobs(store: Store) -> None:
    a1, b1 = await enqueue(store, "a", "b")
    await store.claim_jobs(2, 30)
    await store.bury_job(a1, "no")
    assert not await store.retry_job(b1)  # running
    assert not await store.retry_job(999)
    assert await store.retry_job(a1)
    assert not await store.retry_job(a1)  # ready now


async def test_purge(store: Store) -> None:
    a1, b1, c1 = await enqueue(store, "a", "b", "c")
    await store.claim_jobs(3, 30)
    await store.complete_job(a1)
    await store.bury_job(b1, "no")
    assert await store.purge_jobs(["done"], older_than=3600) == 0
    assert await store.purge_jobs(["done"]) == 1
    assert await store.purge_jobs(["dead"]) == 1
    with pytest.raises(ValueError, match="only done or dead"):
        await store.purge_jobs(["running"])
    assert [j.id for j in await store.list_jobs()] == [c1]


async def test_migrations_run_once_and_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    store = SqliteStore(path)
    await store.open()
    assert await store.schema_version() == MIGRATIONS[-1].version
    rows = await store._all("SELECT version, description, applied_at FROM schema_version")
    assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]
    await store.intake([Intake(message=message(1), job=job("a"))])
    await store.close()

    again = SqliteStore(path)
    await again.open()  # would fail on CREATE TABLE if a migration ran twice
    assert await again._all("SELECT version, description, applied_at FROM schema_version") == rows
    assert await count(again, "messages") == 1
    await again.close()


async def test_two_stores_opening_one_new_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "race.sqlite3"
    stores = [SqliteStore(path) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    for s in stores:
        assert await s.schema_version() == MIGRATIONS[-1].version
        await s.close()


async def test_an_older_schema_is_upgraded_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import extmsg.store.sqlite as sqlite_module

    path = tmp_path / "old.sqlite3"
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", MIGRATIONS[:2])
    old = SqliteStore(path)
    await old.open()
    assert await old.schema_version() == 2
    await old.close()
    # jobs as version 2 wrote them: lane a's first is done, two wait behind it; b has one
    db = sqlite3.connect(path, isolation_level=None)
    for lane, state in (("a", "done"), ("a", "ready"), ("a", "ready"), ("b", "ready")):
        db.execute(
            "INSERT INTO jobs (kind, lane, payload, state, attempts, next_at, created_at,"
            " updated_at) VALUES ('k', ?, x'', ?, 0, 0, 0, 0)",
            (lane, state),
        )
    db.close()

    monkeypatch.setattr(sqlite_module, "MIGRATIONS", MIGRATIONS)
    new = SqliteStore(path)
    await new.open()
    assert await new.schema_version() == MIGRATIONS[-1].version
    # the upgrade found each lane's head: one job per lane, lane a's oldest unfinished
    claimed = await new.claim_jobs(5, 30)
    assert [(j.id, j.lane) for j in claimed] == [(2, "a"), (4, "b")]
    await new.complete_job(2)
    assert [j.id for j in await new.claim_jobs(5, 30)] == [3]
    await new.close()


# -- parts of split messages and published media ------------------------------------------------
async def test_parts_are_recorded_once_and_find_their_message(store: Store) -> None:
    out = NewMessage(id="o1", channel="sms", direction="out", thread="t", unblu_message_id="u1")
    await store.intake([Intake(message=out)])
    assert await store.sent_parts("o1") == {}
    await store.record_part("o1", "sms", 0, "SM-a")
    await store.record_part("o1", "sms", 1, "SM-b")
    await store.record_part("o1", "sms", 1, "SM-b-again")  # a repeat changes nothing
    assert await store.sent_parts("o1") == {0: "SM-a", 1: "SM-b"}
    row = await store.get_message("o1")
    assert row is not None
    assert row.provider_message_id == "SM-a"
    found = await store.find_message_by_part("sms", "SM-b")
    assert found is not None
    assert found.id == "o1"
    assert await store.find_message_by_part("other", "SM-b") is None


async def _state(store: Store, message_id: str) -> MessageState:
    row = await store.get_message(message_id)
    assert row is not None
    return row.state


async def _two_parts(store: Store) -> None:
    out = NewMessage(id="o1", channel="sms", direction="out", thread="t", unblu_message_id="u1")
    await store.intake([Intake(message=out)])
    await store.record_part("o1", "sms", 0, "SM-a")


async def test_a_parts_status_waits_until_every_part_is_sent(store: Store) -> None:
    await _two_parts(store)
    # Part one delivered while part two is still to send: kept on the part only.
    assert await store.apply_status("o1", "SM-a", MessageState.DELIVERED) == StatusOutcome(
        applied=True
    )
    assert await _state(store, "o1") == MessageState.PENDING
    # A status for a part not recorded yet, or naming none, cannot be placed: later.
    assert not (await store.apply_status("o1", "SM-b", MessageState.DELIVERED)).applied
    assert not (await store.apply_status("o1", None, MessageState.DELIVERED)).applied
    assert await _state(store, "o1") == MessageState.PENDING

    await store.record_part("o1", "sms", 1, "SM-b")
    done = await store.complete_message("o1")
    assert done is not None
    assert done.state == MessageState.SENT  # part two is only sent
    assert await store.complete_message("o1") is None  # a second completion moves nothing
    assert await store.apply_status("o1", "SM-b", MessageState.READ) == StatusOutcome(
        applied=True, state=MessageState.DELIVERED
    )
    assert await store.apply_status("o1", "SM-b", MessageState.DELIVERED) == StatusOutcome(
        applied=True
    )
    assert await store.apply_status("o1", "SM-a", MessageState.READ) == StatusOutcome(
        applied=True, state=MessageState.READ
    )
    assert await _state(store, "o1") == MessageState.READ


async def test_statuses_of_every_part_before_the_last_record_settle_on_completion(
    store: Store,
) -> None:
    await _two_parts(store)
    await store.apply_status("o1", "SM-a", MessageState.DELIVERED)
    await store.record_part("o1", "sms", 1, "SM-b")
    await store.apply_status("o1", "SM-b", MessageState.READ)
    assert await _state(store, "o1") == MessageState.PENDING
    done = await store.complete_message("o1")
    assert done is not None
    assert done.state == MessageState.DELIVERED


async def test_a_status_before_any_part_is_recorded_records_the_first(store: Store) -> None:
    """Nothing recorded, so the provider's only part of the message is its first: the
    status's id is recorded as part 0 (a retry then does not send it again)."""
    out = NewMessage(id="o1", channel="sms", direction="out", thread="t", unblu_message_id="u1")
    await store.intake([Intake(message=out)])
    assert await store.apply_status("o1", "SM-a", MessageState.DELIVERED) == StatusOutcome(
        applied=True
    )
    assert await store.sent_parts("o1") == {0: "SM-a"}
    row = await store.get_message("o1")
    assert row is not None
    assert (row.state, row.provider_message_id) == (MessageState.PENDING, "SM-a")
    await store.record_part("o1", "sms", 0, "SM-a")  # the attempt's own record: no change
    assert await store.sent_parts("o1") == {0: "SM-a"}
    # With part 0 recorded, an unknown id is not taken for part 1 (it may be a double).
    assert not (await store.apply_status("o1", "SM-double", MessageState.DELIVERED)).applied
    assert await store.sent_parts("o1") == {0: "SM-a"}
    done = await store.complete_message("o1")
    assert done is not None
    assert done.state == MessageState.DELIVERED


async def test_a_failed_part_fails_its_message_at_once(store: Store) -> None:
    await _two_parts(store)
    assert await store.apply_status(
        "o1", "SM-a", MessageState.FAILED, "Unreachable destination handset"
    ) == StatusOutcome(applied=True, state=MessageState.FAILED)
    row = await store.get_message("o1")
    assert row is not None
    assert (row.state, row.error) == (MessageState.FAILED, "Unreachable destination handset")
    await store.record_part("o1", "sms", 1, "SM-b")
    assert await store.complete_message("o1") is None
    assert await store.apply_status("o1", "SM-b", MessageState.DELIVERED) == StatusOutcome(
        applied=True
    )
    assert await _state(store, "o1") == MessageState.FAILED


async def test_a_status_naming_no_part_of_a_sent_message_applies_to_the_message(
    store: Store,
) -> None:
    """A status by our reference alone (or an id of no recorded part), once every part went
    out: the whole message's, as for a message sent in one piece."""
    await _two_parts(store)
    await store.complete_message("o1")
    assert await store.apply_status("o1", None, MessageState.DELIVERED) == StatusOutcome(
        applied=True, state=MessageState.DELIVERED
    )
    assert await store.apply_status("o1", "SM-x", MessageState.READ) == StatusOutcome(
        applied=True, state=MessageState.READ
    )


async def test_the_last_part_if_the_first_gives_the_message_its_provider_id(store: Store) -> None:
    """A message sent in one piece: its completion records the part's id on the message (a
    reply quotes it) with the new state, and also when the state stays."""
    for n, failed in ((1, False), (2, True)):
        out = NewMessage(
            id=f"o{n}", channel="sms", direction="out", thread="t", unblu_message_id=f"u{n}"
        )
        await store.intake([Intake(message=out)])
        if failed:
            await store.advance_state(f"o{n}", MessageState.FAILED, "refused")
        last = PartSent(channel="sms", part=0, provider_message_id=f"SM-{n}")
        settled = await store.complete_message(f"o{n}", last=last)
        row = await store.get_message(f"o{n}")
        assert row is not None
        assert (row.provider_message_id, row.unblu_message_id) == (f"SM-{n}", f"u{n}")
        assert await store.sent_parts(f"o{n}") == {0: f"SM-{n}"}
        if failed:
            assert settled is None
            assert (row.state, row.error) == (MessageState.FAILED, "refused")
        else:
            assert settled == row
            assert row.state == MessageState.SENT
        assert await store.find_message("sms", "out", provider_message_id=f"SM-{n}") == row


def test_a_message_is_as_far_as_its_least_advanced_part() -> None:
    sent, delivered, read, failed = (
        MessageState.SENT,
        MessageState.DELIVERED,
        MessageState.READ,
        MessageState.FAILED,
    )
    assert parts_state([]) == sent
    assert parts_state([read, delivered]) == delivered
    assert parts_state([read, read]) == read
    assert parts_state([read, failed, sent]) == failed
    pending = MessageState.PENDING
    assert status_target(pending, delivered, [delivered, sent]) == pending
    assert status_target(pending, failed, [failed, sent]) == failed
    assert status_target(pending, delivered, None) is None
    assert status_target(sent, delivered, [delivered, sent]) == sent
    assert status_target(sent, delivered, [delivered, delivered]) == delivered
    assert status_target(read, delivered, [delivered, delivered]) == read
    assert status_target(failed, read, None) == failed


async def test_media_expires_and_is_purged(store: Store) -> None:
    now = time.time()
    await store.put_media(
        MediaRow(id="m1", channel="sms", file_name="a.pdf", mime_type="application/pdf",
                 data=b"%PDF", expires_at=now + 60)
    )  # fmt: skip
    await store.put_media(
        MediaRow(id="m2", channel="sms", file_name="b.pdf", mime_type="application/pdf",
                 data=b"%PDF", expires_at=now - 1)
    )  # fmt: skip
    got = await store.get_media("m1")
    assert got is not None
    assert (got.data, got.mime_type, got.file_name) == (b"%PDF", "application/pdf", "a.pdf")
    assert await store.get_media("m2") is None
    assert await store.purge_media(now) == 1
    assert await store.get_media("m1") is not None


async def test_thread_meta_merges_and_forgets(store: Store) -> None:
    assert await store.thread_meta("mail", "t1") == {}
    await store.put_thread_meta("mail", "t1", {"subject": "Opening hours", "last": "<a@x>"})
    await store.put_thread_meta("mail", "t1", {"last": "<b@x>"})
    await store.put_thread_meta("mail", "t2", {"subject": "Other"})
    assert await store.thread_meta("mail", "t1") == {"subject": "Opening hours", "last": "<b@x>"}
    await store.put_thread_meta("mail", "t1", {"subject": ""})
    assert await store.thread_meta("mail", "t1") == {"last": "<b@x>"}


async def test_update_message_moves_the_state_forward_only(store: Store) -> None:
    msg = NewMessage(id="i1", channel="sms", direction="in", thread="t", provider_message_id="p1")
    await store.intake([Intake(message=msg)])
    await store.update_message("i1", unblu_message_id="u1", state=MessageState.SENT)
    row = await store.get_message("i1")
    assert row is not None
    assert (row.unblu_message_id, row.state) == ("u1", MessageState.SENT)
    await store.advance_state("i1", MessageState.READ)
    await store.update_message("i1", conversation_id="c1", state=MessageState.SENT)
    row = await store.get_message("i1")
    assert row is not None
    assert (row.conversation_id, row.state) == ("c1", MessageState.READ)
    await store.update_message("i1", conversation_id="c2")
    row = await store.get_message("i1")
    assert row is not None
    assert (row.conversation_id, row.state) == ("c2", MessageState.READ)
