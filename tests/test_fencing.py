"""Fencing and doubt, on both stores: every claim raises a job's fence, a job whose lease ran
out comes back in doubt, and a worker that stalled past its lease and wakes up after another
took the job over can neither finish, reschedule, bury nor record anything for it; in the
engine, such a worker does not send again, and the job is done once, by its new holder."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from extmsg import sendguard
from extmsg.engine import Engine
from extmsg.errors import LeaseLost, RetryableError
from extmsg.metrics import Metrics
from extmsg.models import MessageState
from extmsg.store.base import Intake, Job, MessageRow, NewJob, PartSent, Store, first_run
from extmsg.store.sqlite import SqliteStore

from . import pg
from .test_engine import make_engine, until, work
from .test_store import enqueue, job, message


@pytest.fixture(params=["sqlite", "postgres"])
async def instances(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one database: two instances (SQLite: two writers of one file)."""
    if request.param == "sqlite":
        stores: list[Store] = [SqliteStore(tmp_path / "s.sqlite3") for _ in range(2)]
        for s in stores:
            await s.open()
        yield stores[0], stores[1]
        for s in stores:
            await s.close()
        return
    async with pg.fresh_schema() as schema:
        pair = [pg.store_in(schema), pg.store_in(schema)]
        for s in pair:
            await s.open()
        try:
            yield pair[0], pair[1]
        finally:
            for s in pair:
                await s.close()


async def taken_over(old: Store, new: Store) -> tuple[Job, Job]:
    """A job claimed by ``old`` whose lease ran out and that ``new`` claimed since."""
    await old.intake([Intake(message=message(1), job=job("a"))])
    [first] = await old.claim_jobs(1, 0.05)
    await asyncio.sleep(0.1)
    [second] = await new.claim_jobs(1, 30)
    assert second.id == first.id
    return first, second


async def stored(store: Store, job_id: int) -> Job:
    row = await store.get_job(job_id)
    assert row is not None
    return row


# -- the store --------------------------------------------------------------------------------
async def test_every_claim_raises_the_fence(instances: tuple[Store, Store]) -> None:
    store, _ = instances
    [a1] = await enqueue(store, "a")
    assert (await stored(store, a1)).fence == 0
    [claimed] = await store.claim_jobs(1, 30)
    assert claimed.fence == 1
    await store.release_jobs([a1], fences={a1: claimed.fence})
    [again] = await store.claim_jobs(1, 30)
    assert again.fence == 2
    assert await store.reschedule_job(a1, 0, "later", fence=again.fence)
    [third] = await store.claim_jobs(1, 30)
    assert (third.fence, third.attempts) == (3, 1)
    assert await store.complete_job(a1, fence=3)
    assert (await stored(store, a1)).state == "done"


async def test_an_expired_lease_comes_back_in_doubt(instances: tuple[Store, Store]) -> None:
    old, new = instances
    first, second = await taken_over(old, new)
    assert not first.in_doubt
    assert second.in_doubt
    assert second.fence == first.fence + 1
    assert second.attempts == 1
    assert await new.complete_job(second.id, fence=second.fence)
    assert not (await stored(new, second.id)).in_doubt  # done, the doubt is settled


