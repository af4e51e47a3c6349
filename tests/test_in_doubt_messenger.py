"""An agent's message whose earlier attempt may have reached the provider: look before sending.

The flow runs against a real SQLite store and the loopback provider, with jobs built in doubt
(``Job.in_doubt``) as the engine hands them over after a crash.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from extmsg.config import parse_config
from extmsg.engine import FinalWrite
from extmsg.errors import RetryableError
from extmsg.flows import payloads as p
from extmsg.flows.states import apply_provider_status
from extmsg.flows.to_messenger import deliver_to_messenger
from extmsg.models import MessageState, StatusUpdate
from extmsg.plugins import build_hooks
from extmsg.runtime import Runtime
from extmsg.store.base import (
    ContactRow,
    ConversationRow,
    Intake,
    Job,
    NewJob,
    NewMessage,
    Store,
)
from extmsg.unblu.calls import AgentMessage

from . import loopback_plugin
from .loopback_fake import LoopbackProvider
from .store_reads import Reads

CUSTOMER = "+41791234567"


class _Engine:
    """Stands in for the engine: the flows hand it state reports and their last writes."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def intake(self, items: list[Intake]) -> None:
        await self.store.intake(items)

    async def hold(self, job: Job) -> None:
        """Nothing takes a job over here (tests/test_fencing.py covers the real hold)."""

    async def complete_with(self, job: Job, write: FinalWrite) -> None:
        await write(complete=False)  # as the engine does for a job it does not run

    async def reports(self) -> list[p.UnbluStateJob]:
        """The state reports waiting to reach Unblu."""
        jobs = await self.store.list_jobs(("ready",))
        return [r for j in jobs if isinstance(r := p.decode(j.payload), p.UnbluStateJob)]


@dataclass
class Flow:
    runtime: Runtime
    provider: LoopbackProvider
    engine: _Engine
    counter: int = 0

    async def job(self, text: str, *, in_doubt: bool = True) -> tuple[Job, p.OutboundMessageJob]:
        """An agent's message stored as the Unblu endpoint stores it, its job claimed."""
        self.counter += 1
        message_id = f"m{self.counter}"
        payload = p.OutboundMessageJob(
            channel="loop",
            message_id=message_id,
            message=AgentMessage(
                id=f"u{self.counter}", conversation_id="c1", type="TEXT", text=text
            ),
            contact_address=CUSTOMER,
            thread=CUSTOMER,
        )
        store = self.runtime.store
        await store.intake(
            [
                Intake(
                    message=NewMessage(
                        id=message_id,
                        channel="loop",
                        direction="out",
                        thread=CUSTOMER,
                        unblu_message_id=f"u{self.counter}",
                        conversation_id="c1",
                    ),
                    job=NewJob(
                        kind=p.kind(payload),
                        lane=p.lane("loop", f"m{self.counter}"),
                        payload=p.encode(payload),
                        message_id=message_id,
                    ),
                )
            ]
        )
        claimed = await store.claim_jobs(100, 60)
        [job] = [j for j in claimed if j.kind == p.kind(payload) and j.message_id == message_id]
        await store.release_jobs([j.id for j in claimed if j is not job])  # state reports
        return msgspec.structs.replace(job, in_doubt=in_doubt), payload

    async def run(self, job: Job, payload: p.OutboundMessageJob) -> None:
        await deliver_to_messenger(self.runtime, job, payload)

    async def retried(self, job: Job, error: str = "failed") -> Job:
        """``job`` failed (retryably): its next attempt, as the engine claims it."""
        store = self.runtime.store
        assert await store.reschedule_job(job.id, 0, error, fence=job.fence)
        claimed = await store.claim_jobs(100, 60)
        [again] = [j for j in claimed if j.id == job.id]
        await store.release_jobs([j.id for j in claimed if j is not again])
        return again

    def counted(self, outcome: str) -> float:
        value = self.runtime.metrics.registry.get_sample_value(
            "extmsg_in_doubt_total",
            {"channel": "loop", "direction": "to_messenger", "outcome": outcome},
        )
        return value or 0.0


