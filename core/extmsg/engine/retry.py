"""When a failed job runs again, and when it gives up.

Exponential backoff with *full jitter* (a random delay between zero and the exponential cap)
spreads the retries of many jobs that failed together, e.g. when a provider was down, so they
do not hit it again in lockstep. A delay the remote asked for (``Retry-After``) is a floor.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from ..config import EngineConfig
from ..models import ErrorVerdict

__all__ = ["Decision", "RetryPolicy"]


class Decision(NamedTuple):
    """What to do after a failed attempt: retry after ``delay`` seconds, or give up."""

    retry: bool
    delay: float = 0.0
    why: str = ""
    """Why the job gives up (empty when it retries)."""


class RetryPolicy:
    """Backoff and give-up rule of the delivery engine.

    :param max_attempts: attempts a job gets in all; the last failure makes it a dead letter.
    :param backoff_initial: the cap of the first retry's delay; it doubles with every attempt.
    :param backoff_max: the largest cap (a remote's ``retry_after`` may still ask for more).
    """

    def __init__(
        self,
        *,
        max_attempts: int,
        backoff_initial: float,
        backoff_max: float,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if backoff_initial <= 0 or backoff_max <= 0:
            raise ValueError("backoff_initial and backoff_max must be positive")
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret

    @classmethod
    def from_config(cls, config: EngineConfig, rng: random.Random | None = None) -> RetryPolicy:
        return cls(
            max_attempts=config.max_attempts,
            backoff_initial=config.backoff_initial,
            backoff_max=config.backoff_max,
            rng=rng,
        )

    def cap(self, attempt: int) -> float:
        """The largest backoff after failed attempt number ``attempt`` (1-based)."""
        exponent = min(max(attempt - 1, 0), 64)
        return float(min(self.backoff_max, self.backoff_initial * 2.0**exponent))

    def backoff(self, attempt: int) -> float:
        """A full-jitter delay after failed attempt number ``attempt``: uniform in [0, cap]."""
        return self._rng.uniform(0.0, self.cap(attempt))

    def decide(self, attempt: int, verdict: ErrorVerdict) -> Decision:
        """The decision after attempt number ``attempt`` (1-based) failed with ``verdict``."""
        if not verdict.retryable:
            return Decision(retry=False, why="permanent error")
        if attempt >= self.max_attempts:
            return Decision(retry=False, why=f"gave up after {attempt} attempts")
        delay = self.backoff(attempt)
        if verdict.retry_after is not None:
            delay = max(delay, verdict.retry_after)
        return Decision(retry=True, delay=delay)