async def test_a_late_holder_changes_nothing(instances: tuple[Store, Store]) -> None:
    old, new = instances
    first, second = await taken_over(old, new)

    # Every write the stalled holder makes, once it wakes up, is refused.
    assert not await old.hold_job(first.id, first.fence, 30)
    assert await old.renew_lease([first.id], 30, fences={first.id: first.fence}) == []
    assert not await old.complete_job(first.id, fence=first.fence)
    assert not await old.reschedule_job(first.id, 0, "late", fence=first.fence)
    assert not await old.bury_job(first.id, "late", fence=first.fence)
    await old.release_jobs([first.id], fences={first.id: first.fence}, in_doubt=[first.id])
    with pytest.raises(LeaseLost):
        await old.record_part("m1", "sms", 0, "SM-late", job=first)
    with pytest.raises(LeaseLost):
        await old.update_message("m1", unblu_message_id="u-late", job=first)
    with pytest.raises(LeaseLost):
        await old.advance_state("m1", MessageState.SENT, job=first)
    with pytest.raises(LeaseLost):
        await old.complete_message("m1", job=first)

    now = await stored(new, second.id)
    assert (now.state, now.fence, now.attempts) == ("running", second.fence, 1)
    assert await new.sent_parts("m1") == {}
    row = await new.get_message("m1")
    assert row is not None
    assert (row.unblu_message_id, row.provider_message_id, row.state) == (
        None,
        "p1",
        MessageState.PENDING,
    )

    # The new holder's writes go through.
    assert await new.hold_job(second.id, second.fence, 30)
    assert await new.renew_lease([second.id], 30, fences={second.id: second.fence}) == [second.id]
    await new.record_part("m1", "sms", 0, "SM-1", job=second)
    done = await new.complete_message("m1", job=second)
    assert done is not None
    assert done.state == MessageState.SENT
    await new.update_message("m1", unblu_message_id="u1", job=second)
    assert await new.complete_job(second.id, fence=second.fence)
    assert await new.sent_parts("m1") == {0: "SM-1"}
    # ...and once it is done, its own late writes are refused as well.
    with pytest.raises(LeaseLost):
        await new.record_part("m1", "sms", 1, "SM-2", job=second)


async def test_a_job_not_from_a_claim_has_no_fence_to_check(instances: tuple[Store, Store]) -> None:
    store, _ = instances
    await store.intake([Intake(message=message(1), job=job("a"))])
    by_hand = Job(id=999, kind="k", lane="a", payload=b"", state="running", attempts=0, next_at=0)
    await store.record_part("m1", "sms", 0, "SM-1", job=by_hand)
    assert await store.advance_state("m1", MessageState.SENT, job=by_hand)


async def test_release_marks_in_doubt_only_what_was_cut_off(instances: tuple[Store, Store]) -> None:
    store, _ = instances
    a1, b1 = await enqueue(store, "a", "b")
    claimed = await store.claim_jobs(2, 30)
    await store.release_jobs([a1, b1], fences={j.id: j.fence for j in claimed}, in_doubt=[a1])
    a, b = await stored(store, a1), await stored(store, b1)
    assert (a.state, a.in_doubt, a.attempts) == ("ready", True, 0)
    assert (b.state, b.in_doubt, b.attempts) == ("ready", False, 0)


async def test_a_reschedule_sets_or_clears_the_doubt(instances: tuple[Store, Store]) -> None:
    store, _ = instances
    [a1] = await enqueue(store, "a")
    [claimed] = await store.claim_jobs(1, 30)
    assert await store.reschedule_job(a1, 0, "timed out", fence=claimed.fence, in_doubt=True)
    [again] = await store.claim_jobs(1, 30)
    assert again.in_doubt
    assert await store.reschedule_job(a1, 0, "503", fence=again.fence)
    [third] = await store.claim_jobs(1, 30)
    assert not third.in_doubt


async def test_a_dead_letter_keeps_its_doubt_for_a_hand_retry(
    instances: tuple[Store, Store],
) -> None:
    store, _ = instances
    [a1] = await enqueue(store, "a")
    [claimed] = await store.claim_jobs(1, 30)
    assert await store.reschedule_job(a1, 0, "timed out", fence=claimed.fence, in_doubt=True)
    [again] = await store.claim_jobs(1, 30)
    assert await store.bury_job(a1, "gave up", fence=again.fence)
    assert await store.retry_job(a1)
    [retried] = await store.claim_jobs(1, 30)
    assert retried.in_doubt


