"""Erasing a contact (``Store.forget_contact``, on SQLite and PostgreSQL): afterwards no row,
payload or file of that contact is left in any table, everything else is as it was, and the
job counts hold. Pending and running jobs, dry runs, and retention of finished payloads."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner, Result

from extmsg.cli import main
from extmsg.errors import PermanentError
from extmsg.flows import payloads as p
from extmsg.flows import register_jobs
from extmsg.flows.to_messenger import report_state_job
from extmsg.models import Contact, ContactUpdate, InboundMessage, StatusUpdate
from extmsg.store.base import (
    PURGED_PREFIX,
    ContactRow,
    ConversationRow,
    Intake,
    Job,
    MediaRow,
    NewJob,
    NewMessage,
    Store,
    purged_payload,
)
from extmsg.store.postgres import PostgresStore
from extmsg.store.sqlite import SqliteStore
from extmsg.unblu.calls import AgentMessage

from . import pg
from .conftest import make_channel

ALICE = "+41791110001"
BOB = "+41791110002"


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "store.sqlite3")
        await s.open()
        yield s
        await s.close()
        return
    async with pg.fresh_schema() as schema:
        p_store = pg.store_in(schema)
        await p_store.open()
        try:
            yield p_store
        finally:
            await p_store.close()


async def dump(store: Store) -> list[str]:
    """Every row of every table, each as one string (bytes decoded), as the database has it."""
    out: list[str] = []
    if isinstance(store, SqliteStore):
        db = sqlite3.connect(store.path)
        try:
            tables = [
                r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            for table in tables:
                for row in db.execute(f"SELECT * FROM {table}"):  # noqa: S608
                    out.append(f"{table}: {_text(row)}")
        finally:
            db.close()
        return sorted(out)
    assert isinstance(store, PostgresStore)
    async with store._p.acquire() as conn:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        assert tables
        for (table,) in tables:
            for row in await conn.fetch(f"SELECT * FROM {table}"):  # noqa: S608
                out.append(f"{table}: {_text(tuple(row))}")
    return sorted(out)


def _text(row: tuple[object, ...]) -> str:
    return repr(
        tuple(v.decode("utf-8", "replace") if isinstance(v, bytes | memoryview) else v for v in
              (bytes(x) if isinstance(x, memoryview) else x for x in row))
    )  # fmt: skip


def _job(payload: p.JobPayload, lane: str, message_id: str | None = None) -> NewJob:
    return NewJob(kind=p.kind(payload), lane=lane, payload=p.encode(payload), message_id=message_id)


async def seed(store: Store, channel: str, address: str, tag: str) -> None:
    """A contact's life: a message in, a reply out (sent in one part, with a file, a status and
    a read), a STOP, remembered thread values; and a mail-style thread known only from its
    jobs: a dead letter holding its lane with a second message waiting behind it."""
    lane = p.lane
    inbound = InboundMessage(
        provider_message_id=f"SM{tag}in",
        contact=Contact(address=address, name=f"Name {tag}"),
        text=f"hello from {tag}",
    )
    agent = AgentMessage(
        id=f"unblu-{tag}-out", conversation_id=f"conv-{tag}", type="TEXT", text=f"reply to {tag}"
    )
    token = f"t{tag}token"
    held = [
        InboundMessage(
            provider_message_id=f"<{n}.{tag}@mail>",
            contact=Contact(address=address),
            text=f"mail {n} from {tag}",
            thread=token,
        )
        for n in (1, 2)
    ]
    await store.intake(
        [
            Intake(
                message=NewMessage(
                    id=f"{tag}-in",
                    channel=channel,
                    direction="in",
                    thread=address,
                    provider_message_id=f"SM{tag}in",
                ),
                job=_job(
                    p.ToUnbluJob(channel=channel, message_id=f"{tag}-in", message=inbound),
                    lane(channel, address),
                ),
            ),
            Intake(
                message=NewMessage(
                    id=f"{tag}-out",
                    channel=channel,
                    direction="out",
                    thread=address,
                    unblu_message_id=agent.id,
                    conversation_id=agent.conversation_id,
                ),
                job=_job(
                    p.OutboundMessageJob(
                        channel=channel,
                        message_id=f"{tag}-out",
                        message=agent,
                        contact_address=address,
                        thread=address,
                    ),
                    lane(channel, f"conversation:{agent.conversation_id}"),
                ),
            ),
            Intake(
                job=_job(
                    p.ProviderStatusJob(
                        channel=channel,
                        update=StatusUpdate(state="delivered", provider_message_id=f"SM{tag}out"),
                    ),
                    lane(channel, f"status:SM{tag}out"),
                )
            ),
            Intake(
                job=report_state_job(
                    p.UnbluStateJob(channel=channel, message_id=f"{tag}-out", state="delivered")
                )
            ),
            Intake(
                job=_job(
                    p.MarkReadJob(channel=channel, provider_message_id=f"SM{tag}in"),
                    lane(channel, f"read:SM{tag}in"),
                )
            ),
            Intake(
                job=_job(
                    p.ContactJob(
                        channel=channel,
                        update=ContactUpdate(address=address, opted_out=True, reason=f"STOP {tag}"),
                    ),
                    lane(channel, address),
                )
            ),
            *(
                Intake(
                    message=NewMessage(
                        id=f"{tag}-mail{n}",
                        channel=channel,
                        direction="in",
                        thread=token,
                        provider_message_id=m.provider_message_id,
                    ),
                    job=_job(
                        p.ToUnbluJob(channel=channel, message_id=f"{tag}-mail{n}", message=m),
                        lane(channel, token),
                    ),
                )
                for n, m in enumerate(held, 1)
            ),
        ]
    )
    await store.upsert_contact(
        ContactRow(
            channel=channel,
            address=address,
            name=f"Name {tag}",
            unblu_person_id=f"person-{tag}",
            unblu_contact_id=f"contact-{tag}",
        )
    )
    await store.add_conversation(
        ConversationRow(
            channel=channel,
            thread=address,
            contact_address=address,
            unblu_conversation_id=f"conv-{tag}",
        )
    )
    await store.update_message(
        f"{tag}-in", unblu_message_id=f"unblu-{tag}-in", conversation_id=f"conv-{tag}"
    )
    await store.record_part(f"{tag}-out", channel, 0, f"SM{tag}out")
    await store.put_thread_meta(channel, address, {"subject": f"subject {tag}"})
    await store.put_media(
        MediaRow(
            id=f"media-{tag}",
            channel=channel,
            file_name=f"{tag}.jpg",
            mime_type="image/jpeg",
            data=f"bytes of {tag}".encode(),
            expires_at=time.time() + 3600,
            message_id=f"{tag}-out",
        )
    )


async def run_all(store: Store, held_tags: set[str]) -> None:
    """Run every job to its end; the first mail of each tag in ``held_tags`` dies holding its
    lane (the second waits behind it)."""
    while claimed := await store.claim_jobs(100, 60):
        for job in claimed:
            token_lane = any(job.lane.endswith(f"/t{tag}token") for tag in held_tags)
            if token_lane:
                await store.bury_job(job.id, f"Unblu refused it for {job.lane}", hold=True)
            else:
                await store.complete_job(job.id)


async def test_forget_leaves_nothing_of_the_contact_and_everything_else(store: Store) -> None:
    await seed(store, "sms", ALICE, "alice")
    await seed(store, "sms", BOB, "bob")
    await seed(store, "wa", ALICE, "carol")  # the same address on another channel
    await run_all(store, {"alice", "bob"})
    await store.set_opt_out("sms", ALICE, True, "the customer texted STOP")
    before = await dump(store)
    counts = await store.job_counts()
    assert counts["held"] == 2
    assert counts["ready"] == 2

    erased = await store.forget_contact("sms", [ALICE], p.contact_refs, apply=True,
                                        cancel_pending=True)  # fmt: skip

    assert erased.applied
    assert erased.contact_rows == 1
    assert erased.unblu_person_ids == ("person-alice",)
    assert erased.unblu_contact_ids == ("contact-alice",)
    assert erased.conversations == ("conv-alice",)
    assert erased.messages == 4
    assert erased.parts == 1
    assert erased.media == 1
    assert erased.thread_meta == 1
    assert erased.jobs == 8
    assert len(erased.pending) == 1
    assert not erased.running
    assert erased.suppressions == 1
    after = await dump(store)
    # Nothing of Alice on this channel, in any table, any column.
    assert [row for row in after if "alice" in row] == []
    assert [row for row in after if ALICE in row and "carol" not in row] == []
    assert [row for row in after if ALICE[1:] in row and "carol" not in row] == []
    # Only her opt-out stays, as a keyed hash (with the store's key for it).
    new_rows = [row for row in after if row.startswith(("suppressions:", "store_keys:"))]
    assert len(new_rows) == 2
    assert [row for row in new_rows if "STOP" in row]
    # Everything else as it was: rows that never were Alice's are untouched.
    kept = [row for row in before if "alice" not in row]
    rest = [row for row in after if PURGED_PREFIX.decode() not in row and row not in new_rows]
    assert Counter(rest) == Counter(kept)
    # Her jobs stay, emptied, so the counts hold (her waiting mail is now a dead letter).
    erased_jobs = [row for row in after if PURGED_PREFIX.decode() in row]
    assert len(erased_jobs) == 8
    now = await store.job_counts()
    assert now["done"] == counts["done"]
    assert (now["ready"], now["dead"], now["held"]) == (1, counts["dead"] + 1, 1)
    assert sum(now[s] for s in ("ready", "running", "done", "dead")) == sum(
        counts[s] for s in ("ready", "running", "done", "dead")
    )
    # Bob's held lane still waits for its dead letter; Alice's lane is gone with her.
    claimed = await store.claim_jobs(10, 60)
    assert claimed == []


async def test_an_opt_out_outlives_the_erasure_until_an_opt_in(store: Store) -> None:
    await seed(store, "sms", ALICE, "alice")
    await run_all(store, set())
    await store.set_opt_out("sms", ALICE, True, "the customer texted STOP")
    await store.set_opt_out("sms", BOB, False, None)
    for address in (ALICE, BOB):
        erased = await store.forget_contact("sms", [address], p.contact_refs, apply=True)
        assert erased.applied
    assert [row for row in await dump(store) if ALICE in row or BOB in row] == []
    # Alice said STOP: still opted out, on this channel only; Bob never did.
    suppressed = await store.get_contact("sms", ALICE)
    assert suppressed is not None
    assert (suppressed.opted_out, suppressed.opted_out_reason) == (
        True,
        "the customer texted STOP",
    )
    assert await store.get_contact("sms", BOB) is None
    assert await store.get_contact("wa", ALICE) is None
    # A job's view of her answers alike.
    assert (await store.inbound_view("sms", ALICE, ALICE)).contact == suppressed
    assert (await store.inbound_view("sms", BOB, BOB)).contact is None
    # A contact row made for her again (an agent's new conversation) starts opted out...
    await store.upsert_contact(ContactRow(channel="sms", address=ALICE, name="Alice"))
    again = await store.get_contact("sms", ALICE)
    assert again is not None
    assert (again.opted_out, again.name) == (True, "Alice")
    # ...and being erased again keeps it.
    assert (await store.forget_contact("sms", [ALICE], p.contact_refs, apply=True)).suppressions
    assert (await store.get_contact("sms", ALICE) or ContactRow("", "")).opted_out
    # Her opt-in clears it for good.
    await store.set_opt_out("sms", ALICE, False, "the customer texted START")
    await store.forget_contact("sms", [ALICE], p.contact_refs, apply=True)
    assert await store.get_contact("sms", ALICE) is None
    assert [row for row in await dump(store) if row.startswith("suppressions:")] == []


async def test_a_dry_run_changes_nothing(store: Store) -> None:
    await seed(store, "sms", ALICE, "alice")
    await run_all(store, set())
    before = await dump(store)
    found = await store.forget_contact("sms", [ALICE], p.contact_refs, apply=False)
    assert not found.applied
    assert found.messages == 4
    assert found.contact_rows == 1
    assert found.jobs == 8
    assert await dump(store) == before


async def test_jobs_still_to_run_refuse_unless_cancelled(store: Store) -> None:
    await seed(store, "sms", ALICE, "alice")
    await run_all(store, {"alice"})
    before = await dump(store)
    found = await store.forget_contact("sms", [ALICE], p.contact_refs, apply=True)
    assert not found.applied
    assert len(found.pending) == 1
    assert await dump(store) == before


async def test_a_running_job_refuses_even_with_cancelling(store: Store) -> None:
    await seed(store, "sms", ALICE, "alice")
    [first, *rest] = await store.claim_jobs(100, 60)
    for job in rest:
        await store.complete_job(job.id)
    before = await dump(store)
    found = await store.forget_contact("sms", [ALICE], p.contact_refs, apply=True,
                                       cancel_pending=True)  # fmt: skip
    assert not found.applied
    assert found.running == (first.id,)
    assert await dump(store) == before


async def test_an_unknown_contact_finds_nothing(store: Store) -> None:
    await seed(store, "sms", BOB, "bob")
    await run_all(store, set())
    before = await dump(store)
    found = await store.forget_contact("sms", [ALICE], p.contact_refs, apply=True)
    assert found.applied
    assert (found.contact_rows, found.messages, found.jobs, found.media) == (0, 0, 0, 0)
    assert await dump(store) == before


async def test_retention_empties_old_finished_payloads_only(store: Store) -> None:
    await seed(store, "sms", ALICE, "alice")
    await run_all(store, {"alice"})
    assert await store.purge_payloads(3600) == 0  # all of them are recent
    purged = await store.purge_payloads(-1)  # "older than a second from now": all finished
    jobs = {j.id: j for j in await store.list_jobs(("ready", "running", "done", "dead"), 100)}
    finished = [j for j in jobs.values() if j.state in ("done", "dead")]
    assert purged == len(finished) == 7
    for job in finished:
        assert job.payload.startswith(PURGED_PREFIX)
        assert p.decode(job.payload) == p.PurgedJob(channel="sms", reason="retention")
    [waiting] = [j for j in jobs.values() if j.state == "ready"]
    assert b"mail 2 from alice" in waiting.payload  # not finished: kept whole
    assert await store.purge_payloads(-1) == 0  # once is enough
    assert (await store.get_message("alice-in")) is not None  # ids and states stay


# -- the command ---------------------------------------------------------------------------------
TWILIO = """
[store]
path = "store.sqlite3"

