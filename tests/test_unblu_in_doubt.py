"""A contact's message whose earlier attempt may have reached Unblu is not posted twice.

The server runs in-process against the Unblu sandbox over HTTP (v4 and v3). Each test stores a
message, lets a first attempt of its job die at a chosen point (after Unblu accepted the post,
before the store recorded it; or between the parts of a message), then runs the next attempt
the way the engine runs a job it took over: ``in_doubt``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from extmsg.flows import payloads as p
from extmsg.flows.to_unblu import deliver_to_unblu
from extmsg.models import Attachment, Contact, InboundMessage
from extmsg.plugins import build_hooks
from extmsg.runtime import Runtime
from extmsg.sandbox.state import Conversation, Message
from extmsg.store.base import Intake, Job, NewJob, NewMessage
from extmsg.testing.helpers import eventually, running_extmsg

from . import loopback_plugin
from .helpers import ROOT
from .store_reads import Reads

CUSTOMER = "+41790000001"
LOG_OPERATION = "POST /conversationhistory/{conversationId}/exportMessageLog"


class Killed(Exception):
    """The process died here."""


@dataclass
class World:
    runtime: Runtime
    sandbox: Any
    session: aiohttp.ClientSession
    version: str

    def conversation(self) -> Conversation:
        [conv] = self.sandbox.sandbox.state.conversations.values()
        return conv

    def messages(self) -> list[Message]:
        return list(self.sandbox.sandbox.messages_of(self.conversation()))

    def unblu_id(self, m: Message) -> str:
        """What sendMessage answered for ``m``: v3 answers the action id, not the message's."""
        return m.id if self.version == "v4" else m.action_id

    def count(self, outcome: str) -> float:
        value = self.runtime.metrics.registry.get_sample_value(
            "extmsg_in_doubt_total",
            {"channel": "loop", "direction": "to_unblu", "outcome": outcome},
        )
        return value or 0.0

    async def store(self, message: InboundMessage) -> p.ToUnbluJob:
        payload = p.ToUnbluJob(channel="loop", message_id=p.new_id(), message=message)
        await self.runtime.store.intake(
            [
                Intake(
                    message=NewMessage(
                        id=payload.message_id,
                        channel="loop",
                        direction="in",
                        thread=message.thread_id,
                        provider_message_id=message.provider_message_id,
                    )
                )
            ]
        )
        return payload

    async def attempt(
        self, payload: p.ToUnbluJob, *, in_doubt: bool = False, attempts: int = 0
    ) -> None:
        job = Job(
            id=1,
            kind=p.kind(payload),
            lane=p.lane("loop", payload.message.thread_id),
            payload=p.encode(payload),
            state="running",
            attempts=attempts,
            next_at=0.0,
            created_at=time.time(),
            in_doubt=in_doubt,
        )
        await deliver_to_unblu(self.runtime, job, payload)

    async def claimed(self, payload: p.ToUnbluJob) -> Job:
        """The message's job, stored and claimed as the engine claims it (which is stopped,
        so that it does not run the job itself)."""
        assert self.runtime.engine is not None
        await self.runtime.engine.stop(1.0)
        store = self.runtime.store
        await store.intake(
            [
                Intake(
                    job=NewJob(
                        kind=p.kind(payload),
                        lane=p.lane("loop", payload.message.thread_id),
                        payload=p.encode(payload),
                        message_id=payload.message_id,
                    )
                )
            ]
        )
        [job] = await store.claim_jobs(1, 60)
        assert job.message_id == payload.message_id
        return job

    async def run(self, job: Job, payload: p.ToUnbluJob) -> None:
        """Run a claimed job, and complete it as the engine would."""
        await deliver_to_unblu(self.runtime, job, payload)
        assert await self.runtime.store.complete_job(job.id, fence=job.fence)

    async def again(self, job: Job, *, by_hand: bool = False) -> Job:
        """``job``'s next attempt after it failed: retried, or (``by_hand``) a dead letter
        retried by hand."""
        store = self.runtime.store
        if by_hand:
            assert await store.bury_job(job.id, "refused", fence=job.fence)
            assert await store.retry_job(job.id)
        else:
            assert await store.reschedule_job(job.id, 0, "failed", fence=job.fence)
        [again] = await store.claim_jobs(1, 60)
        assert again.id == job.id
        return again

    async def recorded_unblu_id(self, payload: p.ToUnbluJob) -> str | None:
        row = await self.runtime.store.get_message(payload.message_id)
        assert row is not None
        return row.unblu_message_id