async def test_only_a_jobs_first_claim_is_its_first_run(instances: tuple[Store, Store]) -> None:
    """A handler skips its look for an earlier attempt's work on the job's first run: every
    other way a job comes back to be claimed must tell it was claimed before."""
    old, new = instances
    [a1] = await enqueue(old, "a")
    assert not first_run(await stored(old, a1))  # not from a claim
    [claimed] = await old.claim_jobs(1, 30)
    assert first_run(claimed)
    await old.release_jobs([a1], fences={a1: claimed.fence})  # given back at a stop
    [given_back] = await old.claim_jobs(1, 0.05)
    assert (given_back.attempts, given_back.in_doubt) == (0, False)
    assert not first_run(given_back)
    await asyncio.sleep(0.1)
    [taken_over] = await new.claim_jobs(1, 30)  # its lease ran out
    assert not first_run(taken_over)
    assert await new.bury_job(a1, "gave up", fence=taken_over.fence)
    assert await new.retry_job(a1)  # by hand: its attempts start again
    [retried] = await new.claim_jobs(1, 30)
    assert not first_run(retried)
    assert await new.complete_job(a1, fence=retried.fence)

    [b1] = await enqueue(new, "b")
    [claimed_b] = await new.claim_jobs(1, 30)
    assert await new.bury_job(b1, "refused", fence=claimed_b.fence)  # not in doubt
    assert await new.retry_job(b1)
    [retried_b] = await new.claim_jobs(1, 30)
    assert (retried_b.attempts, retried_b.in_doubt) == (0, False)
    assert not first_run(retried_b)
    assert await new.reschedule_job(b1, 0, "later", fence=retried_b.fence)
    [rescheduled] = await new.claim_jobs(1, 30)
    assert not first_run(rescheduled)


# -- the engine -------------------------------------------------------------------------------
class Stall:
    """Freezes an engine's lease renewals, as a stopped process (SIGSTOP) renews nothing."""

    def __init__(self, store: Store) -> None:
        self.resume = asyncio.Event()
        renew = store.renew_lease

        async def frozen(*args: object, **kw: object) -> list[int]:
            await self.resume.wait()
            return await renew(*args, **kw)  # type: ignore[arg-type]

        store.renew_lease = frozen  # type: ignore[method-assign]


@pytest.mark.parametrize("late", ["sends", "completes"])
async def test_a_stalled_worker_does_not_finish_or_send_a_job_taken_over(
    instances: tuple[Store, Store], late: str, caplog: pytest.LogCaptureFixture
) -> None:
    old_store, new_store = instances
    stall = Stall(old_store)
    metrics = Metrics()
    old = make_engine(old_store, workers=1, lease_seconds=0.3, metrics=metrics)  # type: ignore[arg-type]
    new = make_engine(new_store, lease_seconds=30)  # type: ignore[arg-type]
    sent: list[str] = []
    seen: list[Job] = []
    entered = asyncio.Event()

    async def stalled(job: Job) -> None:
        entered.set()
        await stall.resume.wait()
        if late == "sends":
            await old.hold(job)  # right before sending, as the flows do
        sent.append("old")

    async def healthy(job: Job) -> None:
        seen.append(job)
        await old_finished.wait()  # still running here while the old worker wakes up
        await new.hold(job)
        sent.append("new")

    old_finished = asyncio.Event()
    old.register("work", stalled)
    new.register("work", healthy)
    await old.intake([work("a")])
    await old.start()
    try:
        await asyncio.wait_for(entered.wait(), 5)
        await asyncio.sleep(0.4)  # the lease runs out while the old worker is stopped
        await new.start()
        await until(lambda: len(seen) == 1)
        with caplog.at_level(logging.WARNING, logger="extmsg.engine"):
            stall.resume.set()  # SIGCONT
            await until(lambda: old.in_flight == 0)
        old_finished.set()
        await until(lambda: _done(new_store))
    finally:
        await old.stop(1.0)
        await new.stop(1.0)

    assert sent == (["new"] if late == "sends" else ["old", "new"])
    assert seen[0].in_doubt  # the new holder knows to look before sending
    [done] = await new_store.list_jobs(("done", "ready", "running", "dead"))
    assert (done.state, done.attempts) == ("done", 2)  # the lost attempt and the new holder's
    assert metrics.fenced.labels("work")._value.get() == 1
    assert metrics.jobs_finished.labels("work", "done")._value.get() == 0
    assert "another worker took it over" in caplog.text


