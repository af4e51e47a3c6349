"""The PostgreSQL store as several instances use it: concurrent claimers on separate pools
never run two jobs of a lane at once nor one job twice, lanes stay in order, expired leases are
taken back once, migrations run once; two engines share the lanes; ``extmsg serve`` runs on it.

The single-instance contract (dedup, states, lane rules, leases, purge) is test_store.py, which
runs on both stores."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from extmsg.config import EngineConfig, parse_config
from extmsg.engine import Engine
from extmsg.errors import ConfigError, HandledError
from extmsg.models import MessageState
from extmsg.store import open_store
from extmsg.store import postgres as postgres_module
from extmsg.store.base import ChannelRow, Intake, Job, NewJob, NewMessage
from extmsg.store.migrations import MIGRATIONS, POSTGRES_MIGRATIONS
from extmsg.store.postgres import PostgresStore, describe_dsn

from . import pg
from .helpers import ServeProcess, free_port
from .test_engine import classify, until, work


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async with pg.fresh_schema() as name:
        yield name


@pytest.fixture
async def instances(schema: str) -> AsyncIterator[list[PostgresStore]]:
    """Two stores on one schema, each with its own pool: two extmsg instances."""
    stores = [pg.store_in(schema), pg.store_in(schema)]
    for s in stores:
        await s.open()
    yield stores
    for s in stores:
        await s.close()


async def enqueue(store: PostgresStore, lanes: int, per_lane: int) -> dict[str, list[int]]:
    """``per_lane`` jobs in each of ``lanes`` lanes, interleaved; their ids per lane."""
    await store.intake(
        [
            Intake(job=NewJob(kind="k", lane=f"lane{n}", payload=str(i).encode()))
            for i in range(per_lane)
            for n in range(lanes)
        ]
    )
    ids: dict[str, list[int]] = defaultdict(list)
    for job in await store.list_jobs(("ready",), lanes * per_lane):
        ids[job.lane].append(job.id)
    return ids


# -- concurrent claiming ----------------------------------------------------------------------
async def test_concurrent_claimers_keep_lanes_exclusive_ordered_and_claim_once(
    instances: list[PostgresStore],
) -> None:
    a, b = instances
    # Without the backstop index, so the lane locks alone are what is tested.
    async with a._p.acquire() as conn:
        await conn.execute("DROP INDEX jobs_running_lane")
        await conn.execute("CREATE INDEX jobs_running_lane ON jobs (lane) WHERE state = 'running'")
    lanes = await enqueue(a, 50, 20)
    total = sum(len(ids) for ids in lanes.values())
    lane_of = {i: lane for lane, ids in lanes.items() for i in ids}

    held: set[int] = set()
    busy: set[str] = set()
    finished: set[int] = set()
    claims: dict[str, list[int]] = defaultdict(list)
    problems: list[str] = []
    claimed_by: dict[int, int] = defaultdict(int)
    rng = random.Random(5)

    async def run(store: PostgresStore, job: Job) -> None:
        await asyncio.sleep(rng.random() * 0.002)
        roll = rng.random()
        # Bookkeeping first, then the store: once the store commits, another claimer may take
        # the lane's next job.
        held.discard(job.id)
        busy.discard(job.lane)
        if roll < 0.8:
            finished.add(job.id)
            await store.complete_job(job.id)
        elif roll < 0.88:
            await store.reschedule_job(job.id, time.time(), "again")
        elif roll < 0.95:
            await store.release_jobs([job.id])
        else:
            finished.add(job.id)
            await store.bury_job(job.id, "dead")

    async def claimer(store: PostgresStore, who: int) -> None:
        running: set[asyncio.Task[None]] = set()
        while len(finished) < total:
            jobs = await store.claim_jobs(rng.randint(1, 8), 30)
            for job in jobs:
                claimed_by[who] += 1
                if job.id in held:
                    problems.append(f"job {job.id} claimed while already held")
                if job.lane in busy:
                    problems.append(f"{job.lane}: job {job.id} claimed while another ran")
                earlier = [i for i in lanes[job.lane] if i < job.id and i not in finished]
                if earlier:
                    problems.append(f"{job.lane}: job {job.id} claimed before {earlier}")
                held.add(job.id)
                busy.add(job.lane)
                claims[job.lane].append(job.id)
                task = asyncio.create_task(run(store, job))
                running.add(task)
                task.add_done_callback(running.discard)
            if not jobs:
                await asyncio.sleep(0.001)
        await asyncio.gather(*running)

    async with asyncio.timeout(30):
        await asyncio.gather(claimer(a, 0), claimer(a, 1), claimer(b, 2), claimer(b, 3))

    assert problems == []
    assert finished == set(lane_of)
    for lane, ids in lanes.items():
        first_claims = list(dict.fromkeys(claims[lane]))
        assert first_claims == ids, lane
    counts = await a.job_counts()
    assert counts["ready"] == counts["running"] == 0
    assert counts["done"] + counts["dead"] == total
    assert all(claimed_by[who] > 0 for who in range(4)), claimed_by


async def test_lanes_stay_exclusive_while_intakes_and_hand_retries_interleave(
    instances: list[PostgresStore],
) -> None:
    """Concurrent intakes commit out of id order and a retried dead letter becomes its lane's
    oldest job again: the head moves while claimers look, and still no lane runs two jobs.
    Half the dead letters hold their lanes until retried: nothing newer of the lane runs
    meanwhile."""
    a, b = instances
    async with a._p.acquire() as conn:
        await conn.execute("DROP INDEX jobs_running_lane")
        await conn.execute("CREATE INDEX jobs_running_lane ON jobs (lane) WHERE state = 'running'")
    rng = random.Random(9)
    held: set[int] = set()
    busy: set[str] = set()
    buried: list[int] = []
    retried: set[int] = set()
    retrying: list[int] = []
    holding: dict[str, int] = {}  # lane → its dead letter holding it
    problems: list[str] = []
    intakes_done = asyncio.Event()

    async def intaker(store: PostgresStore) -> None:
        for _ in range(25):
            batch = [
                Intake(job=NewJob(kind="k", lane=f"lane{rng.randrange(3)}", payload=b"{}"))
                for _ in range(rng.randint(1, 6))
            ]
            await store.intake(batch)
            await asyncio.sleep(rng.random() * 0.002)

    async def run(store: PostgresStore, job: Job) -> None:
        await asyncio.sleep(rng.random() * 0.002)
        held.discard(job.id)
        busy.discard(job.lane)
        if job.id not in retried and rng.random() < 0.25:
            hold = rng.random() < 0.5
            if hold:
                holding[job.lane] = job.id
            await store.bury_job(job.id, "dead", hold=hold)
            buried.append(job.id)
        else:
            await store.complete_job(job.id)

    async def idle() -> bool:
        counts = await a.job_counts()
        settled = intakes_done.is_set() and not buried and not retrying
        return settled and counts["ready"] + counts["running"] == 0

    async def claimer(store: PostgresStore) -> None:
        running: set[asyncio.Task[None]] = set()
        while running or not await idle():
            for job in await store.claim_jobs(rng.randint(1, 6), 30):
                if job.id in held:
                    problems.append(f"job {job.id} claimed while already held")
                if job.lane in busy:
                    problems.append(f"{job.lane}: job {job.id} claimed while another ran")
                holder = holding.get(job.lane)
                if holder is not None and job.id > holder:
                    problems.append(f"{job.lane}: job {job.id} claimed while {holder} held it")
                held.add(job.id)
                busy.add(job.lane)
                task = asyncio.create_task(run(store, job))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.sleep(0.001)

    async def retrier() -> None:
        while not await idle():
            if buried:
                job_id = buried.pop(0)
                retried.add(job_id)
                retrying.append(job_id)
                for lane, holder in list(holding.items()):
                    if holder == job_id:
                        del holding[lane]
                assert await rng.choice((a, b)).retry_job(job_id)
                retrying.remove(job_id)
            await asyncio.sleep(0.002)

    async def intakes() -> None:
        await asyncio.gather(*(intaker(s) for s in (a, a, b, b)))
        intakes_done.set()

    async with asyncio.timeout(90):  # seconds on a quiet machine; generous for a loaded one
        await asyncio.gather(intakes(), retrier(), *(claimer(s) for s in (a, a, b, b)))

    assert problems == []
    assert retried, "no dead letter was retried"
    counts = await a.job_counts()
    assert counts == {"ready": 0, "running": 0, "done": counts["done"], "dead": 0, "held": 0}


async def test_an_expired_lease_is_taken_back_once_by_concurrent_claimers(
    instances: list[PostgresStore],
) -> None:
    a, b = instances
    lanes = await enqueue(a, 20, 1)
    assert len(await a.claim_jobs(20, 0.05)) == 20  # then this instance "dies"
    await asyncio.sleep(0.1)
    claimed: list[Job] = []
    for _ in range(10):  # claimers that lose a race get less now, and the rest next time
        batches = await asyncio.gather(*(s.claim_jobs(5, 30) for s in (a, b, a, b, a, b)))
        claimed += [job for batch in batches for job in batch]
        if len(claimed) >= 20:
            break
    ids = sorted(job.id for job in claimed)
    assert ids == sorted(i for lane in lanes.values() for i in lane)  # each once
    for job in claimed:
        assert (job.attempts, job.state) == (1, "running")  # the lost attempt counted once
        assert "lease expired" in (job.last_error or "")


async def test_a_retried_dead_letter_waits_for_the_running_job_of_its_lane(
    instances: list[PostgresStore],
) -> None:
    a, b = instances
    [[a1, a2]] = (await enqueue(a, 1, 2)).values()
    [first] = await a.claim_jobs(5, 30)
    await a.bury_job(first.id, "permanent")
    [second] = await b.claim_jobs(5, 30)
    assert (first.id, second.id) == (a1, a2)
    assert await a.retry_job(a1)  # the oldest unfinished job again, but a2 runs
    assert await b.claim_jobs(5, 30) == []
    await b.complete_job(a2)
    assert [j.id for j in await a.claim_jobs(5, 30)] == [a1]


async def test_a_lane_another_claimer_is_claiming_is_passed_over(
    instances: list[PostgresStore],
) -> None:
    a, b = instances
    [[a1], [b1]] = (await enqueue(a, 2, 1)).values()
    async with b._p.acquire() as conn, conn.transaction():
        # what a claimer holds between finding lane0's head and committing its claim
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(current_schema() || '/' || 'lane0'))",
            postgres_module._LANE_LOCK,
        )
        assert [j.id for j in await a.claim_jobs(5, 30)] == [b1]
    assert [j.id for j in await a.claim_jobs(5, 30)] == [a1]


async def test_a_job_committed_late_with_an_older_id_waits_for_the_running_one(
    instances: list[PostgresStore],
) -> None:
    """Intakes of two instances commit out of id order: the lane's head changes under a
    running job, and the older job waits for it instead of running beside it."""
    a, b = instances
    async with b._p.acquire() as conn:
        slow = conn.transaction()
        await slow.start()
        late = await conn.fetchval(
            "INSERT INTO jobs (kind, lane, payload, state, next_at, created_at, updated_at)"
            " VALUES ('k', 'lane0', '', 'ready', 0, 0, 0) RETURNING id"
        )
        [[early]] = (await enqueue(a, 1, 1)).values()
        assert late < early
        assert [j.id for j in await a.claim_jobs(5, 30)] == [early]
        await slow.commit()
    assert await a.claim_jobs(5, 30) == []  # lane0's oldest job now, but lane0 is busy
    await a.complete_job(early)
    assert [j.id for j in await b.claim_jobs(5, 30)] == [late]


async def test_the_database_refuses_a_second_running_job_in_a_lane(
    instances: list[PostgresStore],
) -> None:
    a, _ = instances
    [[a1, a2]] = (await enqueue(a, 1, 2)).values()
    await a.claim_jobs(5, 30)
    with pytest.raises(asyncpg.UniqueViolationError):
        await a._execute("UPDATE jobs SET state = 'running' WHERE id = $1", a2)
    assert [j.id for j in await a.list_jobs(("running",))] == [a1]


async def test_intakes_of_two_instances_dedup_against_each_other(
    instances: list[PostgresStore],
) -> None:
    from .test_store import job, message

    a, b = instances
    batch = [Intake(message=message(i), job=job(f"lane{i % 5}")) for i in range(200)]
    results = await asyncio.gather(a.intake(batch), b.intake(list(reversed(batch))))
    accepted = [r.accepted for r in results[0]] + [r.accepted for r in results[1]]
    assert accepted.count(True) == 200
    assert {r.message_id for rs in results for r in rs} == {f"m{i}" for i in range(200)}
    assert (await a.job_counts())["ready"] == 200


async def test_an_intake_that_deadlocked_is_written_again(
    instances: list[PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    from .test_store import job, message

    a, _ = instances
    real = postgres_module._intake
    calls: list[int] = []

    async def deadlocking(conn: Any, items: Any, now: float) -> Any:
        calls.append(len(items))
        results = await real(conn, items, now)
        if len(calls) == 1:  # PostgreSQL picked this transaction to break a deadlock
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        return results

    monkeypatch.setattr(postgres_module, "_intake", deadlocking)
    results = await a.intake([Intake(message=message(1), job=job("a"))])
    assert calls == [1, 1]
    assert [(r.accepted, r.message_id) for r in results] == [(True, "m1")]
    assert await a.job_counts() == {"ready": 1, "running": 0, "done": 0, "dead": 0, "held": 0}


async def test_statuses_racing_the_last_part_of_a_message_are_never_lost(
    instances: list[PostgresStore],
) -> None:
    """Instance a records a message's last part and completes it while instance b applies
    every part's delivery report: however they interleave, the message ends delivered."""
    a, b = instances
    rounds = 60
    await a.intake(
        [
            Intake(message=NewMessage(id=f"o{n}", channel="sms", direction="out", thread="t"))
            for n in range(rounds)
        ]
    )
    for n in range(rounds):
        await a.record_part(f"o{n}", "sms", 0, f"SM-{n}-a")
        await a.record_part(f"o{n}", "sms", 1, f"SM-{n}-b")

    async def report(n: int, part: str) -> None:
        await asyncio.sleep(random.random() / 1000)
        await b.apply_status(f"o{n}", f"SM-{n}-{part}", MessageState.DELIVERED)

    async def complete(n: int) -> None:
        await asyncio.sleep(random.random() / 1000)
        await a.complete_message(f"o{n}")

    await asyncio.gather(
        *(step for n in range(rounds) for step in (report(n, "a"), report(n, "b"), complete(n)))
    )
    states = [await a.get_message(f"o{n}") for n in range(rounds)]
    assert [r.state if r else None for r in states] == [MessageState.DELIVERED] * rounds


