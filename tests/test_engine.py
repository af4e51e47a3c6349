"""The delivery engine against a real SQLite store: lanes, concurrency, retries, dead letters,
leases (crash and renewal), graceful stop and group-committed intake."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from extmsg import logcontext, sendguard
from extmsg.config import EngineConfig
from extmsg.engine import Engine, Requests
from extmsg.errors import NotYet, PermanentError, RetryableError
from extmsg.metrics import Metrics
from extmsg.models import ErrorVerdict
from extmsg.store.base import Intake, IntakeResult, Job, NewJob, NewMessage
from extmsg.store.sqlite import SqliteStore
from extmsg.testing.helpers import loop_stalls


class CountingStore(SqliteStore):
    """A real SQLite store that counts its intake transactions."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.intake_calls = 0

    async def intake(self, items: Sequence[Intake]) -> list[IntakeResult]:
        self.intake_calls += 1
        return await super().intake(items)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    s = CountingStore(tmp_path / "engine.sqlite3")
    await s.open()
    yield s
    await s.close()


async def classify(job: Job, error: BaseException) -> ErrorVerdict:
    if isinstance(error, RetryableError | PermanentError):
        return ErrorVerdict(
            retryable=error.retryable,
            reason=error.message,
            retry_after=error.retry_after,
            code=error.code,
        )
    return ErrorVerdict(retryable=True, reason=f"{type(error).__name__}: {error}")


class DeadLetters:
    def __init__(self) -> None:
        self.calls: list[tuple[int, ErrorVerdict]] = []

    async def __call__(self, job: Job, verdict: ErrorVerdict) -> None:
        self.calls.append((job.id, verdict))


def make_engine(
    store: SqliteStore,
    *,
    on_dead: Any = None,
    metrics: Metrics | None = None,
    poll: float = 0.05,
    requests: Requests | None = None,
    requests_first: float = 0.01,
    **config: Any,
) -> Engine:
    settings: dict[str, Any] = {
        "workers": 8,
        "max_attempts": 5,
        "backoff_initial": 0.01,
        "backoff_max": 0.02,
        "lease_seconds": 5.0,
        "group_commit_ms": 2.0,
    }
    settings.update(config)
    return Engine(
        store,
        EngineConfig(**settings),
        classify=classify,
        on_dead=on_dead,
        metrics=metrics,
        poll_interval=poll,
        rng=random.Random(7),
        requests=requests,
        requests_first=requests_first,
    )


@pytest.fixture
async def engines() -> AsyncIterator[list[Engine]]:
    """Engines a test starts; stopped at its end even when it fails."""
    started: list[Engine] = []
    yield started
    for engine in started:
        await engine.stop(0.1)