@pytest.fixture
async def flow(tmp_path: Path, aiohttp_server: Any) -> AsyncIterator[Flow]:
    provider = LoopbackProvider()
    server = await aiohttp_server(provider.app)
    hooks = build_hooks(entry_points=False, extra=[loopback_plugin], disabled=())
    config = parse_config(
        {
            "store": {"path": str(tmp_path / "store.sqlite3")},
            "channels": [
                {
                    "name": "loop",
                    "messenger": "loopback",
                    "webhook_secret": "whsec",
                    "sender_prefix": "",
                    "settings": {"token": "tok", "api_url": str(server.make_url("")).rstrip("/")},
                }
            ],
        },
        hooks.messenger_types(),
    )
    runtime = Runtime(config, hooks)
    engine = _Engine(runtime.store)
    runtime.engine = engine  # type: ignore[assignment]
    await runtime.store.open()
    try:
        yield Flow(runtime, provider, engine)
    finally:
        await runtime.store.close()


def _already_at_provider(provider: LoopbackProvider, ref: str, text: str) -> str:
    """What an attempt that died right after the provider accepted the send leaves behind."""
    provider.sends.append({"to": CUSTOMER, "text": text, "ref": ref})
    return f"lp-{len(provider.sends)}"


async def test_found_at_the_provider_is_not_sent_again(flow: Flow) -> None:
    job, payload = await flow.job("Your parcel is on its way")
    sid = _already_at_provider(flow.provider, "m1", "Your parcel is on its way")
    await flow.run(job, payload)
    assert len(flow.provider.sends) == 1
    assert await flow.runtime.store.sent_parts("m1") == {0: sid}
    row = await flow.runtime.store.get_message("m1")
    assert row is not None
    assert row.state == MessageState.SENT
    assert row.provider_message_id == sid
    [report] = await flow.engine.reports()
    assert report.state == "sent"  # Unblu hears "sent" as usual
    assert flow.counted("found") == 1


async def test_not_at_the_provider_is_sent_once(flow: Flow) -> None:
    job, payload = await flow.job("Hello")
    await flow.run(job, payload)
    assert [s["text"] for s in flow.provider.sends] == ["Hello"]
    assert await flow.runtime.store.sent_parts("m1") == {0: "lp-1"}
    assert flow.counted("not_found") == 1


async def test_a_provider_that_cannot_tell_sends_and_counts(
    flow: Flow, caplog: pytest.LogCaptureFixture
) -> None:
    flow.provider.lookup = "unknown"
    job, payload = await flow.job("Secret text")
    _already_at_provider(flow.provider, "m1", "Secret text")
    with caplog.at_level(logging.INFO, logger="extmsg.to_messenger"):
        await flow.run(job, payload)
    assert len(flow.provider.sends) == 2  # the possible double, now a real one
    assert flow.counted("unknown") == 1
    [line] = [r for r in caplog.records if "in doubt" in r.getMessage()]
    assert line.levelno == logging.WARNING
    text = line.getMessage()
    assert "may arrive twice" in text
    assert "m1" in text
    assert CUSTOMER not in text
    assert "+417******67" in text
    assert "Secret text" not in text


async def test_only_the_first_unrecorded_part_is_looked_up(flow: Flow) -> None:
    job, payload = await flow.job("one|two|three")
    _already_at_provider(flow.provider, "m1", "one")
    await flow.runtime.store.record_part("m1", "loop", 0, "lp-1")  # recorded before the crash
    sid = _already_at_provider(flow.provider, "m1", "two")  # accepted, never recorded
    await flow.run(job, payload)
    assert [f["text"] for f in flow.provider.finds] == ["two"]
    assert [s["text"] for s in flow.provider.sends] == ["one", "two", "three"]
    parts = await flow.runtime.store.sent_parts("m1")
    assert parts == {0: "lp-1", 1: sid, 2: "lp-3"}
    assert flow.counted("found") == 1


async def _status(flow: Flow, job: Job, state: str, sid: str, ref: str) -> None:
    """The provider's status callback for ``sid``, carrying our ``ref``, applied."""
    update = StatusUpdate(state=state, provider_message_id=sid, message_ref=ref)  # type: ignore[arg-type]
    await apply_provider_status(
        flow.runtime, job, p.ProviderStatusJob(channel="loop", update=update)
    )


