"""The delivery engine: durable jobs per lane, retries, dead letters, group-committed intake."""

from __future__ import annotations

from .engine import Classifier, DeadLetterHandler, Engine, FinalWrite, JobHandler, Requests
from .group_commit import GroupCommit
from .retry import Decision, RetryPolicy

__all__ = [
    "Classifier",
    "DeadLetterHandler",
    "Decision",
    "Engine",
    "FinalWrite",
    "GroupCommit",
    "JobHandler",
    "Requests",
    "RetryPolicy",
]