async def test_a_first_part_recorded_while_its_status_arrives_is_recorded_once(
    instances: list[PostgresStore],
) -> None:
    """Instance a records part 0 of each message as its status reaches instance b, which may
    record it from the status: no deadlock, one part 0 each, the message's id is the part's."""
    a, b = instances
    rounds = 60
    await a.intake(
        [
            Intake(message=NewMessage(id=f"o{n}", channel="sms", direction="out", thread="t"))
            for n in range(rounds)
        ]
    )

    async def record(n: int) -> None:
        await asyncio.sleep(random.random() / 1000)
        await a.record_part(f"o{n}", "sms", 0, f"SM-{n}")

    async def report(n: int) -> None:
        await asyncio.sleep(random.random() / 1000)
        assert (await b.apply_status(f"o{n}", f"SM-{n}", MessageState.DELIVERED)).applied

    await asyncio.gather(*(step for n in range(rounds) for step in (record(n), report(n))))
    for n in range(rounds):
        assert await a.sent_parts(f"o{n}") == {0: f"SM-{n}"}
        row = await a.get_message(f"o{n}")
        assert row is not None
        assert row.provider_message_id == f"SM-{n}"


# -- migrations -------------------------------------------------------------------------------
async def test_migrations_run_once_when_instances_start_together(schema: str) -> None:
    stores = [pg.store_in(schema, min_size=1, max_size=2) for _ in range(5)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        for s in stores:
            assert await s.schema_version() == POSTGRES_MIGRATIONS[-1].version
        rows = await stores[0]._fetch("SELECT version, description FROM schema_version")
        assert [tuple(r) for r in rows] == [(m.version, m.description) for m in POSTGRES_MIGRATIONS]
    finally:
        for s in stores:
            await s.close()
    again = pg.store_in(schema)
    await again.open()  # would fail on CREATE TABLE if a migration ran twice
    assert await again.schema_version() == POSTGRES_MIGRATIONS[-1].version
    await again.close()


async def test_an_older_schema_is_upgraded_in_place(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_module, "POSTGRES_MIGRATIONS", POSTGRES_MIGRATIONS[:1])
    old = pg.store_in(schema)
    await old.open()
    assert await old.schema_version() == 1
    await old.upsert_channel(ChannelRow(name="sms", messenger="sms_twilio"))
    await old.close()

    monkeypatch.setattr(postgres_module, "POSTGRES_MIGRATIONS", POSTGRES_MIGRATIONS)
    new = pg.store_in(schema)
    await new.open()
    try:
        assert await new.schema_version() == POSTGRES_MIGRATIONS[-1].version
        assert [c.name for c in await new.list_channels()] == ["sms"]
        await new.intake([work("a", n=1)])
        assert [j.lane for j in await new.claim_jobs(5, 30)] == ["a"]
    finally:
        await new.close()


def test_indexes_built_concurrently_are_postgresql_only() -> None:
    # SQLite's migrations run with the server stopped: an index there belongs in the SQL.
    assert not [m.version for m in MIGRATIONS if m.indexes]
    assert [m.version for m in POSTGRES_MIGRATIONS if m.indexes] == [6, 8]


# Migration 8 indexes messages, which an older instance writes to all the while.
_BEFORE_8 = POSTGRES_MIGRATIONS[:7]


async def _index_state(conn: asyncpg.Connection, schema: str, name: str) -> bool | None:
    """Whether the index is valid; None when there is none."""
    valid: bool | None = await conn.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", f"{schema}.{name}"
    )
    return valid