def text(pid: str, body: str, *attachments: Attachment) -> InboundMessage:
    return InboundMessage(
        provider_message_id=pid,
        contact=Contact(address=CUSTOMER),
        text=body,
        attachments=attachments,
    )


def die_on_call(monkeypatch: pytest.MonkeyPatch, obj: object, name: str, call: int) -> None:
    """``obj.name`` works until its ``call``-th call, which dies before doing anything."""
    real: Callable[..., Any] = getattr(obj, name)
    calls = 0

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == call:
            raise Killed(name)
        return await real(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)


async def crash_after_posting(
    world: World, monkeypatch: pytest.MonkeyPatch, payload: p.ToUnbluJob
) -> None:
    """A first attempt posts the message, then dies before the store records it."""
    with monkeypatch.context() as patch:
        die_on_call(patch, world.runtime.store, "update_message", 1)
        with pytest.raises(Killed):
            await world.attempt(payload)


async def start(
    tmp_path: Path, sandbox: Any, version: str, *, forbidden: tuple[str, ...] = ()
) -> AsyncIterator[World]:
    async with aiohttp.ClientSession() as session:
        if forbidden:
            url = f"{sandbox.url}/sandbox/api/forbidden"
            async with session.post(url, json={"operations": list(forbidden)}) as resp:
                assert resp.status == 200, await resp.text()
        raw = {
            "store": {"path": str(tmp_path / "store.sqlite3")},
            "unblu": {
                "base_url": sandbox.base_url,
                "api_version": version,
                "username": "admin",
                "password": "admin",
            },
            "channels": [
                {
                    "name": "loop",
                    "messenger": "loopback",
                    "webhook_secret": "whsec-123",
                    "settings": {"token": "tok"},
                }
            ],
        }
        hooks = build_hooks(entry_points=False, extra=[loopback_plugin], disabled=())
        async with running_extmsg(raw, hooks) as extmsg:
            world = World(extmsg.runtime, sandbox, session, version)
            await world.attempt(await world.store(text("p0", "Hello")))  # contact, conversation
            yield world


@pytest.fixture(params=["v4", "v3"])
async def world(
    request: pytest.FixtureRequest, tmp_path: Path, unblu_sandbox: Any
) -> AsyncIterator[World]:
    async for w in start(tmp_path, unblu_sandbox, request.param):
        yield w


@pytest.fixture
async def world_v4(tmp_path: Path, unblu_sandbox: Any) -> AsyncIterator[World]:
    async for w in start(tmp_path, unblu_sandbox, "v4"):
        yield w


async def test_every_part_carries_our_id_as_external_message_id(world: World) -> None:
    payload = await world.store(
        text(
            "p1",
            "see the files",
            Attachment("a.txt", "text/plain", b"a"),
            Attachment("b.txt", data=b"b"),
        )
    )
    await world.attempt(payload)
    parts = world.messages()[1:]
    assert [m.source_id for m in parts] == ["p1", "p1#1", "p1#2"]
    expected = [payload.message_id, f"{payload.message_id}#1", f"{payload.message_id}#2"]
    if world.version == "v4":
        assert [m.external_message_id for m in parts] == expected
    else:  # v3's ExternalMessengerPostMessage has no externalMessageId
        assert [m.external_message_id for m in parts] == [None, None, None]