async def test_a_status_that_came_before_the_retry_settles_the_doubt(flow: Flow) -> None:
    """The cut-off attempt's send was accepted and its status (carrying our id) arrived: the
    retry neither looks nor sends, and Unblu hears the state the status reported."""
    flow.provider.lookup = "unknown"  # a provider that cannot be asked (WhatsApp)
    job, payload = await flow.job("Your parcel is on its way")
    sid = _already_at_provider(flow.provider, "m1", "Your parcel is on its way")
    await _status(flow, job, "delivered", sid, "m1")
    row = await flow.runtime.store.get_message("m1")
    assert row is not None
    assert row.state == MessageState.PENDING  # kept on the part until the job completes
    await flow.run(job, payload)
    assert len(flow.provider.sends) == 1
    assert flow.provider.finds == []
    row = await flow.runtime.store.get_message("m1")
    assert row is not None
    assert (row.state, row.provider_message_id) == (MessageState.DELIVERED, sid)
    [report] = await flow.engine.reports()
    assert report.state == "delivered"


async def test_a_status_for_the_first_part_before_the_retry_sends_only_the_rest(
    flow: Flow,
) -> None:
    job, payload = await flow.job("one|two")
    sid = _already_at_provider(flow.provider, "m1", "one")  # accepted, never recorded
    await _status(flow, job, "delivered", sid, "m1")
    await flow.run(job, payload)
    assert [s["text"] for s in flow.provider.sends] == ["one", "two"]
    assert [f["text"] for f in flow.provider.finds] == ["two"]  # may have gone out too
    assert await flow.runtime.store.sent_parts("m1") == {0: sid, 1: "lp-2"}
    row = await flow.runtime.store.get_message("m1")
    assert row is not None
    assert row.state == MessageState.SENT  # part two is only sent


async def test_a_part_that_failed_ends_the_message_its_retry_sends_nothing_more(
    flow: Flow,
) -> None:
    """Part two is refused (retryably); the provider then reports part one failed: the
    message fails at once, and the retry neither sends part two nor reports again."""
    flow.provider.fail_text["two"] = 1
    job, payload = await flow.job("one|two", in_doubt=False)
    with pytest.raises(RetryableError):
        await flow.run(job, payload)
    await _status(flow, job, "failed", "lp-1", "m1")
    row = await flow.runtime.store.get_message("m1")
    assert row is not None
    assert row.state == MessageState.FAILED
    [report] = await flow.engine.reports()
    assert report == p.UnbluStateJob(
        channel="loop", message_id="m1", state="failed", failure_text=None, terminal=True
    )
    await flow.run(await flow.retried(job), payload)
    assert [s["text"] for s in flow.provider.sends] == ["one"]
    assert len(await flow.engine.reports()) == 1


async def test_jobs_not_in_doubt_never_look(flow: Flow) -> None:
    job, payload = await flow.job("Hi", in_doubt=False)
    await flow.run(job, payload)
    assert flow.provider.finds == []
    assert len(flow.provider.sends) == 1
    assert sum(flow.counted(o) for o in ("found", "not_found", "unknown", "lookup_failed")) == 0


async def test_a_retryable_lookup_failure_retries_the_job_without_sending(flow: Flow) -> None:
    flow.provider.lookup = 503
    job, payload = await flow.job("Hi")
    with pytest.raises(RetryableError):
        await flow.run(job, payload)
    assert flow.provider.sends == []
    assert flow.counted("lookup_failed") == 1
    # The provider answers again: the next attempt (still in doubt) looks and sends once.
    flow.provider.lookup = "answer"
    await flow.run(job, payload)
    assert len(flow.provider.sends) == 1
    assert flow.counted("not_found") == 1


async def test_a_permanent_lookup_failure_sends_and_counts(flow: Flow) -> None:
    flow.provider.lookup = 403  # e.g. credentials that may send but not read
    job, payload = await flow.job("Hi")
    await flow.run(job, payload)
    assert len(flow.provider.sends) == 1
    assert flow.counted("lookup_failed") == 1