async def _building_on_messages(conn: asyncpg.Connection, schema: str) -> bool:
    """An index build on messages has begun: a concurrent one has made its (INVALID) index, a
    plain one waits for its lock on the table."""
    started: bool = await conn.fetchval(
        "SELECT to_regclass($2) IS NOT NULL OR EXISTS (SELECT 1 FROM pg_locks"
        " WHERE relation = to_regclass($1) AND NOT granted)",
        f"{schema}.messages",
        f"{schema}.messages_outbound_thread",
    )
    return started


def _outbound(n: int) -> Intake:
    return Intake(message=NewMessage(id=f"o{n}", channel="sms", direction="out", thread="t"))


@contextlib.asynccontextmanager
async def _write_in_progress(schema: str) -> AsyncIterator[asyncpg.Connection]:
    """A transaction that wrote to messages and has not committed yet: an index build on the
    table waits for it, whether plain or concurrent. Yields a connection of its own to watch
    with (a statement in that transaction would be one more a concurrent build waits out)."""
    conn = await asyncpg.connect(pg.DSN, server_settings={"search_path": schema})
    watch = await asyncpg.connect(pg.DSN, server_settings={"search_path": schema})
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE messages IN ROW EXCLUSIVE MODE")
            yield watch
    finally:
        await watch.close()
        await conn.close()


