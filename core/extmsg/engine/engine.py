"""The delivery engine: runs the store's durable jobs with bounded concurrency.

* **Lanes.** The store hands out only the oldest unfinished job of a lane, and only while no
  other job of that lane runs, so a lane's jobs run one after another while lanes run side by
  side on up to ``workers`` slots.
* **Leases.** A claimed job is leased; the engine renews the leases of the jobs it runs, so a
  job that runs long is never taken for abandoned. A killed process renews nothing: its jobs
  are claimed again once their leases run out, *in doubt* (they may have reached the remote).
* **Fences.** Every claim raises the job's fence, and every write the engine makes for a job
  names the fence it claimed it under: a worker that stalled past its lease (SIGSTOP, a frozen
  VM) and wakes up after another took the job over finds its renewal, its completion, its
  reschedule and its dead letter refused (counted in ``extmsg_fenced_total``). Handlers call
  :meth:`Engine.hold` right before each remote call that sends, which renews the lease under
  the fence or raises :class:`~extmsg.errors.LeaseLost` (or, when the claim or a renewal set
  the lease a moment ago, relies on that).
* **Completion.** A handler may hand its last write to :meth:`Engine.complete_with`, so that
  it and the job's completion are one store write under the fence.
* **Failures** are classified by the caller's ``classify``; retryable ones come back after a
  backoff (:mod:`.retry`), the rest become dead letters and are reported through ``on_dead``.
* **Intake** goes through :class:`.GroupCommit`, so concurrent webhook writes share a
  transaction, and wakes the dispatcher.
* **Acknowledgements first.** Given the requests being answered (``requests``), the dispatcher
  claims new jobs only once none is in flight, or after ``requests_first`` seconds at most: a
  backlog of jobs then takes the time the webhooks leave, and an acknowledgement does not
  queue behind job work. Jobs never starve: a claim waits that long at most.
* **Stopping** stops claiming, lets running jobs finish for a while, then cancels the rest and
  gives them back to the store without counting an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any, Generic, Protocol, TypeVar

import aiohttp
import msgspec

from .. import logcontext, sendguard
from ..config import EngineConfig
from ..errors import LeaseLost, NotYet
from ..logsafe import mask, redact_secrets
from ..metrics import Metrics
from ..models import ErrorVerdict
from ..store.base import Intake, IntakeResult, Job, Store
from .group_commit import GroupCommit
from .retry import RetryPolicy

__all__ = [
    "Classifier",
    "DeadLetterHandler",
    "Engine",
    "FinalWrite",
    "JobHandler",
    "LogContext",
    "Requests",
]

log = logging.getLogger("extmsg.engine")

T = TypeVar("T")

JobHandler = Callable[[Job], Awaitable[None]]
#: What a job's log lines carry beyond its id (channel, request id, texts to keep out): a
#: context manager from :func:`extmsg.logcontext.bind`.
LogContext = Callable[[Job], contextlib.AbstractContextManager[None]]
Classifier = Callable[[Job, BaseException], Awaitable[ErrorVerdict]]
DeadLetterHandler = Callable[[Job, ErrorVerdict], Awaitable[None]]


class Requests(Protocol):
    """The requests being answered (:class:`extmsg.draining.InFlight`)."""

    @property
    def count(self) -> int:
        """Requests in flight now."""

    async def idle(self, timeout: float) -> bool:  # noqa: ASYNC109 - a bound, not a grace
        """Wait until none is in flight, at most ``timeout`` seconds."""


class FinalWrite(Protocol):
    """A handler's last write (:meth:`Engine.complete_with`): with ``complete=True`` it also
    marks the job done, under its fence, in the same store write."""

    def __call__(self, *, complete: bool) -> Awaitable[object]: ...


_MAX_ERROR_TEXT = 2000
_MAX_CODE = 64
#: A hold relies on the lease its claim (or a renewal) set when that was asked for less than
#: this share of a lease ago, instead of writing: the send still has at least a quarter of a
#: lease to start in (see :meth:`Engine.hold`).
_TRUSTED_LEASE_SHARE = 0.25


class _Run:
    """A job this engine holds a lease on."""

    __slots__ = (
        "cancels",
        "final",
        "in_handler",
        "job",
        "leased_at",
        "lost",
        "released",
        "sending",
        "started",
        "worker",
    )

    def __init__(self, job: Job, leased_at: float) -> None:
        self.job = job
        #: When (monotonic) the latest confirmed write that set the lease under this claim
        #: was asked for: the claim itself, a hold or a renewal. The lease runs until at
        #: least ``leased_at + lease_seconds``.
        self.leased_at = leased_at
        self.final: FinalWrite | None = None  # the handler's last write, made with completion
        self.worker: asyncio.Task[None] | None = None
        self.started = False  # its handler was called
        self.in_handler = False  # its worker is inside the handler now
        self.cancels = 0  # cancellations of the worker that were meant for its handler
        self.released = False
        self.lost = False  # another worker took the job over
        self.sending = False  # the handler held the job to send: a call may have gone out

    def stop_handler(self) -> None:
        """Cancel the handler, not the worker: the worker takes the cancellation back once
        the handler has ended, and goes on to record what it has to."""
        if self.in_handler and self.worker is not None:
            self.cancels += 1
            self.worker.cancel()


class Engine:
    """Durable jobs: register a handler per job kind, :meth:`start`, :meth:`intake` work.

    :param classify: turns a handler's exception into a verdict (retryable or not).
    :param on_dead: called once when a job gives up, before it is buried; what it raises is
        logged and noted in the job's last error.
    :param clock: wall-clock time, the time base of the store's ``next_at``.
    :param poll_interval: the longest the dispatcher sleeps without being woken; bounds how
        late it notices work it was not told about (other processes, expired leases).
    :param intake_max_batch: items after which a group commit is written without waiting.
    :param counts_interval: how often queue depth metrics are refreshed from the store.
    :param log_context: binds what a job's log lines carry (its handler's included), besides
        its id and message id.
    :param requests: the requests being answered; while any is in flight, new claims wait for
        them, at most ``requests_first`` seconds.
    """

    def __init__(
        self,
        store: Store,
        config: EngineConfig,
        *,
        classify: Classifier,
        on_dead: DeadLetterHandler | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 1.0,
        intake_max_batch: int = 256,
        counts_interval: float = 15.0,
        rng: random.Random | None = None,
        log_context: LogContext | None = None,
        requests: Requests | None = None,
        requests_first: float = 0.01,
    ) -> None:
        self.store = store
        self.config = config
        self.policy = RetryPolicy.from_config(config, rng)
        self._classify = classify
        self._on_dead = on_dead
        self._metrics = metrics
        self._clock = clock
        self._poll = max(poll_interval, 0.001)
        self._counts_interval = counts_interval
        self._log_context = log_context
        self._requests = requests
        self._requests_first = requests_first
        self._handlers: dict[str, JobHandler] = {}
        self._runs: dict[int, _Run] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._due: list[float] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._started = False
        self._intake = GroupCommit(
            store,
            window=config.group_commit_ms / 1000.0,
            max_items=intake_max_batch,
            on_commit=self._committed,
            metrics=metrics,
        )

    # -- set-up ---------------------------------------------------------------------------------
    def register(self, kind: str, handler: JobHandler) -> None:
        """Run ``handler`` for jobs of ``kind``; a kind has one handler."""
        if kind in self._handlers:
            raise ValueError(f"a handler for job kind {kind!r} is already registered")
        self._handlers[kind] = handler

    @property
    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    @property
    def running(self) -> bool:
        return self._started and not self._stopping

    @property
    def in_flight(self) -> int:
        """Jobs this engine holds right now."""
        return len(self._runs)

    @property
    def intake_transactions(self) -> int:
        """Transactions the group commit has written."""
        return self._intake.transactions

    async def hold(self, job: Job) -> None:
        """Call right before a remote call that sends: renews the job's lease and checks, in
        one store write, that this claim of it still holds; raises
        :class:`~extmsg.errors.LeaseLost` when another worker took it over (the handler then
        ends without sending, and the engine writes nothing for it). A job that did not come
        from a claim (fence 0, built by hand in a test) has nothing to check.

        No write is needed while the lease this engine last set for the claim — by the claim
        itself, a hold or a renewal, each confirmed under the claim's fence — was asked for
        less than a quarter of a lease ago: nobody can claim the job before that lease runs
        out, so the send may start for half a lease from when it was asked for, exactly as
        after a hold written then."""
        run = self._runs.get(job.id)
        if run is not None and run.job.fence != job.fence:
            run = None  # this engine claimed it again since (its lease ran out while it ran)
        if run is not None:
            run.sending = True
        if job.fence <= 0:
            return
        if run is not None and run.lost:
            raise LeaseLost(job.id, job.fence)
        lease = self.config.lease_seconds
        asked = time.monotonic()
        if run is not None and asked - run.leased_at < lease * _TRUSTED_LEASE_SHARE:
            sendguard.hold_taken(sendguard.Hold(job.id, job.fence, run.leased_at, lease / 2))
            return
        # Until the hold is confirmed, a send from this task is refused (no hold is younger
        # than a negative bound); then it may start for half a lease after it was asked for.
        sendguard.hold_taken(sendguard.Hold(job.id, job.fence, asked, -1.0))
        if not await self.store.hold_job(job.id, job.fence, lease):
            if run is not None:
                run.lost = True
            raise LeaseLost(job.id, job.fence)
        if time.monotonic() - asked > lease / 2:
            # The answer came late (the process or its connection stalled while waiting): the
            # lease it renewed may have run out and the job been taken over meanwhile, so a
            # send now could cross the new holder's. Leave the job to whoever holds it once
            # this lease is over; that attempt is in doubt and looks first.
            if run is not None:
                run.lost = True
            raise LeaseLost(job.id, job.fence)
        if run is not None:
            run.leased_at = max(run.leased_at, asked)
        # The lease now runs until at least ``asked + lease``; a request that starts within
        # ``lease / 2`` of ``asked`` has gone out half a lease before anyone else can claim
        # the job and look whether it arrived (:mod:`extmsg.sendguard` checks, right before
        # the request is written, and refuses it later).
        sendguard.hold_taken(sendguard.Hold(job.id, job.fence, asked, lease / 2))

    async def complete_with(self, job: Job, write: FinalWrite) -> None:
        """Hand over a handler's last write: once the handler has returned, the engine calls
        ``write(complete=True)``, which makes that write and marks the job done in one store
        write under the job's fence, instead of completing the job in a write of its own (a store
        method's ``complete=True``). It raises :class:`~extmsg.errors.LeaseLost` (or answers
        False) when the claim was taken over; then nothing of it is written. If the handler
        fails after all, nothing of it is written either.

        For a job this engine does not run under that claim (a flow called directly, or a
        claim that was taken over), ``write(complete=False)`` is awaited at once, as the
        handler's own write."""
        run = self._runs.get(job.id)
        if run is None or run.job.fence != job.fence or job.fence <= 0 or run.lost:
            await write(complete=False)
            return
        run.final = write

    # -- intake ---------------------------------------------------------------------------------
    async def intake(self, items: Sequence[Intake]) -> list[IntakeResult]:
        """Store messages and jobs durably (shared transaction); return this call's results.

        When it returns, the work is committed and may be acknowledged. When it raises, none of
        ``items`` was stored.
        """
        return await self._intake.submit(items)

    def wake(self) -> None:
        """Tell the dispatcher there may be work to claim now."""
        self._wake.set()

    def _committed(self, items: Sequence[Intake], results: Sequence[IntakeResult]) -> None:
        now = self._clock()
        enqueued = False
        for item, result in zip(items, results, strict=True):
            if item.job is None or not result.accepted:
                continue
            enqueued = True
            if item.job.delay > 0:
                heapq.heappush(self._due, now + item.job.delay)
        if enqueued:
            self.wake()

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start claiming and running jobs (the store must be open)."""
        if self._started:
            return
        self._started = True
        self._stopping = False
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._dispatch(), name="extmsg-engine-dispatch"),
            loop.create_task(self._renew_leases(), name="extmsg-engine-leases"),
        ]
        if self._metrics is not None:
            self._tasks.append(
                loop.create_task(self._refresh_counts(), name="extmsg-engine-counts")
            )
        log.info(
            "delivery engine started: %d workers, job kinds %s",
            self.config.workers,
            ", ".join(self.kinds) or "none",
        )

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 - a grace period
        """Stop claiming; give running jobs ``timeout`` seconds to finish, then cancel them and
        give them back to the store without counting an attempt; write pending intakes."""
        if self._started and not self._stopping:
            self._stopping = True
            self.wake()
            dispatcher, *others = self._tasks
            await asyncio.gather(dispatcher, return_exceptions=True)
            await self._finish_or_release(max(timeout, 0.0))
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            self._tasks = []
            self._started = False
            log.info("delivery engine stopped")
        await self._intake.drain()

    async def _finish_or_release(self, grace: float) -> None:
        if not self._workers:
            return
        _, pending = await asyncio.wait(set(self._workers), timeout=grace)
        if not pending:
            return
        held = list(self._runs.values())
        for run in held:
            if run.in_handler:
                run.released = True
                run.stop_handler()
        # Workers that were recording an outcome get a moment more; then they are cut off too.
        _, stuck = await asyncio.wait(pending, timeout=5.0)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
        back = [run for run in held if (run.released or run.worker in stuck) and not run.lost]
        ids = [run.job.id for run in back]
        self._runs.clear()
        try:
            # A job whose handler had started may have reached the remote before it was cut
            # off (or finished without its outcome being written): it comes back in doubt.
            await self.store.release_jobs(
                ids,
                fences={run.job.id: run.job.fence for run in back},
                in_doubt=[run.job.id for run in back if run.started],
            )
        except Exception:
            log.exception(
                "giving back %d unfinished job(s) failed; they run again once their leases expire",
                len(ids),
            )
            return
        log.warning(
            "stopped with %d job(s) unfinished after %.1fs; they were given back to the queue",
            len(ids),
            grace,
        )

    # -- dispatching ----------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        while not self._stopping:
            try:
                await self._dispatch_once()
            except Exception:
                log.exception("the job dispatcher failed; it goes on in %.1fs", self._poll)
                await self._sleep(self._poll)

    async def _dispatch_once(self) -> None:
        """Claim what free slots allow, then sleep until woken, something is due, or the poll
        interval passed."""
        self._wake.clear()
        free = self.config.workers - len(self._runs)
        if free <= 0:
            await self._sleep(self._poll)  # a finishing job wakes us
            return
        if self._requests is not None and self._requests.count:
            # Acknowledgements first: a job started now would share the loop with them.
            await self._requests.idle(self._requests_first)
            if self._stopping:
                return
            free = self.config.workers - len(self._runs)
        claimed_at = self._clock()
        asked = time.monotonic()  # the claims' leases run until at least a lease after this
        try:
            jobs = await self.store.claim_jobs(free, self.config.lease_seconds)
        except Exception:
            log.exception("claiming jobs failed; trying again in %.1fs", self._poll)
            await self._sleep(self._poll)
            return
        if self._stopping:
            await self._give_back(jobs)
            return
        for job in jobs:
            self._launch(job, asked)
        while self._due and self._due[0] <= claimed_at:
            heapq.heappop(self._due)
        if len(jobs) < free:
            await self._sleep(self._until_due())

    def _until_due(self) -> float:
        if not self._due:
            return self._poll
        # a little past the due time, so the store's clock has passed it as well
        return min(self._poll, max(self._due[0] - self._clock(), 0.0) + 0.005)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _give_back(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        try:
            await self.store.release_jobs(
                [job.id for job in jobs], fences={job.id: job.fence for job in jobs}
            )
        except Exception:
            log.exception("giving back %d claimed job(s) failed", len(jobs))

    def _launch(self, job: Job, leased_at: float) -> None:
        earlier = self._runs.get(job.id)
        if earlier is not None:
            # Claimed again while an earlier claim of it still runs here: that one's lease ran
            # out (the process stalled); it stops and writes nothing.
            earlier.lost = True
            earlier.stop_handler()
        run = _Run(job, leased_at)
        self._runs[job.id] = run
        task = asyncio.get_running_loop().create_task(self._work(run), name=f"extmsg-job-{job.id}")
        run.worker = task
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    # -- running one job ------------------------------------------------------------------------
    async def _work(self, run: _Run) -> None:
        # Bound here, so that the handler (in a copy of this context) has them and the
        # engine's own lines about the job (retry, dead letter) carry them too.
        context: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if self._log_context is not None:
            try:
                context = self._log_context(run.job)
            except Exception:
                log.debug("job %d: its log fields cannot be read", run.job.id, exc_info=True)
        with logcontext.bind(job_id=run.job.id, message_id=run.job.message_id), context:
            await self._run_job(run)

    async def _run_job(self, run: _Run) -> None:
        job = run.job
        claimed_with_completion = False  # the dispatcher was woken while the job completed
        try:
            if job.attempts >= self.policy.max_attempts:
                # Its earlier attempts were lost with their workers (expired leases).
                verdict = ErrorVerdict(
                    retryable=True,
                    reason=job.last_error or "its workers stopped before it finished",
                    code="lease-expired",
                )
                await self._give_up(
                    run, verdict, f"gave up after {job.attempts} attempts", job.attempts
                )
                return
            handler = self._handlers.get(job.kind)
            if handler is None:
                verdict = ErrorVerdict(
                    retryable=False,
                    reason=f"no handler is registered for job kind {job.kind!r}",
                    code="unknown-kind",
                )
                await self._give_up(run, verdict, "unknown job kind", job.attempts + 1)
                return
            started = time.perf_counter()
            error = await self._call_handler(run, handler)
            if self._metrics is not None:
                self._metrics.child(self._metrics.job_seconds, job.kind).observe(
                    time.perf_counter() - started
                )
            if isinstance(error, asyncio.CancelledError):
                if run.released:
                    return
                error = asyncio.CancelledError("the job's handler was cancelled")
            stale = None if error is None else sendguard.stale_hold(error)
            if stale is not None and not run.lost:
                # Its send was refused as it was about to go out late: nothing was sent,
                # nothing is written; whoever claims the job once its lease is over looks first.
                if self._metrics is not None:
                    self._metrics.fenced.labels(job.kind).inc()
                log.warning(
                    "%s (%s, lane %s); it runs again, in doubt, once its lease is over",
                    stale,
                    job.kind,
                    mask(job.lane),
                )
            elif run.lost or (error is not None and sendguard.caused_by_lost_lease(error)):
                self._fenced(job, "its handler's outcome")
            elif error is None:
                # The job's work is done: its slot is free now, so that the dispatcher's next
                # claim can share the completion's commit where writes apply in call order
                # (that claim already sees this job done and may take the next one of its
                # lane). Elsewhere the claim waits for the completion: one made before it
                # could not see the lane's next job and would be made again.
                #
                # There, the completion runs in this task: awaiting it queues its write at once,
                # before the dispatcher runs again (and SQLite applies a queued write whatever
                # becomes of its caller). Elsewhere it gets a task of its own, so that a worker
                # cut off at stop does not cut the write short.
                completing: Awaitable[object] = (
                    self.store.complete_job(job.id, fence=job.fence)
                    if run.final is None
                    else run.final(complete=True)
                )
                self._forget(run)
                claimed_with_completion = self.store.writes_in_call_order
                if claimed_with_completion:
                    self.wake()
                else:
                    completing = asyncio.ensure_future(completing)
                try:
                    completed = await completing is not False
                except LeaseLost:
                    completed = False
                if completed:
                    self._count(job, "done")
                else:
                    self._fenced(job, "its completion")
            else:
                await self._failed(run, error)
        except Exception:
            log.exception(
                "recording the outcome of job %d (%s) failed; it runs again once its lease expires",
                job.id,
                job.kind,
            )
        finally:
            if not run.released:
                self._forget(run)
            if not claimed_with_completion:
                self.wake()

    async def _call_handler(self, run: _Run, handler: JobHandler) -> BaseException | None:
        """Run the job's handler in the worker's own task; answer what it raised, if anything.

        It runs as if in a task of its own, without the cost of one: in a copy of the
        worker's context, so what it sets there (a send hold, a log field) stays its own and
        the engine's lines and writes after it go without; and an engine's cancellation of it
        (:meth:`_Run.stop_handler`: a lease lost, a stop) ends the handler, not the worker.
        A cancellation of the worker itself (cut off at stop) ends the worker as well."""
        worker = run.worker
        assert worker is not None
        run.started = run.in_handler = True
        try:
            await _InContext(_call(handler, run.job), contextvars.copy_context())
        except (KeyboardInterrupt, SystemExit):
            raise  # as from a task: these stop the event loop
        except BaseException as exc:  # the handler's outcome, as a task's would be
            error: BaseException | None = exc
        else:
            error = None
        finally:
            run.in_handler = False
        for _ in range(run.cancels):
            worker.uncancel()
        run.cancels = 0
        if worker.cancelling():
            # Cut off itself (a stop's last resort, the loop closing): it records nothing.
            if isinstance(error, asyncio.CancelledError):
                raise error
            raise asyncio.CancelledError
        return error

    def _forget(self, run: _Run) -> None:
        if self._runs.get(run.job.id) is run:
            del self._runs[run.job.id]

    async def _failed(self, run: _Run, error: BaseException) -> None:
        job = run.job
        attempt = job.attempts + 1
        verdict = await self._verdict(job, error)
        decision = self.policy.decide(attempt, verdict)
        if not decision.retry:
            await self._give_up(run, verdict, decision.why, attempt)
            return
        next_at = self._clock() + decision.delay
        # A send that timed out or lost its connection may have got through.
        in_doubt = run.sending and _may_have_reached(error)
        if not await self.store.reschedule_job(
            job.id, next_at, _error_text(verdict), fence=job.fence, in_doubt=in_doubt
        ):
            self._fenced(job, "its reschedule")
            return
        heapq.heappush(self._due, next_at)
        self._count(job, "retry")
        log.log(
            logging.DEBUG if isinstance(error, NotYet) else logging.WARNING,
            "job %d (%s, lane %s) failed on attempt %d of %d, next try in %.1fs: %s",
            job.id,
            job.kind,
            mask(job.lane),
            attempt,
            self.policy.max_attempts,
            decision.delay,
            mask(verdict.reason),
        )

    async def _verdict(self, job: Job, error: BaseException) -> ErrorVerdict:
        """The classifier's verdict, its texts capped: a reason is stored, logged and reported
        to Unblu, so one that quotes a huge input must not carry all of it along."""
        try:
            verdict = await self._classify(job, error)
        except Exception:
            log.exception(
                "classifying the error of job %d (%s) failed; treating it as retryable",
                job.id,
                job.kind,
            )
            verdict = ErrorVerdict(retryable=True, reason=f"{type(error).__name__}: {_str(error)}")
        # Stored, shown by 'extmsg outbox' and reported to Unblu: without the secrets a
        # provider's error may quote (a URL with its token, the auth token itself).
        reason, code = _truncate(redact_secrets(verdict.reason)), verdict.code
        if code is not None and len(code) > _MAX_CODE:
            code = code[: _MAX_CODE - 1] + "…"
        if reason is verdict.reason and code is verdict.code:
            return verdict
        return msgspec.structs.replace(verdict, reason=reason, code=code)

    async def _give_up(self, run: _Run, verdict: ErrorVerdict, why: str, attempts: int) -> None:
        """Report the job as failed, then make it a dead letter.

        Reporting comes first: if the process dies in between, the job runs (and fails, and
        is reported) again, rather than staying buried without anyone being told. Neither
        happens when another worker took the job over meanwhile: it may yet succeed there.

        A job that ran out of retries (the remote was down longer than they last) holds its
        lane: it is the one a person retries once the remote is back, and the lane's later jobs
        wait for it, so that order holds. A job the remote refused for good, or one whose
        workers kept dying (a poison job), lets its lane go on: retrying it cannot be expected
        to help, and its conversation should not stall behind it.
        """
        job = run.job
        if job.fence > 0 and not await self.store.hold_job(
            job.id, job.fence, self.config.lease_seconds
        ):
            self._fenced(job, "its failure report")
            return
        hold = verdict.retryable and verdict.code != "lease-expired"
        final = msgspec.structs.replace(verdict, reason=f"{verdict.reason} ({why})")
        error = _error_text(final)
        if self._on_dead is not None:
            try:
                await self._on_dead(job, final)
            except Exception as exc:
                log.error(
                    "reporting dead job %d (%s) as failed raised %s",
                    job.id,
                    job.kind,
                    type(exc).__name__,
                    exc_info=exc,
                )
                error = _truncate(f"{error}; reporting the failure raised {type(exc).__name__}")
        if not await self.store.bury_job(job.id, error, fence=job.fence, hold=hold):
            self._fenced(job, "its dead letter")
            return
        self._count(job, "dead")
        log.error(
            "job %d (%s, lane %s) is a dead letter after %d attempt(s): %s%s",
            job.id,
            job.kind,
            mask(job.lane),
            attempts,
            mask(final.reason),
            f"; its lane waits for it: 'extmsg outbox retry {job.id}' runs it again first,"
            f" 'extmsg outbox skip {job.id}' lets the lane go on without it"
            if hold
            else "",
        )

    def _count(self, job: Job, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.child(self._metrics.jobs_finished, job.kind, outcome).inc()

    def _fenced(self, job: Job, what: str) -> None:
        """This worker's claim of ``job`` was taken over: ``what`` was not written."""
        if self._metrics is not None:
            self._metrics.fenced.labels(job.kind).inc()
        log.warning(
            "job %d (%s, lane %s): another worker took it over after this one's lease ran out;"
            " %s was not written (claim %d)",
            job.id,
            job.kind,
            mask(job.lane),
            what,
            job.fence,
        )

    # -- housekeeping ---------------------------------------------------------------------------
    async def _renew_leases(self) -> None:
        lease = self.config.lease_seconds
        while True:
            await asyncio.sleep(max(lease / 3.0, 0.01))
            runs = dict(self._runs)
            if not runs:
                continue
            asked = time.monotonic()
            try:
                renewed = set(
                    await self.store.renew_lease(
                        list(runs), lease, fences={i: run.job.fence for i, run in runs.items()}
                    )
                )
            except Exception:
                log.exception("renewing the leases of %d running job(s) failed", len(runs))
                continue
            for i in renewed:
                if (run := runs.get(i)) is not None:
                    # confirmed under its fence: its lease runs until a lease after ``asked``
                    run.leased_at = max(run.leased_at, asked)
            lost = [run for i, run in runs.items() if i not in renewed and run.in_handler]
            for run in lost:
                # Another worker holds it now: this handler stops before it sends again.
                run.lost = True
                run.stop_handler()
            if lost:
                log.warning(
                    "lost the lease of running job(s) %s to another worker; stopped them here",
                    ", ".join(str(run.job.id) for run in lost),
                )

    async def _refresh_counts(self) -> None:
        metrics = self._metrics
        assert metrics is not None
        while True:
            try:
                counts = await self.store.job_counts()
                now = time.time()
                due_at = await self.store.oldest_due_at(now)
            except Exception:
                log.warning("reading job counts failed", exc_info=True)
            else:
                for state in ("ready", "running", "dead"):
                    metrics.queue_depth.labels(state).set(counts.get(state, 0))
                metrics.dead_letters.set(counts.get("dead", 0))
                metrics.lanes_held.set(counts.get("held", 0))
                metrics.set_oldest_due(due_at, now)
            await asyncio.sleep(self._counts_interval)