async def test_a_match_recorded_for_another_message_is_not_taken(flow: Flow) -> None:
    """The same text sent twice: the provider's match is the earlier message, not this one."""
    first, first_payload = await flow.job("OK", in_doubt=False)
    await flow.run(first, first_payload)
    second, second_payload = await flow.job("OK")

    async def earlier_one(channel: Any, message: Any) -> Any:
        return msgspec.convert({"provider_message_id": "lp-1"}, loopback_plugin.SendResult)

    flow.runtime.hooks.find_sent = earlier_one  # type: ignore[method-assign]
    await flow.run(second, second_payload)
    assert len(flow.provider.sends) == 2
    assert await flow.runtime.store.sent_parts("m2") == {0: "lp-2"}
    assert flow.counted("unknown") == 1


async def test_the_lookup_is_told_when_the_message_was_accepted(flow: Flow) -> None:
    seen: list[Any] = []

    async def record(channel: Any, message: Any) -> bool:
        seen.append(message)
        return False

    flow.runtime.hooks.find_sent = record  # type: ignore[method-assign]
    job, payload = await flow.job("Hi")
    await flow.run(job, payload)
    [message] = seen
    assert message.accepted_at == job.created_at > 0
    assert (message.id, message.part, message.text) == ("m1", 0, "Hi")


async def test_a_status_recorded_while_the_retry_looks_is_taken_as_this_message(
    flow: Flow,
) -> None:
    """The cut-off attempt's status arrives between the retry's reading of the recorded parts
    and its lookup, and is recorded as the message's first part: the provider's match is this
    very message's, so it is not sent again."""
    job, payload = await flow.job("Your parcel is on its way")
    sid = _already_at_provider(flow.provider, "m1", "Your parcel is on its way")

    async def status_meanwhile(channel: Any, message: Any) -> Any:
        await _status(flow, job, "delivered", sid, "m1")
        return msgspec.convert({"provider_message_id": sid}, loopback_plugin.SendResult)

    flow.runtime.hooks.find_sent = status_meanwhile  # type: ignore[method-assign]
    await flow.run(job, payload)
    assert len(flow.provider.sends) == 1
    assert await flow.runtime.store.sent_parts("m1") == {0: sid}
    assert flow.counted("found") == 1


async def test_a_dead_letter_retried_by_hand_sends_only_the_parts_not_sent(flow: Flow) -> None:
    """Retried by hand, its attempts start again at 0 and it is not in doubt, but it ran
    before: it reads which parts went out, as a job on its first run need not."""
    flow.provider.fail_text["two"] = 1
    job, payload = await flow.job("one|two", in_doubt=False)
    with pytest.raises(RetryableError):
        await flow.run(job, payload)
    store = flow.runtime.store
    assert await store.bury_job(job.id, "gave up", fence=job.fence)
    assert await store.retry_job(job.id)
    [again] = await store.claim_jobs(100, 60)
    assert (again.id, again.attempts, again.in_doubt) == (job.id, 0, False)
    await flow.run(again, payload)
    assert [s["text"] for s in flow.provider.sends] == ["one", "two"]


async def test_a_first_run_reads_the_store_once(flow: Flow) -> None:
    """An agent's message on its job's first run: its contact, conversation and the contact's
    last message in one read, and no look for what an earlier attempt did (a retry looks)."""
    store = flow.runtime.store
    await store.add_conversation(
        ConversationRow(
            channel="loop", thread=CUSTOMER, contact_address=CUSTOMER, unblu_conversation_id="c1"
        )
    )
    await store.upsert_contact(ContactRow(channel="loop", address=CUSTOMER, name="Ann"))
    job, payload = await flow.job("Hi", in_doubt=False)
    reads = Reads(store)
    await flow.run(job, payload)
    assert reads.count == 1

    flow.provider.fail_text["Hello"] = 1
    job, payload = await flow.job("Hello", in_doubt=False)
    with pytest.raises(RetryableError):
        await flow.run(job, payload)
    retried = await flow.retried(job)
    reads = Reads(store)
    await flow.run(retried, payload)
    assert reads.count == 3  # and whether it was sent, and which parts were
    assert [s["text"] for s in flow.provider.sends] == ["Hi", "Hello"]
