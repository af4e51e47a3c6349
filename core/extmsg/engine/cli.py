"""``extmsg outbox``: look into the delivery queue, retry dead letters, purge old jobs.

A dead letter that ran out of retries holds its lane (its conversation): the lane's later jobs
wait for it. ``list`` and ``show`` say so; ``retry`` runs it again first, ``skip`` lets the lane
go on without it, ``purge --state dead`` deletes it and releases the lane.

The commands open the store the config names directly, so they work beside a running
``extmsg serve`` (which picks up a retried job within its poll interval) as well as without it.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec

from ..cli_options import CONTEXT_SETTINGS, config_option, load_for_command
from ..errors import HandledError, StoreMissing
from ..store.base import Job, JobState, Store

__all__ = ["outbox"]

T = TypeVar("T")

_UNFINISHED: tuple[JobState, ...] = ("ready", "running", "dead")
_PAGE = 500


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_AGE_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def _parse_age(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """An age like ``7d``, ``12h``, ``30m``, ``90s``, ``2w`` or a number of seconds."""
    if value is None:
        return None
    match = _AGE.match(value)
    if match is None:
        raise click.BadParameter(f"{value!r} is not an age like 7d, 12h, 30m or 90s")
    return float(match.group(1)) * _AGE_UNITS[match.group(2).lower()]


@click.group("outbox", context_settings=CONTEXT_SETTINGS)
def outbox() -> None:
    """Look into the delivery queue: jobs waiting, running and dead (given up)."""


@outbox.command("list")
@config_option("The configuration file naming the store.")
@click.option(
    "--state",
    type=click.Choice(["ready", "running", "dead", "done"]),
    help="Only jobs in this state (default: ready, running and dead).",
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_jobs(config_path: Path, state: JobState | None, limit: int, as_json: bool) -> None:
    """List jobs, oldest first."""
    states: tuple[JobState, ...] = (state,) if state else _UNFINISHED

    async def read(store: Store) -> tuple[list[Job], int]:
        return await store.list_jobs(states, limit), (await store.job_counts())["held"]

    jobs, held = _with_store(config_path, read)
    if as_json:
        click.echo(json.dumps([_job_dict(job) for job in jobs], indent=2, ensure_ascii=False))
        return
    if not jobs:
        click.echo(f"no {' or '.join(states)} jobs")
        return
    now = time.time()
    holders = {job.lane: job.id for job in jobs if job.holds_lane}
    rows = [
        [
            str(job.id),
            job.state,
            job.kind,
            _clip(job.lane, 32),
            str(job.attempts),
            _waits_for(job, holders) or _next_attempt(job, now),
            _clip(job.last_error or "", 60),
        ]
        for job in jobs
    ]
    click.echo(
        _table(["ID", "STATE", "KIND", "LANE", "ATTEMPTS", "NEXT ATTEMPT", "LAST ERROR"], rows)
    )
    more = f" (the first {limit}; see --limit)" if len(jobs) == limit else ""
    click.echo(f"{len(jobs)} job(s){more}")
    if held:
        shown = f" ({_ids(sorted(holders.values()))})" if holders else ""
        unlisted = "; not all are listed: see --state dead" if held > len(holders) else ""
        click.echo(
            f"{held} lane(s) held by a dead letter that ran out of retries{shown}: their"
            " later jobs wait. 'extmsg outbox retry ID' runs it again first; 'extmsg outbox"
            f" skip ID' lets its lane go on without it{unlisted}."
        )


@outbox.command("show")
@config_option("The configuration file naming the store.")
@click.argument("job_id", type=int)
def show_job(config_path: Path, job_id: int) -> None:
    """Show one job in full, with its payload."""
    job = _with_store(config_path, lambda store: store.get_job(job_id))
    if job is None:
        raise HandledError(f"there is no job {job_id}")
    now = time.time()
    fields = [
        ("id", str(job.id)),
        ("state", job.state),
        ("kind", job.kind),
        ("lane", job.lane),
        ("message", job.message_id or "-"),
        ("attempts", str(job.attempts)),
        ("next attempt", _next_attempt(job, now, absolute=True)),
        ("lease until", _timestamp(job.lease_until) if job.lease_until else "-"),
        ("created", _timestamp(job.created_at)),
        ("updated", _timestamp(job.updated_at)),
        ("last error", job.last_error or "-"),
    ]
    if job.holds_lane:
        fields.append(
            (
                "holds lane",
                "yes: the lane's later jobs wait until it is retried, skipped or purged",
            )
        )
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        click.echo(f"{name + ':':<{width + 1}} {value}")
    click.echo("payload:")
    click.echo(_payload(job.payload))


@outbox.command("retry")
@config_option("The configuration file naming the store.")
@click.argument("job_ids", nargs=-1, type=int)
@click.option("--all-dead", is_flag=True, help="Retry every dead job.")
def retry_jobs(config_path: Path, job_ids: tuple[int, ...], all_dead: bool) -> None:
    """Make dead jobs run again now (their failed messages become pending again).

    A retried job runs before the jobs of its lane that came after it and have not run yet.
    """
    if not job_ids and not all_dead:
        raise HandledError("name the jobs to retry, or give --all-dead")
    if job_ids and all_dead:
        raise HandledError("give job ids or --all-dead, not both")

    async def retry(store: Store) -> tuple[list[int], list[str]]:
        done: list[int] = []
        problems: list[str] = []
        if all_dead:
            while True:
                dead = await store.list_jobs(("dead",), _PAGE)
                retried = [job.id for job in dead if await store.retry_job(job.id)]
                done += retried
                if len(dead) < _PAGE or not retried:
                    break
            return done, problems
        return await _each(store, job_ids, store.retry_job, "dead")

    done, problems = _with_store(config_path, retry)
    if done:
        click.echo(f"{len(done)} job(s) will run again: {_ids(done)}")
    elif all_dead:
        click.echo("there are no dead jobs")
    if problems:
        raise HandledError("; ".join(problems))


@outbox.command("skip")
@config_option("The configuration file naming the store.")
@click.argument("job_ids", nargs=-1, type=int)
@click.option("--all-held", is_flag=True, help="Release every held lane.")
def skip_jobs(config_path: Path, job_ids: tuple[int, ...], all_held: bool) -> None:
    """Let the lanes dead letters hold go on without them.

    The dead letters stay (retry or purge them later); their lanes' waiting jobs run now. A
    dead letter retried after its lane went on arrives after the jobs that went ahead of it.
    """
    if not job_ids and not all_held:
        raise HandledError("name the dead jobs whose lanes may go on, or give --all-held")
    if job_ids and all_held:
        raise HandledError("give job ids or --all-held, not both")

    async def skip(store: Store) -> tuple[list[int], list[str]]:
        if all_held:
            dead = await store.list_jobs(("dead",), 10**9)
            held = [job.id for job in dead if job.holds_lane]
            return [job_id for job_id in held if await store.release_lane(job_id)], []
        return await _each(store, job_ids, store.release_lane, "a dead letter holding its lane")

    done, problems = _with_store(config_path, skip)
    if done:
        click.echo(f"{len(done)} lane(s) go on without their dead letter: {_ids(done)}")
    elif all_held:
        click.echo("no lane is held")
    if problems:
        raise HandledError("; ".join(problems))


async def _each(
    store: Store, job_ids: Sequence[int], act: Callable[[int], Awaitable[bool]], wanted: str
) -> tuple[list[int], list[str]]:
    """``act`` on each job; the ids it did, and a problem for each it refused (naming why)."""
    done: list[int] = []
    problems: list[str] = []
    for job_id in job_ids:
        if await act(job_id):
            done.append(job_id)
            continue
        job = await store.get_job(job_id)
        problems.append(
            f"job {job_id} does not exist"
            if job is None
            else f"job {job_id} is {job.state}, not {wanted}"
        )
    return done, problems


@outbox.command("purge")
@config_option("The configuration file naming the store.")
@click.option(
    "--state",
    type=click.Choice(["done", "dead"]),
    default="done",
    show_default=True,
    help="Which finished jobs to delete.",
)
@click.option(
    "--older-than",
    "older_than",
    metavar="AGE",
    callback=_parse_age,
    default=None,
    help="Only jobs last changed longer ago than this (7d, 12h, 30m, 90s); default: all.",
)
def purge_jobs(config_path: Path, state: JobState, older_than: float | None) -> None:
    """Delete done (or dead) jobs."""
    count = _with_store(config_path, lambda store: store.purge_jobs((state,), older_than))
    age = f" older than {_age(older_than)}" if older_than is not None else ""
    click.echo(f"purged {count} {state} job(s){age}")


# -- plumbing -----------------------------------------------------------------------------------
def _with_store(config_path: Path, action: Callable[[Store], Awaitable[T]]) -> T:
    """Load the config, open its store, run ``action`` on it and close the store."""
    from ..store import open_store

    config, _ = load_for_command(config_path)
    store = open_store(config)

    async def run() -> T:
        try:
            await store.open(create=False)
        except StoreMissing as exc:
            raise StoreMissing(f"{exc}: check store in {config_path}") from None
        except sqlite3.DatabaseError as exc:
            raise HandledError(f"cannot open the store: {exc}") from exc
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _job_dict(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state,
        "kind": job.kind,
        "lane": job.lane,
        "message_id": job.message_id,
        "attempts": job.attempts,
        "next_at": _iso(job.next_at),
        "lease_until": _iso(job.lease_until),
        "last_error": job.last_error,
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "holds_lane": job.holds_lane,
        "payload_bytes": len(job.payload),
    }


def _payload(payload: bytes) -> str:
    """The payload as indented JSON when it is JSON (or MessagePack), else a hex preview."""
    value: Any
    try:
        value = json.loads(payload)
    except ValueError:
        try:
            value = msgspec.msgpack.decode(payload)
        except msgspec.DecodeError:
            value = None
        if not isinstance(value, dict | list):
            preview = payload[:64].hex(" ")
            more = " …" if len(payload) > 64 else ""
            return f"  ({len(payload)} bytes, not JSON) {preview}{more}"
    text = json.dumps(value, indent=2, ensure_ascii=False, default=_json_default)
    return "\n".join("  " + line for line in text.splitlines())


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    return repr(value)


def _waits_for(job: Job, holders: dict[str, int]) -> str | None:
    """``after dead 42`` for a ready job its lane's dead letter holds back."""
    holder = holders.get(job.lane)
    if job.state != "ready" or holder is None or holder > job.id:
        return None
    return f"after dead {holder}"


def _next_attempt(job: Job, now: float, *, absolute: bool = False) -> str:
    if job.state != "ready":
        return "-"
    relative = "now" if job.next_at <= now else f"in {_age(job.next_at - now)}"
    return f"{_timestamp(job.next_at)} ({relative})" if absolute else relative


def _age(seconds: float) -> str:
    """``seconds`` in at most two units: ``2d 3h``, ``4m 10s``, ``42s``."""
    rest = max(round(seconds), 0)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size or (unit == "s" and not parts):
            whole, rest = divmod(rest, size)
            parts.append(f"{whole}{unit}")
        if len(parts) == 2:
            break
    return " ".join(parts)


def _timestamp(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts).astimezone().isoformat()


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _ids(ids: Sequence[int]) -> str:
    shown = ", ".join(map(str, ids[:20]))
    return shown + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)