async def test_in_doubt_message_unblu_already_has_is_not_posted_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = await world.store(text("p1", "Are you there?"))
    await crash_after_posting(world, monkeypatch, payload)
    assert [m.text for m in world.messages()] == ["Hello", "Are you there?"]
    assert await world.recorded_unblu_id(payload) is None

    await world.attempt(payload, in_doubt=True)

    texts = [m.text for m in world.messages()]
    if world.version == "v4":
        assert texts == ["Hello", "Are you there?"]
        assert await world.recorded_unblu_id(payload) == world.messages()[1].id
        assert (world.count("found"), world.count("not_found")) == (1.0, 0.0)
    else:  # v3 cannot be asked: posted again, and the possible double counted
        assert texts == ["Hello", "Are you there?", "Are you there?"]
        assert world.count("unknown") == 1.0


async def test_in_doubt_message_unblu_does_not_have_is_posted_once(world: World) -> None:
    payload = await world.store(text("p1", "Are you there?"))
    await world.attempt(payload, in_doubt=True)
    assert [m.text for m in world.messages()] == ["Hello", "Are you there?"]
    assert await world.recorded_unblu_id(payload) == world.unblu_id(world.messages()[1])
    outcome = "not_found" if world.version == "v4" else "unknown"
    assert world.count(outcome) == 1.0