async def test_an_upgrade_builds_indexes_while_an_older_instance_writes_on(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_module, "POSTGRES_MIGRATIONS", _BEFORE_8)
    old = pg.store_in(schema)
    await old.open()
    monkeypatch.setattr(postgres_module, "POSTGRES_MIGRATIONS", POSTGRES_MIGRATIONS)
    new, later = pg.store_in(schema), pg.store_in(schema)
    try:
        async with _write_in_progress(schema) as watch:
            opening = asyncio.ensure_future(new.open())
            await until(lambda: _building_on_messages(watch, schema), within=10)
            # A plain CREATE INDEX would queue for its lock and hold every writer behind it
            # until the build ends; a concurrent one lets them by.
            await asyncio.wait_for(old.intake([_outbound(1)]), 3)
            # Another upgraded instance starts meanwhile and waits its turn (without holding
            # a snapshot the build would wait for: each would wait on the other).
            opening_later = asyncio.ensure_future(later.open())
            await asyncio.sleep(0.3)
            assert not opening.done()  # the build waits for the write in progress to end
        await asyncio.wait_for(asyncio.gather(opening, opening_later), 30)
        assert await new.schema_version() == POSTGRES_MIGRATIONS[-1].version
        async with new._p.acquire() as conn:
            assert await _index_state(conn, schema, "messages_outbound_thread") is True
        assert await new.get_message("o1") is not None
    finally:
        await later.close()
        await new.close()
        await old.close()