async def test_a_hold_answered_after_its_lease_sends_nothing(
    instances: tuple[Store, Store],
) -> None:
    """A process frozen while its hold was on the way gets a stale "yes" when it wakes up: the
    lease it renewed may already belong to another holder, so it must not send."""
    store, _ = instances
    Stall(store)  # no renewal sets the lease meanwhile
    engine = make_engine(store, workers=1, lease_seconds=0.2)
    hold_job = store.hold_job

    async def answered_late(*args: object, **kw: object) -> bool:
        held = await hold_job(*args, **kw)  # type: ignore[arg-type]
        await asyncio.sleep(0.15)  # SIGSTOP after the write, SIGCONT before the answer is read
        return held

    store.hold_job = answered_late  # type: ignore[method-assign]
    sent: list[Job] = []
    outcome: list[BaseException] = []

    async def sends(job: Job) -> None:
        # Past the first quarter of its lease, in which the claim's own lease would do.
        await asyncio.sleep(0.06)
        try:
            await engine.hold(job)
        except LeaseLost as exc:
            outcome.append(exc)
            raise
        sent.append(job)

    engine.register("work", sends)
    await engine.intake([work("a")])
    await engine.start()
    try:
        await until(lambda: bool(outcome))
    finally:
        await engine.stop(1.0)
    assert not sent
    assert isinstance(outcome[0], LeaseLost)