[[channels]]
name = "sms"
messenger = "sms_twilio"
webhook_secret = "s"
[channels.settings]
account_sid = "AC00000000000000000000000000000000"
auth_token = "t"
from_number = "+15005550006"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A Twilio channel whose store knows Alice (opted out, with a mail waiting behind a dead
    letter) and Bob."""
    path = tmp_path / "extmsg.toml"
    path.write_text(TWILIO)

    async def fill() -> None:
        s = SqliteStore(tmp_path / "store.sqlite3")
        await s.open()
        await seed(s, "sms", ALICE, "alice")
        await seed(s, "sms", BOB, "bob")
        await run_all(s, {"alice"})
        await s.set_opt_out("sms", ALICE, True, "the customer texted STOP")
        await s.close()

    asyncio.run(fill())
    return path


def forget(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["contacts", "forget", "-c", str(config), *args])


def rows_of(config: Path, tag: str) -> list[str]:
    return [row for row in asyncio.run(_dump_file(config)) if tag in row]


async def _dump_file(config: Path) -> list[str]:
    return await dump(SqliteStore(config.parent / "store.sqlite3"))


def test_the_address_as_a_person_writes_it(config: Path) -> None:
    bob = rows_of(config, "bob")
    dry = forget(config, "sms", "+41 79 111 00 01", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would remove what is stored of +41791110001 on channel sms" in dry.output
    assert "Unblu ids: person-alice, contact-alice" in dry.output
    assert "dry run: nothing was changed" in dry.output
    assert "opt-out:            would be kept: the address stays opted out" in dry.output
    assert rows_of(config, "alice")
    refused = forget(config, "sms", "0041 79 111 00 01")
    assert refused.exit_code == 2
    assert refused.output.strip().splitlines()[-1] == (
        "error: job 8 of +41791110001 on channel sms is still to run (messages not delivered"
        " yet); nothing was removed: wait for them, or give --force to cancel them"
    )
    assert rows_of(config, "alice")
    done = forget(config, "sms", "+41 (0)79 111 00 01", "--force")
    assert done.exit_code == 0, done.output
    assert "removed what is stored of +41791110001 on channel sms" in done.output
    assert "cancelled job 8" in done.output
    assert "opt-out:            kept: the address stays opted out, as a keyed hash" in done.output
    assert "Unblu keeps its own copy" in done.output
    assert rows_of(config, "alice") == []
    assert rows_of(config, ALICE) == []
    assert rows_of(config, "bob") == bob
    again = forget(config, "sms", ALICE)
    assert again.exit_code == 0
    assert again.output.strip() == f"nothing is stored of {ALICE} on channel sms"


def test_unknown_channel_and_missing_store_are_one_line_errors(
    config: Path, tmp_path: Path
) -> None:
    unknown = forget(config, "whatsapp", ALICE)
    assert unknown.exit_code == 2
    assert unknown.output.strip() == (
        f"error: there is no channel 'whatsapp' in {config} (channels: sms)"
    )
    other = tmp_path / "elsewhere" / "extmsg.toml"
    other.parent.mkdir()
    other.write_text(TWILIO)
    missing = forget(other, "sms", ALICE)
    assert missing.exit_code == 2
    assert "there is no store" in missing.output
    assert not (other.parent / "store.sqlite3").exists()


async def test_an_emptied_job_run_again_fails_for_good() -> None:
    """A dead letter whose content was erased or purged, retried by hand, ends at once as a
    permanent failure (its lane goes on), instead of sending an empty message."""
    handlers: dict[str, Any] = {}

    class Engine:
        def register(self, kind: str, handler: Any) -> None:
            handlers[kind] = handler

    register_jobs(SimpleNamespace(engine=Engine()))  # type: ignore[arg-type]
    for kind in (p.kind_of(p.ToUnbluJob), p.kind_of(p.OutboundMessageJob)):
        job = Job(
            id=1,
            kind=kind,
            lane="sms/erased",
            payload=purged_payload("sms", "erasure"),
            state="running",
            attempts=0,
            next_at=0.0,
        )
        with pytest.raises(PermanentError, match=r"content was removed \(erasure\)"):
            await handlers[kind](job)


async def test_sqlite_erases_what_arrived_while_it_looked(tmp_path: Path) -> None:
    """On SQLite the look-up reads a snapshot without the write lock; a message of the contact
    committed after that snapshot is found and erased under the lock all the same."""
    store = SqliteStore(tmp_path / "store.sqlite3")
    await store.open()
    try:
        await seed(store, "sms", ALICE, "alice")
        await run_all(store, set())
        snapshot = store._look_up_snapshot

        def then_more(found: Any, refs: Any) -> int:
            seen = snapshot(found, refs)
            late = InboundMessage(
                provider_message_id="SMlate", contact=Contact(address=ALICE), text="late alice"
            )
            db = sqlite3.connect(store.path)
            db.execute(
                "INSERT INTO messages (id, channel, direction, thread, provider_message_id,"
                " state, created_at, updated_at) VALUES ('late', 'sms', 'in', ?, 'SMlate', 0,"
                " 0, 0)",
                (ALICE,),
            )
            db.execute(
                "INSERT INTO jobs (kind, lane, payload, message_id, state, next_at, created_at,"
                " updated_at) VALUES (?, ?, ?, 'late', 'done', 0, 0, 0)",
                (
                    p.kind_of(p.ToUnbluJob),
                    p.lane("sms", ALICE),
                    p.encode(p.ToUnbluJob(channel="sms", message_id="late", message=late)),
                ),
            )
            db.commit()
            db.close()
            return seen

        store._look_up_snapshot = then_more  # type: ignore[method-assign]
        erased = await store.forget_contact("sms", [ALICE], p.contact_refs, apply=True)
        assert erased.applied
        assert erased.messages == 5
        assert [row for row in await dump(store) if "alice" in row or ALICE in row] == []
    finally:
        await store.close()


async def test_postgres_erases_beside_an_instance_that_works_the_queue() -> None:
    """Another instance claims and runs jobs meanwhile; a job it runs writes the contact back
    as the real ones do. The erasure refuses while one runs and otherwise locks the contact's
    jobs: once it reports success, nothing of the contact is left or comes back."""
    async with pg.fresh_schema() as schema:
        server, operator = pg.store_in(schema), pg.store_in(schema)
        await server.open()
        await operator.open()
        try:
            for n in range(5):
                await seed(server, "sms", ALICE, f"alice{n}")
            await seed(server, "sms", BOB, "bob")
            stop = asyncio.Event()

            async def work() -> None:
                while not stop.is_set():
                    for job in await server.claim_jobs(4, 60):
                        payload = p.decode(job.payload)
                        if isinstance(payload, p.ToUnbluJob):
                            contact = payload.message.contact
                            await server.upsert_contact(
                                ContactRow(channel="sms", address=contact.address, name="again")
                            )
                        await asyncio.sleep(0.01)
                        await server.complete_job(job.id)

            worker = asyncio.create_task(work())
            refused = 0
            while True:
                erased = await operator.forget_contact(
                    "sms", [ALICE], p.contact_refs, apply=True, cancel_pending=True
                )
                if erased.applied:
                    break
                refused += 1
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.2)  # the worker would have written by now
            stop.set()
            await worker
            assert [row for row in await dump(server) if "alice" in row or ALICE in row] == []
            assert await server.get_contact("sms", BOB) is not None
        finally:
            stop.set()
            await server.close()
            await operator.close()


@pytest.mark.parametrize(
    ("messenger", "given", "stored"),
    [
        ("email_smtp", "  Alice Example <Alice@Example.COM> ", "alice@example.com"),
        ("whatsapp", "+41 79 111 00 01", "41791110001"),
    ],
)
async def test_an_address_is_normalized_as_its_messenger_keys_contacts(
    messenger: str, given: str, stored: str
) -> None:
    from extmsg.forget import _normalize
    from extmsg.plugins import build_hooks

    channel = make_channel("c", messenger)  # Twilio's, with its settings: the command's test
    assert await _normalize(build_hooks(), channel, given) == (stored, "")