async def test_an_index_build_cut_off_is_finished_on_the_next_start(
    schema: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(postgres_module, "POSTGRES_MIGRATIONS", _BEFORE_8)
    old = pg.store_in(schema)
    await old.open()
    await old.close()
    monkeypatch.setattr(postgres_module, "POSTGRES_MIGRATIONS", POSTGRES_MIGRATIONS)
    cut = pg.store_in(schema)
    async with _write_in_progress(schema) as watch:
        opening = asyncio.ensure_future(cut.open())
        await until(lambda: _building_on_messages(watch, schema), within=10)
        # The instance dies mid-build: its connection is gone, the index stays INVALID.
        await watch.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE relation = to_regclass($1)"
            " AND mode = 'ShareUpdateExclusiveLock' AND granted",
            f"{schema}.messages",
        )
        with pytest.raises((asyncpg.PostgresError, HandledError)):
            await asyncio.wait_for(opening, 10)
    check = await asyncpg.connect(pg.DSN, server_settings={"search_path": schema})
    try:
        assert await _index_state(check, schema, "messages_outbound_thread") is False
        assert await check.fetchval("SELECT MAX(version) FROM schema_version") == 8
        later = pg.store_in(schema)
        with caplog.at_level(logging.INFO, logger="extmsg.store"):
            await later.open()
        await later.close()
        assert "messages_outbound_thread was left unfinished" in caplog.text
        assert await _index_state(check, schema, "messages_outbound_thread") is True
        assert await check.fetchval("SELECT MAX(version) FROM schema_version") == (
            POSTGRES_MIGRATIONS[-1].version
        )
    finally:
        await check.close()


