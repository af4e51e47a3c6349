"""The running server's parts and their order of start and stop.

Start: store (migrations) → Unblu client → plugins' ``extmsg_startup`` → delivery engine →
channel provisioning in Unblu (retried in the background until it succeeds) and a check that
Unblu lets us look messages up (a warning when it does not) → ready. Until every channel has
its Unblu id (from the store, or provisioned by this instance or another), the engine takes no
jobs: they wait, instead of failing on "not provisioned yet" and using up their attempts;
intake goes on meanwhile.
Stop, in reverse: not ready → engine finishes or releases in-flight jobs → plugins'
``extmsg_shutdown`` → Unblu client → store.

This module wires the layers below it (runtime state, flows, engine, Unblu provisioning)
together; none of them imports it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from .appkeys import RUNTIME
from .draining import IN_FLIGHT
from .engine import Engine
from .flows import channel_of_job, job_log_context, on_dead, register_jobs
from .flows.accept import accept_events
from .flows.posted import check_lookup
from .models import ErrorVerdict
from .runtime import Runtime
from .store.base import Job
from .unblu.client import UnbluClient
from .unblu.provisioning import load_channel_ids, provision_channels

__all__ = ["runtime_context", "start", "stop"]

log = logging.getLogger("extmsg.runtime")


async def start(runtime: Runtime, app: web.Application) -> None:
    config = runtime.config
    await runtime.store.open()
    await load_channel_ids(runtime)
    u = config.unblu
    if u.base_url:
        runtime.unblu = UnbluClient(
            u.base_url,
            u.username,
            u.password,
            u.api_version,
            timeout=u.timeout,
            observer=functools.partial(runtime.metrics.observe_call, "unblu"),
        )
    runtime.engine = Engine(
        runtime.store,
        config.engine,
        classify=functools.partial(_classify, runtime),
        on_dead=functools.partial(on_dead, runtime),
        metrics=runtime.metrics,
        log_context=job_log_context,
        requests=app.get(IN_FLIGHT),
    )
    register_jobs(runtime)
    runtime.intake = functools.partial(accept_events, runtime)
    await runtime.hooks.startup(app, config)
    runtime.plugins_started = True
    runtime.provisioning = runtime.unblu is not None and u.provision and bool(runtime.channels)
    await _start_engine_when_known(runtime)
    # Once per server: the other workers of ``serve --workers N`` leave this to worker 0.
    if runtime.provisioning and runtime.leads:
        runtime.tasks.create(_provision_until_done(runtime), name="provision-channels")
    elif runtime.provisioning and not runtime.channels_known:
        runtime.tasks.create(_await_channel_ids(runtime), name="await-channel-ids")
    if runtime.unblu is not None and runtime.leads:
        runtime.tasks.create(check_lookup(runtime), name="check-unblu-lookup")
    if runtime.leads:
        runtime.tasks.create(_housekeeping(runtime), name="housekeeping")
    if runtime.worker is not None:
        runtime.tasks.create(_publish_readiness(runtime), name="publish-readiness")
    runtime.ready = True
    log.info(
        "extmsg ready: %d channel(s), Unblu %s, in %.0f ms",
        len(runtime.channels),
        u.api_version if runtime.unblu else "not configured",
        (time.monotonic() - runtime.started_at) * 1000,
    )


async def stop(runtime: Runtime, app: web.Application) -> None:
    runtime.ready = False
    if runtime.worker is not None:
        runtime.worker.board.set(runtime.worker.index, False)
    await runtime.tasks.cancel_all()
    if runtime.engine is not None:
        await runtime.engine.stop(runtime.config.server.shutdown_timeout)
    if runtime.plugins_started:
        await runtime.hooks.shutdown(app, runtime.config)
    if runtime.unblu is not None:
        await runtime.unblu.close()
    if runtime.store.is_open:
        await runtime.store.close()
    log.info("extmsg stopped")


async def runtime_context(app: web.Application) -> AsyncIterator[None]:
    """aiohttp ``cleanup_ctx`` running :func:`start` and :func:`stop`."""
    runtime = app[RUNTIME]
    try:
        await start(runtime, app)
    except BaseException:
        await stop(runtime, app)
        raise
    yield
    await stop(runtime, app)


async def _start_engine_when_known(runtime: Runtime) -> None:
    if runtime.engine is None or runtime.engine.running:
        return
    if runtime.channels_known:
        await runtime.engine.start()
    else:
        missing = sorted(set(runtime.channels) - set(runtime.unblu_channel_ids))
        log.info("jobs wait until channel(s) %s are provisioned in Unblu", ", ".join(missing))


async def _provision_until_done(runtime: Runtime) -> None:
    delay = 1.0
    while True:
        try:
            await provision_channels(runtime)
        except Exception as exc:
            log.warning("provisioning channels in Unblu failed, retrying in %.0fs: %s", delay, exc)
            # Another instance may have provisioned them meanwhile.
            try:
                await load_channel_ids(runtime)
            except Exception:
                log.warning("reading the channels' Unblu ids failed", exc_info=True)
            await _start_engine_when_known(runtime)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)
            continue
        runtime.provisioned_event.set()
        await _start_engine_when_known(runtime)
        if runtime.engine is not None:
            runtime.engine.wake()
        return


async def _await_channel_ids(runtime: Runtime, every: float = 0.1) -> None:
    """A worker other than the first: take the channels' Unblu ids from the store once worker
    0 has provisioned them, then let the engine take jobs."""
    while not runtime.channels_known:
        await asyncio.sleep(every)
        try:
            await load_channel_ids(runtime)
        except Exception:
            log.warning("reading the channels' Unblu ids failed", exc_info=True)
    await _start_engine_when_known(runtime)


async def _publish_readiness(runtime: Runtime, every: float = 0.05) -> None:
    """Keep this worker's readiness on the board the other workers read for ``/readyz``."""
    while True:
        runtime.readiness()
        await asyncio.sleep(every)


async def _housekeeping(runtime: Runtime, every: float = 600.0) -> None:
    """Drop published files whose links have expired, finished jobs past keeping, and the
    contents of finished jobs past ``[store] retention_days``."""
    keep = runtime.config.engine.keep_done_hours * 3600
    retention = runtime.config.store.retention_days * 86400
    while True:
        try:
            media = await runtime.store.purge_media(time.time())
            jobs = await runtime.store.purge_jobs(("done",), older_than=keep)
            contents = await runtime.store.purge_payloads(retention) if retention else 0
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


async def _classify(runtime: Runtime, job: Job, error: BaseException) -> ErrorVerdict:
    return await runtime.hooks.classify_error(channel_of_job(runtime, job), error)
