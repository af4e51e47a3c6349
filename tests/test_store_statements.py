"""What a message costs the SQLite store, statement by statement: an agent's message and its
state report, and a contact's message. The counts are pinned, so a statement added to either
path shows here (tests/test_sqlite_writer.py pins what a batch adds around its writes)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from extmsg.models import MessageState
from extmsg.store.base import Intake, Job, MessageRow, NewJob, NewMessage, PartSent
from extmsg.store.sqlite import SqliteStore

from .store_reads import Statements

T = TypeVar("T")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.sqlite3")
    await s.open()
    yield s
    await s.close()


async def _claim(store: SqliteStore, kind: str) -> Job:
    """The one ready job, claimed (a claim's statements, shared by a batch of jobs and with a
    sweep for expired leases now and then, are not counted)."""
    [job] = await store.claim_jobs(10, 60)
    assert job.kind == kind
    return job


class _Counted:
    """Counts the statements of the store's calls made through :meth:`__call__`."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.counts: dict[str, int] = {}
        self.statements: list[str] = []

    async def __call__(self, call: Awaitable[T]) -> T:
        statements = Statements(self.store)
        try:
            return await call
        finally:
            statements.stop()
            self.statements += statements.statements
            for verb, n in statements.by_verb().items():
                self.counts[verb] = self.counts.get(verb, 0) + n


def _report(row: MessageRow) -> NewJob:
    return NewJob(kind="report", lane=f"sms/state:{row.id}", payload=b"r", message_id=row.id)


async def test_an_agents_message_and_its_report(store: SqliteStore) -> None:
    out = NewMessage(
        id="o1", channel="sms", direction="out", thread="t", unblu_message_id="u1",
        conversation_id="c1",
    )  # fmt: skip
    counted = _Counted(store)
    await counted(
        store.intake([Intake(message=out, job=NewJob(kind="send", lane="sms/c1", payload=b"x"))])
    )
    send = await _claim(store, "send")
    # The send's last write: the part, the message's id and state, the report, the completion.
    sent = PartSent(channel="sms", part=0, provider_message_id="SM-1")
    settled = await counted(
        store.complete_message("o1", job=send, complete=True, report=_report, last=sent)
    )
    assert settled is not None
    assert (settled.state, settled.provider_message_id) == (MessageState.SENT, "SM-1")
    updates = [s for s in counted.statements if s.startswith("UPDATE messages")]
    assert len(updates) == 1  # the provider's id and the state in one
    report = await _claim(store, "report")
    assert await counted(store.get_message("o1")) is not None
    assert await counted(store.complete_job(report.id, fence=report.fence))
    assert counted.counts == {"INSERT": 4, "SELECT": 5, "UPDATE": 5}


async def test_a_contacts_message(store: SqliteStore) -> None:
    msg = NewMessage(id="i1", channel="sms", direction="in", thread="t", provider_message_id="p1")
    counted = _Counted(store)
    await counted(
        store.intake([Intake(message=msg, job=NewJob(kind="post", lane="sms/t", payload=b"x"))])
    )
    post = await _claim(store, "post")
    await counted(
        store.update_message(
            "i1", unblu_message_id="u1", conversation_id="c1", state=MessageState.SENT,
            job=post, complete=True,
        )
    )  # fmt: skip
    assert counted.counts == {"INSERT": 2, "SELECT": 2, "UPDATE": 3}
    # The ids it was not given keep their values, and their unique indexes their entries.
    [update] = [s for s in counted.statements if s.startswith("UPDATE messages")]
    assert "provider_message_id" not in update
    row = await store.get_message("i1")
    assert row is not None
    assert (row.provider_message_id, row.unblu_message_id, row.conversation_id) == (
        "p1",
        "u1",
        "c1",
    )
    assert row.state == MessageState.SENT
