"""Prometheus metrics, one registry per running application.

Metrics live on a :class:`Metrics` object rather than module globals so that several
applications (tests, the sandbox beside ``serve``) never share counters.

In a server of several worker processes (``extmsg serve --workers N``) every metric is kept in
``prometheus_client``'s multiprocess files (:func:`use_multiprocess`) and a scrape adds up all
workers: counters and histograms sum, the gauges (read from the shared store at each scrape)
take the most recent value.
"""

from __future__ import annotations

import asyncio
import os
import time
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as _values
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import sendguard

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "call_outcome", "use_multiprocess"]

_multiprocess_dir: str | None = None


def use_multiprocess(path: str) -> None:
    """Keep the values of metrics made from now on in files under ``path``, shared by the
    worker processes of one server (called in each worker before its application is built)."""
    global _multiprocess_dir
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    _values.ValueClass = _values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _multiprocess_dir = path


def call_outcome(error: BaseException | None) -> str:
    """The ``outcome`` label of a call to a remote: ``ok``, ``not_found`` (Unblu answered 404),
    ``retryable`` or ``permanent`` (as the error says of itself), or ``error`` (an error that
    does not say; the plugin's ``extmsg_classify_error`` decides for the job later)."""
    if error is None:
        return "ok"
    if getattr(error, "status", None) == 404:
        return "not_found"
    retryable: Any = getattr(error, "retryable", None)
    if isinstance(retryable, bool):
        return "retryable" if retryable else "permanent"
    return "error"


class _TimedCall:
    """:meth:`Metrics.timed_call`'s ``with`` block (a class: a generator's context manager
    costs twice as much, around every call to a provider)."""

    __slots__ = ("_call", "_metrics", "_remote", "_started")

    def __init__(self, metrics: Metrics, remote: str, call: str) -> None:
        self._metrics = metrics
        self._remote = remote
        self._call = call
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.monotonic()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and (
            isinstance(exc, asyncio.CancelledError)
            # Refused before it was written (the job's hold was stale): no call.
            or sendguard.caused_by_lost_lease(exc)
        ):
            return
        self._metrics.observe_call(self._remote, self._call, exc, time.monotonic() - self._started)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.inbound_requests = Counter(
            "extmsg_inbound_requests_total",
            "Provider requests received, by messenger, route and HTTP status answered.",
            ["messenger", "route", "status"],
            registry=r,
        )
        self.inbound_events = Counter(
            "extmsg_inbound_events_total",
            "Events parsed from provider requests, by channel, kind and outcome.",
            ["channel", "kind", "outcome"],
            registry=r,
        )
        self.unblu_calls = Counter(
            "extmsg_unblu_calls_total",
            "Calls received from Unblu on channel endpoints, by channel, call and status.",
            ["channel", "call", "status"],
            registry=r,
        )
        self.jobs_finished = Counter(
            "extmsg_jobs_finished_total",
            "Jobs that ended an attempt, by kind and outcome (done, retry, dead).",
            ["kind", "outcome"],
            registry=r,
        )
        self.fenced = Counter(
            "extmsg_fenced_total",
            "Job outcomes not written because another worker had taken the job over (this"
            " one's lease ran out while it ran), by job kind.",
            ["kind"],
            registry=r,
        )
        self.job_seconds = Histogram(
            "extmsg_job_seconds",
            "Time one job attempt took, by kind.",
            ["kind"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "extmsg_jobs",
            "Jobs in the store by state (ready, running, dead).",
            ["state"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.dead_letters = Gauge(
            "extmsg_dead_letters",
            "Jobs that gave up and wait for a person.",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.lanes_held = Gauge(
            "extmsg_lanes_held",
            "Lanes (conversations) whose later jobs wait behind a dead letter that ran out of"
            " retries, until it is retried, skipped or purged.",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.intake_batch = Histogram(
            "extmsg_intake_batch_size",
            "Work items written per group-committed transaction.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.in_doubt = Counter(
            "extmsg_in_doubt_total",
            "Attempts that looked before sending again because an earlier one may have reached "
            "the remote, by channel, direction and outcome (found, not_found, unknown, "
            "lookup_failed).",
            ["channel", "direction", "outcome"],
            registry=r,
        )
        self.statuses_unmatched = Counter(
            "extmsg_statuses_unmatched_total",
            "Provider statuses dropped because no message extmsg sent matches them (e.g. a"
            " status of another app on the same WhatsApp business account), by channel.",
            ["channel"],
            registry=r,
        )
        self.segments = Counter(
            "extmsg_sms_segments_total",
            "SMS segments sent, by channel and encoding (GSM-7, UCS-2).",
            ["channel", "encoding"],
            registry=r,
        )

        self.remote_calls = Counter(
            "extmsg_remote_calls_total",
            "Calls extmsg made to Unblu and to providers, by remote (unblu or the messenger),"
            " call and outcome (ok, not_found, retryable, permanent, error).",
            ["remote", "call", "outcome"],
            registry=r,
        )
        self.remote_call_seconds = Histogram(
            "extmsg_remote_call_seconds",
            "Time a call to Unblu or to a provider took, by remote and call.",
            ["remote", "call"],
            registry=r,
        )
        self.oldest_ready_job = Gauge(
            "extmsg_oldest_ready_job_seconds",
            "How long the oldest job that is due has waited to be run (0 when none waits).",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        # Label children by key: a call to a remote is on the hot path of every message.
        self._call_counters: dict[tuple[str, str, str], Any] = {}
        self._call_timers: dict[tuple[str, str], Any] = {}
        self._children: dict[tuple[int, tuple[Any, ...]], Any] = {}

    def child(self, metric: Any, *labels: Any) -> Any:
        """``metric.labels(*labels)``, looked up once per set of values: ``labels()`` takes a
        lock and builds its key at every call, some microseconds on every message."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_call(
        self, remote: str, call: str, error: BaseException | None, seconds: float
    ) -> None:
        """Count one call to ``remote`` and time it; ``error`` is what it raised, if anything."""
        key = (remote, call, call_outcome(error))
        counter = self._call_counters.get(key)
        if counter is None:
            counter = self._call_counters[key] = self.remote_calls.labels(*key)
        counter.inc()
        timer = self._call_timers.get(key[:2])
        if timer is None:
            timer = self._call_timers[key[:2]] = self.remote_call_seconds.labels(remote, call)
        timer.observe(seconds)

    def timed_call(self, remote: str, call: str) -> _TimedCall:
        """Count and time the call made in the ``with`` block; a cancelled one is not counted
        (it was stopped here, the remote said nothing)."""
        return _TimedCall(self, remote, call)

    def set_oldest_due(self, due_at: float | None, now: float) -> None:
        """Set ``extmsg_oldest_ready_job_seconds`` from the store's ``oldest_due_at(now)``."""
        self.oldest_ready_job.set(0.0 if due_at is None else max(0.0, now - due_at))

    def render(self) -> bytes:
        if _multiprocess_dir is not None:
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=_multiprocess_dir)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