@pytest.mark.parametrize("swallows", [False, True])
async def test_a_lost_renewal_stops_the_handler(
    instances: tuple[Store, Store], swallows: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """When the renewal finds another holder, the handler is cut off before it sends; the
    engine then notes that the job's outcome was not written, also when the handler swallowed
    the cancellation and returned."""
    old_store, new_store = instances
    stall = Stall(old_store)
    metrics = Metrics()
    old = make_engine(old_store, workers=1, lease_seconds=0.3, metrics=metrics)  # type: ignore[arg-type]
    sent: list[str] = []
    entered = asyncio.Event()

    async def slow(job: Job) -> None:
        entered.set()
        try:
            await asyncio.sleep(3)
        except asyncio.CancelledError:
            if not swallows:
                raise
            return
        await old.hold(job)
        sent.append("old")

    old.register("work", slow)
    await old.intake([work("a")])
    await old.start()
    try:
        await asyncio.wait_for(entered.wait(), 5)
        await asyncio.sleep(0.4)
        [taken] = await new_store.claim_jobs(1, 30)
        with caplog.at_level(logging.WARNING, logger="extmsg.engine"):
            stall.resume.set()  # the renewal runs, finds the job another's, cancels the handler
            await until(lambda: old.in_flight == 0)
        assert await new_store.complete_job(taken.id, fence=taken.fence)
    finally:
        await old.stop(1.0)
    assert sent == []
    assert metrics.fenced.labels("work")._value.get() == 1
    assert "its handler's outcome was not written" in caplog.text


async def test_a_job_claimed_again_here_stops_its_earlier_run(
    instances: tuple[Store, Store], caplog: pytest.LogCaptureFixture
) -> None:
    """An engine that stalled past a job's lease and claims it again itself stops the earlier
    run's handler; that run writes nothing, and the new one finishes the job."""
    store, _ = instances
    Stall(store)  # no renewal keeps the first claim's lease
    metrics = Metrics()
    engine = make_engine(store, workers=2, lease_seconds=0.3, metrics=metrics)  # type: ignore[arg-type]
    runs: list[Job] = []
    outcome: list[str] = []

    async def first_stalls(job: Job) -> None:
        runs.append(job)
        if len(runs) == 1:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise
        outcome.append("done")

    engine.register("work", first_stalls)
    await engine.intake([work("a")])
    with caplog.at_level(logging.WARNING, logger="extmsg.engine"):
        await engine.start()
        try:
            await until(lambda: _done(store))
            await until(lambda: engine.in_flight == 0)
        finally:
            await engine.stop(1.0)
    assert outcome == ["cancelled", "done"]
    assert [job.in_doubt for job in runs] == [False, True]
    assert metrics.fenced.labels("work")._value.get() == 1
    assert metrics.jobs_finished.labels("work", "done")._value.get() == 1
    assert "its handler's outcome was not written" in caplog.text


async def test_a_job_cut_off_at_stop_comes_back_in_doubt(instances: tuple[Store, Store]) -> None:
    store, _ = instances
    engine = make_engine(store)  # type: ignore[arg-type]
    entered = asyncio.Event()

    async def forever(job: Job) -> None:
        entered.set()
        await engine.hold(job)
        await asyncio.sleep(60)

    engine.register("work", forever)
    await engine.intake([work("a")])
    await engine.start()
    await asyncio.wait_for(entered.wait(), 5)
    await engine.stop(0.05)
    [released] = await store.list_jobs(("ready",))
    assert (released.in_doubt, released.attempts) == (True, 0)


class Dropped(RetryableError):
    """What a client raises for a call whose connection dropped (or timed out) mid-way."""


def dropped(after_hold: bool, cause: BaseException) -> Callable[[Engine], object]:
    def handler_for(engine: Engine) -> object:
        async def handler(job: Job) -> None:
            if after_hold:
                await engine.hold(job)
            try:
                raise cause
            except BaseException as exc:
                raise Dropped("the call failed", retry_after=30) from exc

        return handler

    return handler_for


@pytest.mark.parametrize(
    ("after_hold", "cause", "doubt"),
    [
        (True, TimeoutError(), True),
        (True, ConnectionResetError(), True),
        (True, ConnectionRefusedError(), False),  # never connected
        (True, ValueError("HTTP 503"), False),  # an answer: it did not get through
        (False, TimeoutError(), False),  # no send was under way
    ],
)
async def test_a_send_that_may_have_got_through_is_retried_in_doubt(
    instances: tuple[Store, Store], after_hold: bool, cause: BaseException, doubt: bool
) -> None:
    store, _ = instances
    engine = make_engine(store)  # type: ignore[arg-type]
    engine.register("work", dropped(after_hold, cause)(engine))  # type: ignore[arg-type]
    await engine.intake([work("a")])
    await engine.start()
    try:
        await until(lambda: _attempts(store, 1))
    finally:
        await engine.stop(0.1)
    [retry] = await store.list_jobs(("ready",))
    assert retry.in_doubt is doubt


async def _done(store: Store) -> bool:
    return (await store.job_counts())["done"] == 1


async def _attempts(store: Store, n: int) -> bool:
    jobs = await store.list_jobs(("ready",))
    return bool(jobs) and jobs[0].attempts >= n


async def test_a_send_later_than_half_a_lease_after_its_hold_is_refused(
    instances: tuple[Store, Store],
) -> None:
    """A hold lets a send start for half a lease: a handler that stalls longer between its hold
    and its call is refused at the call, writes nothing, and its job comes back in doubt once
    its lease is over, to be sent then."""
    store, _ = instances
    metrics = Metrics()
    engine = make_engine(store, workers=1, lease_seconds=0.4, metrics=metrics)
    attempts: list[tuple[bool, str]] = []

    async def sends(job: Job) -> None:
        await engine.hold(job)
        if not attempts:
            await asyncio.sleep(0.3)  # stalled between the hold and the call
        try:
            sendguard.check()  # what every request to a remote does right before it is written
        except sendguard.StaleHold:
            attempts.append((job.in_doubt, "refused"))
            raise
        attempts.append((job.in_doubt, "sent"))

    engine.register("work", sends)
    await engine.intake([work("a")])
    await engine.start()
    try:
        await until(lambda: len(attempts) == 2, within=10)
    finally:
        await engine.stop(1.0)
    assert attempts == [(False, "refused"), (True, "sent")]
    assert metrics.fenced.labels("work")._value.get() == 1


# -- writes a job needs -----------------------------------------------------------------------
class Writes:
    """Counts the calls of a store's writes for a running job (claims and renewals aside)."""

    def __init__(self, store: Store) -> None:
        self.calls: list[str] = []
        for name in ("hold_job", "complete_job", "update_message"):
            setattr(store, name, self._counted(name, getattr(store, name)))

    def _counted(self, name: str, write: Callable[..., Awaitable[Any]]) -> Any:
        async def counted(*args: Any, **kw: Any) -> Any:
            self.calls.append(f"{name}(complete)" if kw.get("complete") else name)
            return await write(*args, **kw)

        return counted


async def test_a_send_right_after_the_claim_needs_no_hold_of_its_own(
    instances: tuple[Store, Store],
) -> None:
    """The claim set the lease under the job's fence a moment ago: the send may start for half
    a lease from when the claim was asked for, as after a hold written then."""
    store, _ = instances
    writes = Writes(store)
    engine = make_engine(store, workers=1, lease_seconds=30)  # type: ignore[arg-type]
    holds: list[tuple[float, sendguard.Hold | None]] = []

    async def sends(job: Job) -> None:
        before = time.monotonic()
        await engine.hold(job)
        holds.append((before, sendguard.current()))
        sendguard.check()  # the send goes out

    engine.register("work", sends)
    await engine.intake([work("a")])
    await engine.start()
    try:
        await until(lambda: _done(store))
    finally:
        await engine.stop(1.0)
    assert writes.calls == ["complete_job"]
    [(before, hold)] = holds
    assert hold is not None
    assert hold.at <= before  # counted from when the claim was asked for
    assert hold.bound == 15


async def test_a_claim_older_than_a_quarter_of_its_lease_is_held_with_a_write(
    instances: tuple[Store, Store],
) -> None:
    store, _ = instances
    Stall(store)  # no renewal sets the lease meanwhile
    writes = Writes(store)
    engine = make_engine(store, workers=1, lease_seconds=0.4)  # type: ignore[arg-type]
    sent: list[Job] = []

    async def sends(job: Job) -> None:
        await asyncio.sleep(0.15)  # the handler's own look-ups took a while
        await engine.hold(job)
        sendguard.check()
        sent.append(job)

    engine.register("work", sends)
    await engine.intake([work("a")])
    await engine.start()
    try:
        await until(lambda: _done(store))
    finally:
        await engine.stop(1.0)
    assert len(sent) == 1
    assert writes.calls == ["hold_job", "complete_job"]


async def test_a_renewal_sets_the_lease_a_send_may_rely_on(instances: tuple[Store, Store]) -> None:
    store, _ = instances
    renewed = asyncio.Event()
    renew = store.renew_lease

    async def renewal(*args: Any, **kw: Any) -> list[int]:
        ids = await renew(*args, **kw)
        renewed.set()
        return ids

    store.renew_lease = renewal  # type: ignore[method-assign]
    writes = Writes(store)
    # Renewed every 0.2s; a claim or renewal is relied on for 0.15s.
    engine = make_engine(store, workers=1, lease_seconds=0.6)  # type: ignore[arg-type]

    async def sends(job: Job) -> None:
        await renewed.wait()  # the claim is older than 0.15s by now; the renewal is not
        await engine.hold(job)
        sendguard.check()

    engine.register("work", sends)
    await engine.intake([work("a")])
    await engine.start()
    try:
        await until(lambda: _done(store))
    finally:
        await engine.stop(1.0)
    assert "hold_job" not in writes.calls
    assert "complete_job" in writes.calls


async def test_a_handlers_last_write_and_the_completion_are_one_write(
    instances: tuple[Store, Store],
) -> None:
    store, _ = instances
    await store.intake([Intake(message=message(1))])
    writes = Writes(store)
    engine = make_engine(store, workers=1)  # type: ignore[arg-type]

    async def posts(job: Job) -> None:
        await engine.hold(job)
        await engine.complete_with(
            job,
            functools.partial(
                store.update_message, "m1", unblu_message_id="u1", state=MessageState.SENT, job=job
            ),
        )

    engine.register("work", posts)
    await engine.intake([work("a")])
    await engine.start()
    try:
        await until(lambda: _done(store))
    finally:
        await engine.stop(1.0)
    assert writes.calls == ["update_message(complete)"]
    row = await store.get_message("m1")
    assert row is not None
    assert (row.unblu_message_id, row.state) == ("u1", MessageState.SENT)


async def test_a_last_write_after_a_takeover_writes_nothing(
    instances: tuple[Store, Store],
) -> None:
    """A worker that stalled past its lease finds its last write refused with its completion:
    neither is written, and the new holder's claim stands."""
    old_store, new_store = instances
    await old_store.intake([Intake(message=message(1))])
    stall = Stall(old_store)
    metrics = Metrics()
    old = make_engine(old_store, workers=1, lease_seconds=0.3, metrics=metrics)  # type: ignore[arg-type]
    entered = asyncio.Event()

    async def stalled(job: Job) -> None:
        entered.set()
        await stall.resume.wait()
        await old.complete_with(
            job, functools.partial(old_store.update_message, "m1", unblu_message_id="u1", job=job)
        )

    old.register("work", stalled)
    await old.intake([work("a")])
    await old.start()
    try:
        await asyncio.wait_for(entered.wait(), 5)
        await asyncio.sleep(0.4)  # the lease runs out while the old worker is stopped
        [taken] = await new_store.claim_jobs(1, 30)
        stall.resume.set()
        await until(lambda: old.in_flight == 0)
    finally:
        await old.stop(1.0)
    assert metrics.fenced.labels("work")._value.get() == 1
    row = await new_store.get_message("m1")
    assert row is not None
    assert row.unblu_message_id is None
    now = await stored(new_store, taken.id)
    assert (now.state, now.fence) == ("running", taken.fence)


async def test_a_message_settles_reports_and_completes_its_job_in_one_write(
    instances: tuple[Store, Store],
) -> None:
    old, new = instances
    first, second = await taken_over(old, new)
    await new.record_part("m1", "sms", 0, "SM-1", job=second)

    def report(row: MessageRow) -> NewJob:
        return NewJob(kind="report", lane="state:m1", payload=str(int(row.state)).encode())

    last = PartSent(channel="sms", part=1, provider_message_id="SM-2")

    # The stalled holder's last write is refused whole: no part, state, report nor completion.
    with pytest.raises(LeaseLost):
        await old.complete_message("m1", job=first, complete=True, report=report, last=last)
    with pytest.raises(LeaseLost):
        await old.update_message("m1", unblu_message_id="u-late", job=first, complete=True)
    assert (await stored(new, second.id)).state == "running"
    assert await new.list_jobs(("ready",)) == []
    assert await new.sent_parts("m1") == {0: "SM-1"}

    settled = await new.complete_message("m1", job=second, complete=True, report=report, last=last)
    assert await new.sent_parts("m1") == {0: "SM-1", 1: "SM-2"}
    assert settled is not None
    assert settled.state == MessageState.SENT
    assert (await stored(new, second.id)).state == "done"
    [queued] = await new.list_jobs(("ready",))
    assert (queued.kind, queued.payload) == ("report", str(int(MessageState.SENT)).encode())
    # Its lane goes on: the report is claimable at once.
    [claimed] = await new.claim_jobs(5, 30)
    assert claimed.id == queued.id


async def test_a_report_enqueued_with_a_completion_waits_behind_its_lane(
    instances: tuple[Store, Store],
) -> None:
    store, _ = instances
    await store.intake([Intake(message=message(1), job=job("a"))])
    [running] = await store.claim_jobs(1, 30)
    [earlier] = await enqueue(store, "state:m1")  # a report of the same message, not sent yet
    await store.record_part("m1", "sms", 0, "SM-1", job=running)

    def report(row: MessageRow) -> NewJob:
        return NewJob(kind="report", lane="state:m1", payload=b"sent")

    await store.complete_message("m1", job=running, complete=True, report=report)
    [first] = await store.claim_jobs(5, 30)
    assert first.id == earlier  # the lane keeps its order
    assert await store.complete_job(first.id, fence=first.fence)
    [second] = await store.claim_jobs(5, 30)
    assert (second.kind, second.payload) == ("report", b"sent")
