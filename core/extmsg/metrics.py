"""Prometheus metrics, one registry per running application.

Metrics live on a :class:`Metrics` object rather than module globals so that several
applications (tests, the sandbox beside ``serve``) never share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


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
        )
        self.dead_letters = Gauge(
            "extmsg_dead_letters", "Jobs that gave up and wait for a person.", registry=r
        )
        self.lanes_held = Gauge(
            "extmsg_lanes_held",
            "Lanes (conversations) whose later jobs wait behind a dead letter that ran out of"
            " retries, until it is retried, skipped or purged.",
            registry=r,
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
