"""``extmsg contacts forget``: erase one contact's data from the store.

The address is taken as a person would write it and normalized the way the channel's
messenger does (``extmsg_validate_contact``: E.164 for a phone number, a lower-cased mailbox),
so it names the contact as the store knows it.

Everything stored of the contact goes in one transaction (:meth:`Store.forget_contact`): its
contact row with the Unblu person and contact ids, its conversations, threads, messages and
their parts, published files, and its jobs' payloads. The job rows stay, emptied, so job
counts and metrics do not move. Jobs still to run are a decision: without ``--force`` nothing
is erased while the contact has any (its messages would be lost unsent); with it they are
cancelled and stay as dead letters that say why. A job that runs at this moment always
refuses the erasure (it may write the contact again as it finishes): try again a moment later.

An opt-out is not erased with the contact: a contact that had opted out leaves a suppression
entry, a keyed hash of the channel and address (:mod:`extmsg.store.suppression`), so the
address stays opted out until it opts in again, and no agent can write to it by starting anew.

Beside a running ``extmsg serve`` this is safe on both stores: on SQLite the look-up reads a
snapshot and only the erasure takes the write lock, for milliseconds; on PostgreSQL the
contact's jobs are locked while it runs, so no instance claims one meanwhile.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import click

from .cli_options import CONTEXT_SETTINGS, config_option, load_for_command
from .errors import HandledError
from .models import Channel
from .plugins import Hooks
from .store import open_store
from .store.base import Erasure

__all__ = ["contacts"]


@click.group("contacts", context_settings=CONTEXT_SETTINGS)
def contacts() -> None:
    """The contacts the store knows."""


@contacts.command("forget")
@config_option()
@click.argument("channel")
@click.argument("address")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; change nothing.")
@click.option(
    "--force",
    is_flag=True,
    help="Also cancel the contact's jobs that are still to run (their messages are not sent).",
)
def forget(config_path: Path, channel: str, address: str, dry_run: bool, force: bool) -> None:
    """Remove everything stored of the contact ADDRESS on CHANNEL.

    Its messages, job payloads, conversations, threads, files and contact row go in one
    transaction; counts and metrics stay. An opt-out stays, as a keyed hash of the address.
    Unblu keeps its own copy of the person and the
    conversations: the ids to delete there are printed.
    """
    config, hooks = load_for_command(config_path)
    target = next((ch for ch in config.runtime_channels() if ch.name == channel), None)
    if target is None:
        names = ", ".join(ch.name for ch in config.channels) or "none"
        raise HandledError(f"there is no channel {channel!r} in {config_path} (channels: {names})")
    if config.store.backend == "sqlite" and not config.store_path().exists():
        raise HandledError(
            f"there is no store at {config.store_path()}: check store.path in {config_path}"
        )

    async def run() -> tuple[str, Erasure]:
        from .flows.payloads import contact_refs

        normalized, note = await _normalize(hooks, target, address)
        store = open_store(config)
        try:
            await store.open(create=False)
        except sqlite3.DatabaseError as exc:
            raise HandledError(f"cannot open the store: {exc}") from exc
        try:
            found = await store.forget_contact(
                channel, [normalized], contact_refs, apply=not dry_run, cancel_pending=force
            )
        finally:
            await store.close()
        return note, found

    note, found = asyncio.run(run())
    if note:
        click.echo(note, err=True)
    _report(found, dry_run=dry_run)


async def _normalize(hooks: Hooks, channel: Channel, given: str) -> tuple[str, str]:
    """The address as the store keeps it, and a note when the messenger would not take it
    (then it is looked for exactly as given, e.g. a provider's test number)."""
    check = await hooks.validate_contact(channel, given)
    if check.valid and check.address:
        return check.address, ""
    raw = given.strip()
    if not raw:
        raise HandledError("ADDRESS is empty")
    reason = (check.error or "not a valid address").rstrip(".")
    return (
        raw,
        f"note: {channel.messenger} does not take {raw!r} ({reason}); looking for it as given",
    )


def _report(found: Erasure, *, dry_run: bool) -> None:
    who = f"{', '.join(found.addresses)} on channel {found.channel}"
    if found.running and not dry_run:
        raise HandledError(
            f"{_jobs(found.running)} of {who} {_are(found.running)} running now; nothing was"
            " removed: try again in a moment"
        )
    empty = (
        not (
            found.contact_rows or found.conversations or found.messages or found.jobs or found.media
        )
        and not found.thread_meta
    )
    if empty:
        click.echo(f"nothing is stored of {who}")
        return
    lines = [f"{'would remove' if not found.applied else 'removed'} what is stored of {who}:"]
    person = ", ".join([*found.unblu_person_ids, *found.unblu_contact_ids])
    lines.append(
        f"  contact row:        {found.contact_rows}"
        + (f" (Unblu ids: {person})" if person else "")
    )
    lines.append(
        f"  conversations:      {len(found.conversations)}"
        + (f" (Unblu ids: {', '.join(found.conversations)})" if found.conversations else "")
    )
    lines.append(f"  threads:            {found.threads} ({found.thread_meta} remembered value(s))")
    lines.append(f"  messages:           {found.messages} ({found.parts} part(s) sent)")
    lines.append(
        f"  job payloads:       {found.jobs} (the jobs stay, emptied, so counts hold)"
        + (
            f"; {len(found.pending)} {'cancelled' if found.applied else 'still to run'}"
            if found.pending
            else ""
        )
        + (f"; {len(found.running)} running now" if found.running else "")
    )
    lines.append(f"  published files:    {found.media}")
    if found.suppressions:
        lines.append(
            f"  opt-out:            {'kept' if found.applied else 'would be kept'}: the"
            " address stays opted out, as a keyed hash (a suppression entry, not the address)"
        )
    click.echo("\n".join(lines))
    if found.pending and not found.applied and not dry_run:
        raise HandledError(
            f"{_jobs(found.pending)} of {who} {_are(found.pending)} still to run (messages not"
            " delivered yet); nothing was removed: wait for them, or give --force to cancel them"
        )
    if found.pending and found.applied:
        click.echo(
            f"cancelled {_jobs(found.pending)}: left as dead letters with no content, which say why"
        )
    if dry_run:
        click.echo("dry run: nothing was changed")
        return
    if found.unblu_person_ids or found.conversations:
        click.echo(
            "Unblu keeps its own copy of this person and these conversations: erase them there"
            " as well."
        )


def _jobs(ids: tuple[int, ...]) -> str:
    shown = ", ".join(map(str, ids[:20])) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
    return f"job{'s' if len(ids) > 1 else ''} {shown}"


def _are(ids: tuple[int, ...]) -> str:
    return "are" if len(ids) > 1 else "is"