async def until(predicate: Callable[[], Awaitable[bool] | bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def work(lane: str, **payload: Any) -> Intake:
    return Intake(job=NewJob(kind="work", lane=lane, payload=json.dumps(payload).encode()))


async def finished(store: SqliteStore, n: int) -> bool:
    counts = await store.job_counts()
    return counts["done"] + counts["dead"] >= n


# -- ordering and concurrency -----------------------------------------------------------------
async def test_each_finished_job_wakes_one_claim(
    store: CountingStore, engines: list[Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lane's next job is claimed in the turn its predecessor completes, by one claim: no
    claim comes back empty after each job (the dispatcher would never sleep on a slow lane),
    and none is missed (the poll is far longer than the test may take)."""
    claims = 0
    claim_jobs = store.claim_jobs

    async def counted(limit: int, lease_seconds: float) -> list[Job]:
        nonlocal claims
        claims += 1
        return await claim_jobs(limit, lease_seconds)

    monkeypatch.setattr(store, "claim_jobs", counted)
    engine = make_engine(store, poll=60.0)

    async def handler(job: Job) -> None:
        await asyncio.sleep(0.001)

    engine.register("work", handler)
    await engine.intake([work("lane", seq=i) for i in range(30)])
    engines.append(engine)
    await engine.start()
    await until(lambda: finished(store, 30), within=20)
    assert claims <= 30 + 2


async def test_lanes_keep_their_order_and_run_side_by_side(
    store: CountingStore, engines: list[Engine]
) -> None:
    lanes, per_lane = 20, 50
    engine = make_engine(store, workers=16)
    seen: dict[str, list[int]] = {f"lane{i}": [] for i in range(lanes)}
    spans: list[tuple[float, float, str]] = []
    active: dict[str, int] = {}
    overlapping: list[str] = []
    rng = random.Random(1)

    async def handler(job: Job) -> None:
        data = json.loads(job.payload)
        active[job.lane] = active.get(job.lane, 0) + 1
        if active[job.lane] > 1:
            overlapping.append(job.lane)
        start = time.monotonic()
        await asyncio.sleep(rng.random() * 0.004)
        seen[job.lane].append(data["seq"])
        spans.append((start, time.monotonic(), job.lane))
        active[job.lane] -= 1

    engine.register("work", handler)
    # Enqueue randomly interleaved across lanes, in several concurrent intake calls.
    order = [f"lane{i}" for i in range(lanes)] * per_lane
    rng.shuffle(order)
    next_seq = dict.fromkeys(seen, 0)
    items = []
    for lane in order:
        items.append(work(lane, seq=next_seq[lane]))
        next_seq[lane] += 1
    await asyncio.gather(*(engine.intake(items[k : k + 25]) for k in range(0, len(items), 25)))
    engines.append(engine)
    await engine.start()
    await until(lambda: finished(store, lanes * per_lane), within=12)

    assert overlapping == [], "two jobs of one lane ran at once"
    for lane, ran in seen.items():
        assert ran == list(range(per_lane)), lane
    # Lanes overlapped in time: some job started while a job of another lane was running.
    spans.sort()
    overlaps = sum(
        1 for (s1, e1, l1), (s2, _, l2) in itertools.pairwise(spans) if s2 < e1 and l1 != l2
    )
    assert overlaps > lanes * per_lane // 4
    assert (await store.job_counts())["done"] == lanes * per_lane


async def test_concurrency_is_bounded_by_workers(
    store: CountingStore, engines: list[Engine]
) -> None:
    engine = make_engine(store, workers=3)
    running = peak = 0

    async def handler(job: Job) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.03)
        running -= 1

    engine.register("work", handler)
    engines.append(engine)
    await engine.start()
    await engine.intake([work(f"lane{i}") for i in range(12)])
    await until(lambda: finished(store, 12))
    assert peak == 3


async def test_intake_wakes_the_dispatcher(store: CountingStore, engines: list[Engine]) -> None:
    engine = make_engine(store, poll=30.0)
    ran = asyncio.Event()

    async def handler(job: Job) -> None:
        ran.set()

    engine.register("work", handler)
    engines.append(engine)
    await engine.start()
    await asyncio.sleep(0.05)  # the dispatcher is asleep now, for up to 30 s
    await engine.intake([work("a")])
    await asyncio.wait_for(ran.wait(), 1.0)


class Answering:
    """Webhook requests being answered, counted as the public listener counts them."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if not self.count:
            self._idle.set()

    async def idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


async def test_new_jobs_wait_while_webhooks_are_answered(
    store: CountingStore, engines: list[Engine]
) -> None:
    """A job is not started while a webhook is being answered (its acknowledgement would
    share the event loop with the job's work); it starts once the webhook has its answer."""
    requests = Answering()
    engine = make_engine(store, requests=requests, requests_first=60.0)
    ran = asyncio.Event()

    async def handler(job: Job) -> None:
        ran.set()

    engine.register("work", handler)
    engines.append(engine)
    await engine.start()
    requests.enter()
    await engine.intake([work("a")])
    await asyncio.sleep(0.3)
    assert not ran.is_set()
    requests.leave()
    await asyncio.wait_for(ran.wait(), 5.0)


async def test_jobs_go_on_while_webhooks_keep_coming(
    store: CountingStore, engines: list[Engine]
) -> None:
    """Webhooks in flight all the time hold new jobs back only for a moment each: the jobs
    still run, and all of them."""
    requests = Answering()
    requests.enter()  # never answered
    engine = make_engine(store, requests=requests, requests_first=0.01, workers=2)
    engine.register("work", _noop)
    engines.append(engine)
    await engine.start()
    await engine.intake([work(f"lane{i % 3}") for i in range(12)])
    await until(lambda: finished(store, 12))


async def _noop(job: Job) -> None:
    return None


# -- retries and dead letters -----------------------------------------------------------------
async def test_retry_then_success(store: CountingStore, engines: list[Engine]) -> None:
    metrics = Metrics()
    engine = make_engine(store, metrics=metrics)
    calls = 0

    async def handler(job: Job) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RetryableError("provider unavailable", status=503)

    engine.register("work", handler)
    engines.append(engine)
    await engine.start()
    await engine.intake([work("a")])
    await until(lambda: finished(store, 1))
    [job] = await store.list_jobs(("done",))
    assert calls == 3
    assert job.attempts == 3
    assert job.last_error == "provider unavailable"
    finished_total = metrics.jobs_finished
    assert finished_total.labels("work", "retry")._value.get() == 2
    assert finished_total.labels("work", "done")._value.get() == 1


async def test_waiting_for_a_moment_is_no_warning(
    store: CountingStore, engines: list[Engine], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="extmsg.engine")
    engine = make_engine(store)
    calls = 0

    async def handler(job: Job) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise NotYet("the status outran its send")
        if calls == 2:
            raise RetryableError("provider unavailable", status=503)

    engine.register("work", handler)
    engines.append(engine)
    await engine.start()
    await engine.intake([work("a")])
    await until(lambda: finished(store, 1))
    retries = [r for r in caplog.records if "next try in" in r.getMessage()]
    assert [r.levelno for r in retries] == [logging.DEBUG, logging.WARNING]


async def test_retry_after_is_a_floor(store: CountingStore, engines: list[Engine]) -> None:
    engine = make_engine(store, poll=30.0)  # the due time, not polling, brings it back
    attempts: list[float] = []

    async def handler(job: Job) -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RetryableError("throttled", status=429, retry_after=0.3)

    engine.register("work", handler)
    engines.append(engine)
    await engine.start()
    await engine.intake([work("a")])
    await until(lambda: len(attempts) == 2, within=3)
    waited = attempts[1] - attempts[0]
    assert 0.3 <= waited < 1.0


async def test_a_permanent_error_makes_a_dead_letter(
    store: CountingStore, engines: list[Engine]
) -> None:
    dead = DeadLetters()
    engine = make_engine(store, on_dead=dead)
    ran: list[str] = []

    async def handler(job: Job) -> None:
        data = json.loads(job.payload)
        ran.append(data["n"])
        if data["n"] == "first":
            raise PermanentError("the contact opted out", status=400, code=21610)

    engine.register("work", handler)
    engines.append(engine)
    await engine.start()
    await engine.intake([work("a", n="first"), work("a", n="second")])
    await until(lambda: finished(store, 2))
    assert ran == ["first", "second"]  # the dead job did not block its lane
    [buried] = await store.list_jobs(("dead",))
    assert not buried.holds_lane
    assert len(dead.calls) == 1
    job_id, verdict = dead.calls[0]
    assert job_id == buried.id
    assert verdict.retryable is False
    assert verdict.code == "21610"
    assert "opted out" in verdict.reason
    assert buried.attempts == 1
    assert buried.last_error is not None
    assert "the contact opted out" in buried.last_error
    assert "21610" in buried.last_error


async def test_max_attempts_makes_a_dead_letter(
    store: CountingStore, engines: list[Engine]
) -> None:
    dead = DeadLetters()
    engine = make_engine(store, on_dead=dead, max_attempts=3)
    calls = 0

    async def handler(job: Job) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionResetError("peer went away")

    engine.register("work", handler)
    engines.append(engine)
    await engine.start()
    await engine.intake([work("a"), work("a", n="later")])
    await until(lambda: finished(store, 1))
    [buried] = await store.list_jobs(("dead",))
    assert calls == 3
    assert buried.attempts == 3
    [(_, verdict)] = dead.calls
    assert verdict.retryable is True
    assert "gave up after 3 attempts" in verdict.reason
    # Out of retries, not refused: it holds its lane, the later job waits for a person.
    assert buried.holds_lane
    await asyncio.sleep(0.2)
    assert calls == 3
    assert [j.state for j in await store.list_jobs()] == ["dead", "ready"]


async def test_an_unknown_job_kind_is_a_dead_letter(
    store: CountingStore, engines: list[Engine]
) -> None:
    dead = DeadLetters()
    engine = make_engine(store, on_dead=dead)
    engines.append(engine)
    await engine.start()
    await engine.intake([Intake(job=NewJob(kind="mystery", lane="a", payload=b""))])
    await until(lambda: finished(store, 1))
    [buried] = await store.list_jobs(("dead",))
    assert buried.last_error is not None
    assert "no handler is registered for job kind 'mystery'" in buried.last_error
    assert len(dead.calls) == 1


async def test_errors_of_on_dead_are_logged_and_noted(
    store: CountingStore, engines: list[Engine], caplog: pytest.LogCaptureFixture
) -> None:
    async def on_dead(job: Job, verdict: ErrorVerdict) -> None:
        raise RuntimeError("Unblu is down")

    async def handler(job: Job) -> None:
        raise PermanentError("invalid number +41791234567")

    engine = make_engine(store, on_dead=on_dead)
    engine.register("work", handler)
    engines.append(engine)
    with caplog.at_level(logging.INFO, logger="extmsg.engine"):
        await engine.start()
        await engine.intake([work("+41791234567")])
        await until(lambda: finished(store, 1))
    [buried] = await store.list_jobs(("dead",))
    assert buried.last_error is not None
    assert "reporting the failure raised RuntimeError" in buried.last_error
    reports = [r for r in caplog.records if "reporting dead job" in r.getMessage()]
    assert len(reports) == 1
    assert reports[0].exc_info is not None
    # phone numbers in lanes and reasons are masked in the log
    assert all("+41791234567" not in r.getMessage() for r in caplog.records)


async def test_a_failing_classifier_means_retry(
    store: CountingStore, engines: list[Engine]
) -> None:
    async def broken(job: Job, error: BaseException) -> ErrorVerdict:
        raise ValueError("bug in a plugin")

    engine = Engine(
        store,
        EngineConfig(backoff_initial=0.01, backoff_max=0.01),
        classify=broken,
        poll_interval=0.05,
    )
    calls = 0

    async def handler(job: Job) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("network")

    engine.register("work", handler)
    engines.append(engine)
    await engine.start()
    await engine.intake([work("a")])
    await until(lambda: finished(store, 1))
    assert calls == 2


async def test_a_cancellation_a_handler_raises_itself_is_its_failure(
    store: CountingStore, engines: list[Engine]
) -> None:
    """A CancelledError nobody asked for (raised by the handler, or by a library it called)
    fails that attempt: the job is retried, and the engine goes on."""
    calls = 0

    async def handler(job: Job) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncio.CancelledError

    engine = make_engine(store)
    engine.register("work", handler)
    engines.append(engine)
    await engine.start()
    await engine.intake([work("a")])
    await until(lambda: finished(store, 1))
    [job] = await store.list_jobs(("done",))
    assert (calls, job.attempts) == (2, 2)


async def test_what_a_handler_sets_in_its_context_stays_its_own(
    store: CountingStore, engines: list[Engine]
) -> None:
    """A handler sees the job's log fields; what it sets itself (a send hold, a log field)
    does not follow the engine's own work for the job once it has returned, such as reporting
    a dead letter, whose call to Unblu may come long after the handler's hold."""
    seen: list[tuple[dict[str, str], sendguard.Hold | None]] = []
    engine = make_engine(store, on_dead=None)

    async def handler(job: Job) -> None:
        seen.append((logcontext.current(), sendguard.current()))
        await engine.hold(job)
        logcontext.set_field("conversation_id", "conversation-1")
        raise PermanentError("refused")

    async def on_dead(job: Job, verdict: ErrorVerdict) -> None:
        seen.append((logcontext.current(), sendguard.current()))

    engine._on_dead = on_dead
    engine.register("work", handler)
    engines.append(engine)
    await engine.start()
    await engine.intake([work("a")])
    await until(lambda: finished(store, 1))
    [buried] = await store.list_jobs(("dead",))
    [(in_handler, handler_hold), (in_report, report_hold)] = seen
    assert in_handler == in_report == {"job_id": str(buried.id)}
    assert handler_hold is report_hold is None


async def test_a_job_runs_in_one_task(store: CountingStore, engines: list[Engine]) -> None:
    """A job costs one task: its handler and its completion run in its worker's."""
    jobs = 20
    await store.intake([work(f"lane-{i}") for i in range(jobs)])
    engine = make_engine(store)

    async def handler(job: Job) -> None:
        await asyncio.sleep(0)

    engine.register("work", handler)
    loop = asyncio.get_running_loop()
    created: list[str] = []

    def counted(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        created.append(getattr(coro, "__qualname__", repr(coro)))
        return asyncio.Task(coro, loop=loop, **kw)

    loop.set_task_factory(counted)
    try:
        engines.append(engine)
        await engine.start()
        await until(lambda: finished(store, jobs))
    finally:
        loop.set_task_factory(None)
    # the dispatcher, the lease renewals and one per job
    assert len(created) <= jobs + 2, created


# -- leases: crashes, long jobs, stopping -----------------------------------------------------
async def test_a_crashed_workers_job_runs_again_after_its_lease(
    store: CountingStore, engines: list[Engine], tmp_path: Path
) -> None:
    await store.intake([work("a", n=1), work("a", n=2)])
    # Another process claims the first job and dies (kill -9) without a word.
    crashed = SqliteStore(store.path)
    await crashed.open()
    [abandoned] = await crashed.claim_jobs(1, lease_seconds=0.3)
    await crashed.close()

    engine = make_engine(store)
    ran: list[int] = []

    async def handler(job: Job) -> None:
        ran.append(json.loads(job.payload)["n"])

    engine.register("work", handler)
    engines.append(engine)
    started = time.monotonic()
    await engine.start()
    await until(lambda: len(ran) == 2)
    assert time.monotonic() - started >= 0.25  # not before the lease ran out
    assert ran == [1, 2]  # the lane waited for its abandoned head
    again = await store.get_job(abandoned.id)
    assert again is not None
    assert (again.state, again.attempts) == ("done", 2)  # the lost attempt counts


async def test_a_job_whose_workers_keep_dying_lets_its_lane_go_on(
    store: CountingStore, engines: list[Engine]
) -> None:
    """A poison job (it kills its worker) is a dead letter that holds nothing."""
    await store.intake([work("a", n=1), work("a", n=2)])
    crashed = SqliteStore(store.path)
    await crashed.open()
    await crashed.claim_jobs(1, lease_seconds=0.05)  # and dies
    await crashed.close()
    await asyncio.sleep(0.1)
    engine = make_engine(store, max_attempts=1)
    ran: list[int] = []

    async def handler(job: Job) -> None:
        ran.append(json.loads(job.payload)["n"])

    engine.register("work", handler)
    engines.append(engine)
    await engine.start()
    await until(lambda: ran == [2])
    [buried] = await store.list_jobs(("dead",))
    assert not buried.holds_lane


async def test_a_live_job_is_never_picked_up_twice(
    store: CountingStore, engines: list[Engine]
) -> None:
    runs: list[str] = []

    def handler_of(name: str) -> Callable[[Job], Awaitable[None]]:
        async def handler(job: Job) -> None:
            runs.append(name)
            await asyncio.sleep(1.0)  # far longer than the lease

        return handler

    first = make_engine(store, lease_seconds=0.3)
    first.register("work", handler_of("first"))
    other_store = SqliteStore(store.path)  # a second process on the same database
    await other_store.open()
    second = make_engine(other_store, lease_seconds=0.3)
    second.register("work", handler_of("second"))
    engines.extend([first, second])
    try:
        await first.start()
        await first.intake([work("a")])
        await until(lambda: runs == ["first"])
        await second.start()
        await until(lambda: finished(store, 1), within=5)
        assert runs == ["first"]
        [job] = await store.list_jobs(("done",))
        assert job.attempts == 1
    finally:
        await second.stop(0.1)
        await other_store.close()


async def test_stop_waits_for_quick_jobs(store: CountingStore, engines: list[Engine]) -> None:
    engine = make_engine(store)
    started = asyncio.Event()

    async def handler(job: Job) -> None:
        started.set()
        await asyncio.sleep(0.1)

    engine.register("work", handler)
    await engine.start()
    await engine.intake([work("a")])
    await started.wait()
    await engine.stop(5.0)
    [job] = await store.list_jobs(("done",))
    assert job.attempts == 1


async def test_stop_gives_back_unfinished_jobs_without_an_attempt(
    store: CountingStore, engines: list[Engine]
) -> None:
    engine = make_engine(store)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(job: Job) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    engine.register("work", slow)
    await engine.start()
    await engine.intake([work("a")])
    await started.wait()
    t0 = time.monotonic()
    await engine.stop(0.2)
    assert time.monotonic() - t0 < 2
    assert cancelled.is_set()
    assert engine.in_flight == 0
    [job] = await store.list_jobs(("ready",))
    assert (job.attempts, job.lease_until) == (0, None)

    # The next start runs it at once (no lease to wait for).
    again = make_engine(store)
    done = asyncio.Event()

    async def quick(job: Job) -> None:
        done.set()

    again.register("work", quick)
    engines.append(again)
    await again.start()
    await asyncio.wait_for(done.wait(), 2)
    await until(lambda: finished(store, 1))


async def test_stop_writes_pending_intakes(tmp_path: Path) -> None:
    class SlowStore(CountingStore):
        async def intake(self, items: Sequence[Intake]) -> list[IntakeResult]:
            await asyncio.sleep(0.05)
            return await super().intake(items)

    store = SlowStore(tmp_path / "slow.sqlite3")
    await store.open()
    engine = make_engine(store, group_commit_ms=300)
    await engine.start()
    first = asyncio.ensure_future(engine.intake([work("a")]))  # the writer is idle: goes at once
    await asyncio.sleep(0.01)
    queued = asyncio.ensure_future(engine.intake([work("b")]))  # waits behind it, up to 300 ms
    await asyncio.sleep(0.01)
    assert not queued.done()
    await engine.stop(1.0)
    assert first.done()
    assert queued.done()
    assert [r.accepted for r in queued.result()] == [True]
    assert store.intake_calls == 2
    assert (await store.job_counts())["ready"] == 2
    await store.close()


# -- group commit -----------------------------------------------------------------------------
def inbound(n: int, provider: str | None = None) -> Intake:
    return Intake(
        message=NewMessage(
            id=f"m{n}",
            channel="sms",
            direction="in",
            thread=f"t{n % 7}",
            provider_message_id=provider or f"SM{n}",
        ),
        job=NewJob(kind="work", lane=f"sms:t{n % 7}", payload=b"{}"),
    )


async def test_group_commit_shares_transactions(store: CountingStore) -> None:
    engine = make_engine(store)
    # 20 messages are stored already; the provider sends them again among 180 new ones.
    await engine.intake([inbound(i) for i in range(20)])
    before = store.intake_calls

    requests = [inbound(1000 + i, provider=f"SM{i}" if i < 20 else None) for i in range(200)]
    results = await asyncio.gather(*(engine.intake([r]) for r in requests))

    transactions = store.intake_calls - before
    assert transactions <= 10, transactions
    for i, [result] in enumerate(results):
        if i < 20:
            assert (result.accepted, result.message_id) == (False, f"m{i}")
        else:
            assert (result.accepted, result.message_id) == (True, f"m{1000 + i}")
    counts = await store.job_counts()
    assert counts["ready"] == 20 + 180  # no job for a duplicate


async def test_concurrent_duplicates_accept_exactly_one(store: CountingStore) -> None:
    engine = make_engine(store)
    results = await asyncio.gather(
        *(engine.intake([inbound(i, provider="SMsame")]) for i in range(10))
    )
    accepted = [r for [r] in results if r.accepted]
    assert len(accepted) == 1
    assert {r.message_id for [r] in results} == {accepted[0].message_id}
    assert (await store.job_counts())["ready"] == 1


async def test_a_failing_request_fails_alone(store: CountingStore) -> None:
    engine = make_engine(store)
    bad = Intake(
        message=NewMessage(
            id="bad",
            channel="sms",
            direction="sideways",  # type: ignore[arg-type]
            thread="t",
            provider_message_id="SMbad",
        )
    )
    outcomes = await asyncio.gather(
        *(engine.intake([inbound(i)]) for i in range(5)),
        engine.intake([inbound(5), bad]),
        *(engine.intake([inbound(i)]) for i in range(6, 10)),
        return_exceptions=True,
    )
    assert isinstance(outcomes[5], Exception)
    assert all(isinstance(o, list) and o[0].accepted for i, o in enumerate(outcomes) if i != 5)
    assert await store.get_message("m5") is None  # nothing of the failed request is stored
    assert await store.get_message("bad") is None
    assert (await store.job_counts())["ready"] == 9


async def test_a_batch_is_written_early_when_full(store: CountingStore) -> None:
    engine = Engine(
        store, EngineConfig(group_commit_ms=5000), classify=classify, intake_max_batch=10
    )
    t0 = time.monotonic()
    results = await asyncio.gather(*(engine.intake([inbound(i)]) for i in range(30)))
    assert time.monotonic() - t0 < 2  # three full batches; nobody waited for the window
    assert store.intake_calls == 3
    assert all(r.accepted for [r] in results)


async def test_queue_metrics_are_refreshed(store: CountingStore, engines: list[Engine]) -> None:
    metrics = Metrics()

    async def handler(job: Job) -> None:
        raise PermanentError("no")

    engine = Engine(
        store,
        EngineConfig(),
        classify=classify,
        metrics=metrics,
        poll_interval=0.05,
        counts_interval=0.05,
    )
    engine.register("work", handler)
    engines.append(engine)
    await engine.start()
    await engine.intake([work("a"), work("b")])
    await until(lambda: metrics.dead_letters._value.get() == 2)
    assert metrics.queue_depth.labels("ready")._value.get() == 0
    assert metrics.intake_batch._sum.get() == 2


# -- poison jobs ------------------------------------------------------------------------------
class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for this one")


async def test_a_poison_job_ends_as_a_dead_letter_without_stalling_the_loop(
    store: CountingStore, engines: list[Engine], caplog: pytest.LogCaptureFixture
) -> None:
    """Errors that quote a huge hostile input, or cannot be shown at all, are capped before
    anything masks, logs, stores or reports them."""
    huge = "SM" + "0123456789" * 100_000 + " from a" + "b" * 100_000 + "@x.com\nERROR forged"
    dead = DeadLetters()

    async def broken(job: Job, error: BaseException) -> ErrorVerdict:
        if json.loads(job.payload)["n"] == "unclassifiable":
            raise ValueError(huge)
        return await classify(job, error)

    engine = Engine(
        store,
        EngineConfig(max_attempts=3, backoff_initial=0.01, backoff_max=0.02),
        classify=broken,
        on_dead=dead,
        poll_interval=0.05,
    )

    async def handler(job: Job) -> None:
        n = json.loads(job.payload)["n"]
        if n == "permanent":
            raise PermanentError(huge, code="9" * 100_000)
        if n == "unprintable":
            raise Unprintable()
        raise RuntimeError(huge)

    engine.register("work", handler)
    engines.append(engine)
    kinds = ["permanent", "retried", "unclassifiable", "unprintable"]
    with caplog.at_level(logging.INFO, logger="extmsg.engine"):
        async with loop_stalls() as stalls:
            await engine.start()
            await engine.intake([work(huge + n, n=n) for n in kinds])
            await until(lambda: finished(store, len(kinds)), within=20)
    assert stalls.longest < 1.0
    buried = await store.list_jobs(("dead",))
    assert len(buried) == len(kinds)
    for job in buried:
        assert job.last_error is not None
        assert len(job.last_error) <= 2000
    assert len(dead.calls) == len(kinds)
    for _, verdict in dead.calls:
        assert len(verdict.reason) < 2100
        assert verdict.code is None or len(verdict.code) <= 64
    assert any("cannot be shown" in v.reason for _, v in dead.calls)
    assert all(len(r.getMessage()) < 10_000 for r in caplog.records)


async def test_held_lanes_are_counted(store: CountingStore, engines: list[Engine]) -> None:
    metrics = Metrics()

    async def handler(job: Job) -> None:
        raise RetryableError("Unblu answered 503")

    engine = Engine(
        store,
        EngineConfig(max_attempts=2, backoff_initial=0.01, backoff_max=0.01),
        classify=classify,
        metrics=metrics,
        poll_interval=0.05,
        counts_interval=0.05,
    )
    engine.register("work", handler)
    engines.append(engine)
    await engine.start()
    await engine.intake([work("a"), work("a"), work("b")])
    await until(lambda: metrics.lanes_held._value.get() == 2)
    assert metrics.dead_letters._value.get() == 2
    assert metrics.queue_depth.labels("ready")._value.get() == 1  # behind a's dead letter
    # and that job has waited since it was due
    await until(lambda: metrics.oldest_ready_job._value.get() > 0.1)