async def _call(handler: JobHandler, job: Job) -> None:
    await handler(job)


class _InContext(Generic[T]):
    """Await ``coro`` with each of its steps run in ``context``, as a task created with that
    context would run it: the context variables it sets stay in ``context``."""

    __slots__ = ("_context", "_coro")

    def __init__(self, coro: Coroutine[Any, Any, T], context: contextvars.Context) -> None:
        self._coro = coro
        self._context = context

    def __await__(self) -> Generator[Any, Any, T]:
        coro, run = self._coro, self._context.run
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                if thrown is None:
                    step = run(coro.send, sent)
                else:
                    step, thrown = run(coro.throw, thrown), None
            except StopIteration as end:
                return end.value  # type: ignore[no-any-return]
            try:
                sent = yield step  # to the task: a future to wait for, or None for a turn
            except GeneratorExit:
                run(coro.close)
                raise
            except BaseException as exc:  # a cancellation, or whatever the task throws in
                sent, thrown = None, exc


def _may_have_reached(error: BaseException) -> bool:
    """Whether a failed call may have got through to the remote: it timed out or its
    connection dropped once it was under way, as opposed to an answer (the remote said no) or
    no connection at all. Looks through the causes (a client wraps what it caught)."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, aiohttp.ClientConnectorError | ConnectionRefusedError):
            return False  # never connected
        if isinstance(
            cause,
            TimeoutError
            | aiohttp.ServerDisconnectedError
            | aiohttp.ClientPayloadError
            | aiohttp.ClientOSError
            | ConnectionError,
        ):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _error_text(verdict: ErrorVerdict) -> str:
    code = f" [code {verdict.code}]" if verdict.code else ""
    return _truncate(f"{verdict.reason}{code}")


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 1] + "…"


def _str(error: BaseException) -> str:
    """``str(error)``, or a stand-in when the error cannot even say what it is."""
    try:
        return str(error)
    except Exception:
        return "(an error that cannot be shown)"
