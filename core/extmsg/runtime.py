"""What a running ``extmsg serve`` holds: configuration, plugins, store, engine, Unblu client,
channels and their Unblu ids. The flows, the Unblu endpoint and the media links read it; how
it is started and stopped is :mod:`extmsg.lifecycle`, which sits above all of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from .appkeys import RUNTIME
from .asyncutil import BackgroundTasks
from .config import Config, register_config_secrets
from .errors import RetryableError
from .metrics import Metrics
from .models import Channel, InboundEvent, MessengerType
from .plugins import Hooks
from .store import Store, open_store
from .store.base import IntakeResult

if TYPE_CHECKING:
    from .engine import Engine
    from .unblu.client import UnbluClient
    from .workers import WorkerRole

__all__ = ["RUNTIME", "Runtime"]

log = logging.getLogger("extmsg.runtime")

#: Stores events of the given channels durably; one result per event.
Intake = Callable[[Sequence[Channel], Sequence[InboundEvent]], Awaitable[list[IntakeResult]]]


class Runtime:
    """Everything a running ``extmsg serve`` holds; one per application."""

    def __init__(self, config: Config, hooks: Hooks, store: Store | None = None) -> None:
        self.config = config
        self.hooks = hooks
        self.store = store if store is not None else open_store(config)
        self.metrics = Metrics()
        self.messengers: dict[str, MessengerType] = hooks.messenger_types()
        register_config_secrets(config, self.messengers)  # before anything can log them
        self.channels: dict[str, Channel] = {ch.name: ch for ch in config.runtime_channels()}
        self.tasks = BackgroundTasks()
        self.engine: Engine | None = None
        self.unblu: UnbluClient | None = None
        self.unblu_channel_ids: dict[str, str] = {}
        self.ended_webhook_ids: dict[str, str] = {}
        """Channel → id of its ``conversation.ended`` webhook registration in Unblu."""
        self.started_at = time.monotonic()
        self.ready = False
        self.plugins_started = False
        self.provisioned_event = asyncio.Event()
        self.unblu_lookup_warned = False
        """Whether the warning that Unblu refuses the message log was logged (once a process)."""
        self.provisioning = False
        """Whether channels are provisioned in Unblu at start (jobs wait for their ids)."""
        self.intake: Intake | None = None
        """Stores inbound events durably; set at start (:mod:`extmsg.lifecycle`)."""
        self.worker: WorkerRole | None = None
        """This process's place among ``serve --workers N`` (:mod:`extmsg.workers`); None for a
        server of one process."""

    @property
    def leads(self) -> bool:
        """Whether this process does the once-per-server work: provisioning, housekeeping."""
        return self.worker is None or self.worker.leads

    # -- look-ups used by the flows -----------------------------------------------------------
    def channel(self, name: str) -> Channel:
        try:
            return self.channels[name]
        except KeyError:
            raise RetryableError(f"channel {name!r} is not configured any more") from None

    def channels_of(self, messenger: str) -> list[Channel]:
        return [ch for ch in self.channels.values() if ch.messenger == messenger]

    def unblu_client(self) -> UnbluClient:
        if self.unblu is None:
            raise RetryableError("no Unblu server is configured ([unblu] base_url)")
        return self.unblu

    def unblu_channel_id(self, channel: str) -> str:
        try:
            return self.unblu_channel_ids[channel]
        except KeyError:
            raise RetryableError(f"channel {channel!r} is not provisioned in Unblu yet") from None

    async def accept(self, channel: str, events: Sequence[InboundEvent]) -> list[IntakeResult]:
        """Store events that did not come through an HTTP route (mail from SMTP or IMAP).

        Returns when they and their jobs are committed: only then may the source be
        acknowledged. Duplicates (same provider message id) come back with ``accepted=False``.
        """
        if self.intake is None:
            raise RetryableError("extmsg is not started yet; nothing was stored")
        return await self.intake([self.channel(channel)], events)

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        """Whether this instance takes traffic (started, not stopping, every check holds),
        and each check by name: store open, plugins started, every channel known in Unblu
        (the engine takes no jobs before), engine running."""
        checks = {
            "store": self.store.is_open,
            "plugins": self.plugins_started,
            "channels": self.channels_known,
            "engine": self.engine is not None and self.engine.running,
        }
        ok = self.ready and all(checks.values())
        if self.worker is None:
            return ok, checks
        # One of several processes: ready only while every one of them is.
        board = self.worker.board
        board.set(self.worker.index, ok)
        checks["workers"] = board.all_ready()
        return ok and checks["workers"], checks

    def worker_states(self) -> dict[str, bool] | None:
        """Each worker's readiness by index (``serve --workers N``), or None."""
        if self.worker is None:
            return None
        self.readiness()
        return {str(i): ready for i, ready in enumerate(self.worker.board.states())}

    @property
    def channels_known(self) -> bool:
        """Every channel has its Unblu id, or none is provisioned here: jobs can run."""
        return not self.provisioning or all(n in self.unblu_channel_ids for n in self.channels)

    @property
    def provisioned(self) -> bool:
        return self.provisioned_event.is_set()