# -- the engine on two instances --------------------------------------------------------------
def engine_on(store: PostgresStore, workers: int) -> Engine:
    config = EngineConfig(
        workers=workers, backoff_initial=0.01, backoff_max=0.02, lease_seconds=5.0
    )
    return Engine(store, config, classify=classify, poll_interval=0.02, rng=random.Random(3))


async def test_two_engines_share_the_lanes_in_order(instances: list[PostgresStore]) -> None:
    a, b = instances
    lanes, per_lane = 20, 25
    seen: dict[str, list[int]] = {f"lane{i}": [] for i in range(lanes)}
    active: dict[str, int] = defaultdict(int)
    overlapping: list[str] = []
    ran_on: dict[int, int] = defaultdict(int)
    rng = random.Random(1)

    def handler(instance: int) -> Callable[[Job], Awaitable[None]]:
        async def handle(job: Job) -> None:
            active[job.lane] += 1
            if active[job.lane] > 1:
                overlapping.append(job.lane)
            await asyncio.sleep(rng.random() * 0.003)
            seen[job.lane].append(json.loads(job.payload)["seq"])
            ran_on[instance] += 1
            active[job.lane] -= 1

        return handle

    engines = [engine_on(a, 8), engine_on(b, 8)]
    for i, engine in enumerate(engines):
        engine.register("work", handler(i))
    order = [lane for lane in seen for _ in range(per_lane)]
    rng.shuffle(order)
    next_seq: dict[str, int] = defaultdict(int)
    items = []
    for lane in order:
        items.append(work(lane, seq=next_seq[lane]))
        next_seq[lane] += 1
    await a.intake(items)

    async def finished() -> bool:
        return (await a.job_counts())["done"] == lanes * per_lane

    for engine in engines:
        await engine.start()
    try:
        await until(finished, within=15)
    finally:
        for engine in engines:
            await engine.stop(1.0)
    assert overlapping == [], "two jobs of one lane ran at once"
    for lane, ran in seen.items():
        assert ran == list(range(per_lane)), lane
    assert ran_on[0] > 0, ran_on
    assert ran_on[1] > 0, ran_on