async def test_parts_unblu_already_has_are_skipped(
    world_v4: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = world_v4
    files = (
        Attachment("a.txt", "text/plain", b"a", caption="first"),
        Attachment("b.txt", "text/plain", b"b"),
    )
    payload = await world.store(text("p1", "two files", *files))
    with monkeypatch.context() as patch:  # dies before the second file
        die_on_call(patch, world.runtime.unblu_client(), "send_file", 2)
        with pytest.raises(Killed):
            await world.attempt(payload)
    assert [m.source_id for m in world.messages()] == ["p0", "p1", "p1#1"]

    await world.attempt(payload, in_doubt=True)
    parts = world.messages()[1:]
    assert [m.source_id for m in parts] == ["p1", "p1#1", "p1#2"]
    assert [m.file.data if m.file else m.text for m in parts] == ["two files", b"a", b"b"]
    assert await world.recorded_unblu_id(payload) == parts[0].id
    assert world.count("found") == 1.0


async def test_a_retry_of_a_message_of_several_parts_skips_the_posted_ones(
    world_v4: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not in doubt, but its first attempt failed after posting the text: look anyway."""
    world = world_v4
    payload = await world.store(text("p1", "a file", Attachment("a.txt", "text/plain", b"a")))
    with monkeypatch.context() as patch:
        die_on_call(patch, world.runtime.unblu_client(), "send_file", 1)
        with pytest.raises(Killed):
            await world.attempt(payload)
    # Nothing recorded while a part is missing: the retry does not take the message for
    # posted (its early return) and posts the file.
    assert await world.recorded_unblu_id(payload) is None
    await world.attempt(payload, attempts=1)
    assert [m.source_id for m in world.messages()] == ["p0", "p1", "p1#1"]
    assert await world.recorded_unblu_id(payload) == world.messages()[1].id


async def test_a_dead_letter_retried_by_hand_skips_the_posted_parts(
    world_v4: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its attempts start again at 0 and it is not in doubt, but it ran before: look."""
    world = world_v4
    payload = await world.store(text("p1", "a file", Attachment("a.txt", "text/plain", b"a")))
    job = await world.claimed(payload)
    with monkeypatch.context() as patch:
        die_on_call(patch, world.runtime.unblu_client(), "send_file", 1)
        with pytest.raises(Killed):
            await deliver_to_unblu(world.runtime, job, payload)
    again = await world.again(job, by_hand=True)
    assert (again.attempts, again.in_doubt) == (0, False)
    await world.run(again, payload)
    assert [m.source_id for m in world.messages()] == ["p0", "p1", "p1#1"]
    assert await world.recorded_unblu_id(payload) == world.messages()[1].id


async def test_a_first_run_reads_the_store_once(world_v4: World) -> None:
    """A contact's message on its job's first run: the contact and the thread's conversation
    in one read, and no look for what an earlier attempt did (a retry looks)."""
    world = world_v4
    payload = await world.store(text("p1", "first"))
    job = await world.claimed(payload)
    reads = Reads(world.runtime.store)
    await world.run(job, payload)
    assert reads.count == 1

    payload = await world.store(text("p2", "second"))
    again = await world.again(await world.claimed(payload))
    reads = Reads(world.runtime.store)
    await world.run(again, payload)
    assert reads.count == 2  # and whether it was posted
    assert [m.text for m in world.messages()] == ["Hello", "first", "second"]


async def test_jobs_not_in_doubt_make_no_extra_call(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    die_on_call(monkeypatch, world.runtime.unblu_client(), "find_posted", 1)
    for n in range(3):
        await world.attempt(await world.store(text(f"p{n + 1}", f"message {n + 1}")))
    payload = await world.store(text("p9", "one file", Attachment("a.txt", "text/plain", b"a")))
    await world.attempt(payload)
    assert len(world.messages()) == 6
    assert sum(world.count(o) for o in ("found", "not_found", "unknown", "lookup_failed")) == 0


async def test_without_the_role_the_message_is_posted_again_with_one_warning(
    tmp_path: Path, unblu_sandbox: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="extmsg")

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "message log" in r.getMessage()
        ]

    async for world in start(tmp_path, unblu_sandbox, "v4", forbidden=(LOG_OPERATION,)):
        [warning] = await eventually(lambda: _some(warnings()))
        assert "role ADMIN" in warning
        assert "may show twice" in warning

        for n in (1, 2):
            payload = await world.store(text(f"p{n}", f"message {n}"))
            await crash_after_posting(world, monkeypatch, payload)
            await world.attempt(payload, in_doubt=True)
            assert await world.recorded_unblu_id(payload) == world.messages()[-1].id
        assert [m.text for m in world.messages()] == [
            "Hello",
            "message 1",
            "message 1",
            "message 2",
            "message 2",
        ]
        assert world.count("lookup_failed") == 2.0
        assert len(warnings()) == 1


async def test_v3_says_at_start_up_that_it_cannot_look(
    tmp_path: Path, unblu_sandbox: Any, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="extmsg")

    async def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "web API v3" in r.getMessage()]

    async for _world in start(tmp_path, unblu_sandbox, "v3"):
        [line] = await eventually(said)
        assert "may show twice" in line
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def _some(items: list[str]) -> list[str] | None:
    return items or None


async def test_check_says_whether_unblu_can_be_asked(tmp_path: Path, unblu_sandbox: Any) -> None:
    async def check(version: str) -> tuple[int, str, str]:
        config = tmp_path / f"{version}.toml"
        config.write_text(
            f'[unblu]\nbase_url = "{unblu_sandbox.base_url}"\napi_version = "{version}"\n'
            'username = "admin"\npassword = "admin"\n\n[[channels]]\nname = "loop"\n'
            'messenger = "loopback"\nwebhook_secret = "s"\n[channels.settings]\ntoken = "t"\n'
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "extmsg",
            "check",
            "--unblu",
            "--config",
            str(config),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "EXTMSG_PLUGINS": "tests.loopback_plugin"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await check("v4")
    assert code == 0, err
    assert "unblu v4: ok" in out
    assert not err

    unblu_sandbox.sandbox.forbid([LOG_OPERATION])
    code, out, err = await check("v4")
    assert code == 0, err
    assert err.startswith("warning: unblu v4: the Unblu API user lacks the role ADMIN")
    assert "may show twice" in err

    code, out, err = await check("v3")
    assert code == 0, err
    assert err.startswith("warning: unblu v3: web API v3 lists no message's externalMessageId")

    unblu_sandbox.sandbox.set_outage(None)
    code, out, err = await check("v4")
    assert code == 2
    assert err.startswith("error: unblu: cannot tell now:")
    assert "HTTP 503" in err
