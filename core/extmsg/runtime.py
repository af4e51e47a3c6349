"""The running server's parts and their order of start and stop.

Start: store (migrations) → Unblu client → plugins' ``extmsg_startup`` → delivery engine →
channel provisioning in Unblu (retried in the background until it succeeds) and a check that
Unblu lets us look messages up (a warning when it does not) → ready. Until every channel has
its Unblu id (from the store, or provisioned by this instance or another), the engine takes no
jobs: they wait, instead of failing on "not provisioned yet" and using up their attempts;
intake goes on meanwhile.
Stop, in reverse: not ready → engine finishes or releases in-flight jobs → plugins'
``extmsg_shutdown`` → Unblu client → store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from .appkeys import RUNTIME
from .asyncutil import BackgroundTasks
from .config import Config, register_config_secrets
from .errors import RetryableError
from .metrics import Metrics
from .models import Channel, ErrorVerdict, InboundEvent, MessengerType
from .plugins import Hooks
from .store import Store, open_store
from .store.base import IntakeResult, Job

if TYPE_CHECKING:
    from .engine import Engine
    from .unblu.client import UnbluClient

__all__ = ["RUNTIME", "Runtime"]

log = logging.getLogger("extmsg.runtime")


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
        self.started_at = time.monotonic()
        self.ready = False
        self.plugins_started = False
        self._provisioned = asyncio.Event()
        self.unblu_lookup_warned = False
        """Whether the warning that Unblu refuses the message log was logged (once a process)."""
        self._provisioning = False  # channels are provisioned in Unblu at start

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
        from .flows.accept import accept_events

        return await accept_events(self, [self.channel(channel)], events)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, app: web.Application) -> None:
        from .engine import Engine
        from .flows import register_jobs
        from .unblu.provisioning import load_channel_ids

        await self.store.open()
        await load_channel_ids(self)
        u = self.config.unblu
        if u.base_url:
            from .unblu.client import UnbluClient

            self.unblu = UnbluClient(
                u.base_url,
                u.username,
                u.password,
                u.api_version,
                timeout=u.timeout,
                observer=functools.partial(self.metrics.observe_call, "unblu"),
            )
        self.engine = Engine(
            self.store,
            self.config.engine,
            classify=self._classify,
            on_dead=self._on_dead,
            metrics=self.metrics,
            log_context=self._log_context,
        )
        register_jobs(self)
        await self.hooks.startup(app, self.config)
        self.plugins_started = True
        self._provisioning = self.unblu is not None and u.provision and bool(self.channels)
        await self._start_engine_when_known()
        if self._provisioning:
            self.tasks.create(self._provision_until_done(), name="provision-channels")
        if self.unblu is not None:
            from .flows.posted import check_lookup

            self.tasks.create(check_lookup(self), name="check-unblu-lookup")
        self.tasks.create(self._housekeeping(), name="housekeeping")
        self.ready = True
        log.info(
            "extmsg ready: %d channel(s), Unblu %s, in %.0f ms",
            len(self.channels),
            u.api_version if self.unblu else "not configured",
            (time.monotonic() - self.started_at) * 1000,
        )

    async def stop(self, app: web.Application) -> None:
        self.ready = False
        await self.tasks.cancel_all()
        if self.engine is not None:
            await self.engine.stop(self.config.server.shutdown_timeout)
        if self.plugins_started:
            await self.hooks.shutdown(app, self.config)
        if self.unblu is not None:
            await self.unblu.close()
        if self.store.is_open:
            await self.store.close()
        log.info("extmsg stopped")

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
        return self.ready and all(checks.values()), checks

    @property
    def channels_known(self) -> bool:
        """Every channel has its Unblu id, or none is provisioned here: jobs can run."""
        return not self._provisioning or all(n in self.unblu_channel_ids for n in self.channels)

    async def _start_engine_when_known(self) -> None:
        if self.engine is None or self.engine.running:
            return
        if self.channels_known:
            await self.engine.start()
        else:
            missing = sorted(set(self.channels) - set(self.unblu_channel_ids))
            log.info("jobs wait until channel(s) %s are provisioned in Unblu", ", ".join(missing))

    async def _provision_until_done(self) -> None:
        from .unblu.provisioning import load_channel_ids, provision_channels

        delay = 1.0
        while True:
            try:
                await provision_channels(self)
            except Exception as exc:
                log.warning(
                    "provisioning channels in Unblu failed, retrying in %.0fs: %s", delay, exc
                )
                # Another instance may have provisioned them meanwhile.
                try:
                    await load_channel_ids(self)
                except Exception:
                    log.warning("reading the channels' Unblu ids failed", exc_info=True)
                await self._start_engine_when_known()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            self._provisioned.set()
            await self._start_engine_when_known()
            if self.engine is not None:
                self.engine.wake()
            return

    async def _housekeeping(self, every: float = 600.0) -> None:
        """Drop published files whose links have expired, finished jobs past keeping, and the
        contents of finished jobs past ``[store] retention_days``."""
        keep = self.config.engine.keep_done_hours * 3600
        retention = self.config.store.retention_days * 86400
        while True:
            try:
                media = await self.store.purge_media(time.time())
                jobs = await self.store.purge_jobs(("done",), older_than=keep)
                contents = await self.store.purge_payloads(retention) if retention else 0
            except Exception:
                log.exception("housekeeping failed; trying again later")
            else:
                if media or jobs or contents:
                    log.info(
                        "purged %d expired media file(s), %d finished job(s), the contents of"
                        " %d finished job(s) past retention",
                        media,
                        jobs,
                        contents,
                    )
            await asyncio.sleep(every)

    @property
    def provisioned(self) -> bool:
        return self._provisioned.is_set()

    # -- engine callbacks ----------------------------------------------------------------------
    async def _classify(self, job: Job, error: BaseException) -> ErrorVerdict:
        from .flows import channel_of_job

        return await self.hooks.classify_error(channel_of_job(self, job), error)

    def _log_context(self, job: Job) -> contextlib.AbstractContextManager[None]:
        from .flows import job_log_context

        return job_log_context(job)

    async def _on_dead(self, job: Job, verdict: ErrorVerdict) -> None:
        from .flows import on_dead

        await on_dead(self, job, verdict)


async def runtime_context(app: web.Application) -> AsyncIterator[None]:
    """aiohttp ``cleanup_ctx`` running :meth:`Runtime.start` and :meth:`Runtime.stop`."""
    runtime = app[RUNTIME]
    try:
        await runtime.start(app)
    except BaseException:
        await runtime.stop(app)
        raise
    yield
    await runtime.stop(app)