# -- configuration and serve ------------------------------------------------------------------
def test_the_config_names_the_postgres_store() -> None:
    config = parse_config(
        {"store": {"backend": "postgres", "dsn": "postgresql://u:pw@db.example.com/extmsg"}}, {}
    )
    store = open_store(config)
    assert isinstance(store, PostgresStore)
    assert "pw" not in repr(store)
    with pytest.raises(ConfigError, match=r"store\.dsn: required"):
        parse_config({"store": {"backend": "postgres"}}, {})


def test_dsns_are_described_without_their_password() -> None:
    assert describe_dsn("postgresql://u:secret@db:5433/extmsg") == "u@db:5433/extmsg"
    assert describe_dsn("postgres:///extmsg") == "localhost/extmsg"
    assert describe_dsn("host=db user=u password=secret dbname=x") == "u@db/x"


async def test_an_unreachable_server_is_one_clean_error() -> None:
    store = PostgresStore(f"postgresql://u:secret@127.0.0.1:{free_port()}/x", command_timeout=5)
    with pytest.raises(
        HandledError, match=r"cannot connect to PostgreSQL at u@127\.0\.0\.1"
    ) as exc:
        await store.open()
    assert "secret" not in str(exc.value)
    assert not store.is_open


async def test_a_schema_it_cannot_create_tables_in_is_one_clean_error() -> None:
    await pg.require_postgres()
    store = pg.store_in("t_does_not_exist")
    with pytest.raises(HandledError, match="cannot set up extmsg's tables in PostgreSQL"):
        await store.open()
    assert not store.is_open


SERVE_CONFIG = """
[server]
port = {port}

[store]
backend = "postgres"
dsn = "${{EXTMSG_PG_DSN}}"

[[channels]]
name = "loop"
messenger = "loopback"
webhook_secret = "whsec"
[channels.settings]
token = "tok"
"""


async def test_serve_runs_on_postgres(schema: str, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "extmsg.toml"
    config.write_text(SERVE_CONFIG.format(port=port))
    sep = "&" if "?" in pg.DSN else "?"
    env = {
        "EXTMSG_PLUGINS": "tests.loopback_plugin",
        "EXTMSG_PG_DSN": f"{pg.DSN}{sep}search_path={schema}",
    }
    proc = ServeProcess(config, env=env)
    proc.start()
    try:
        base = f"http://127.0.0.1:{port}"
        await proc.wait_ready(base)
        readyz = f"{proc.admin_url}/readyz"
        async with aiohttp.ClientSession() as session, session.get(readyz) as resp:
            body: dict[str, Any] = await resp.json()
        assert body["checks"]["store"] is True
        assert proc.terminate() == 0
        assert "extmsg stopped" in proc.log()
        assert "Traceback" not in proc.log()
    finally:
        proc.kill()
    conn = await asyncpg.connect(pg.DSN, server_settings={"search_path": schema})
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_version")]
    finally:
        await conn.close()
    assert versions == [m.version for m in POSTGRES_MIGRATIONS]


async def test_serve_without_a_server_stops_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "extmsg.toml"
    config.write_text(SERVE_CONFIG.format(port=free_port()))
    env = {
        "EXTMSG_PLUGINS": "tests.loopback_plugin",
        "EXTMSG_PG_DSN": f"postgresql://u:secret@127.0.0.1:{free_port()}/x",
    }
    proc = ServeProcess(config, env=env)
    proc.start()
    assert proc.proc is not None
    assert proc.proc.wait(30) == 2
    log = proc.log()
    assert "error: cannot connect to PostgreSQL at u@127.0.0.1" in log
    assert "secret" not in log


async def test_a_store_call_sends_no_reset_after_it(schema: str) -> None:
    """A connection going back to the pool is not reset with a statement of its own: the
    store leaves no session state behind, and the reset would double the round trips."""
    store = pg.store_in(schema)
    await store.open()
    try:
        pool = store._p
        queries: list[str] = []
        held = [await pool.acquire() for _ in range(pool.get_size())]
        for conn in held:
            conn.add_query_logger(lambda record: queries.append(record.query))
        for conn in held:
            await pool.release(conn)
        await store.upsert_channel(ChannelRow(name="sms", messenger="sms_twilio"))
        assert await store.get_channel("sms") is not None
        assert queries  # the logger sees the store's statements
        resets = [q for q in queries if "RESET ALL" in q or "advisory_unlock_all" in q]
        assert resets == []
    finally:
        await store.close()
