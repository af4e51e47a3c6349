"""What an operator alerts on, read from ``/metrics`` of a running ``extmsg serve``: calls to
Unblu and to the provider by outcome, and how long due work has waited."""

from __future__ import annotations

import asyncio
import re

from .e2e import World, at_least, eventually, world

__all__ = ["world"]  # the fixture

_SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$", re.M)


async def _samples(world: World, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    async with world.session.get(f"{world.admin}/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for metric, raw_labels, value in _SAMPLE.findall(text):
        if metric != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', raw_labels))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


async def test_an_unblu_outage_shows_as_failing_calls_and_waiting_work(world: World) -> None:
    await world.agent("outage", "POST")  # the REST API answers 503 until DELETE
    for n in range(1, 4):
        assert await world.say(f"p{n}", f"message {n}") == 200

    async def failing() -> float | None:
        return (
            await _samples(world, "extmsg_remote_calls_total", remote="unblu", outcome="retryable")
            or None
        )

    await eventually(failing)
    await asyncio.sleep(1.0)  # the later messages wait behind the first one's retries
    waited = await _samples(world, "extmsg_oldest_ready_job_seconds")
    assert waited >= 0.5
    seconds = await _samples(world, "extmsg_remote_call_seconds_count", remote="unblu")
    assert seconds >= await failing()  # every call timed

    ok_before = await _samples(world, "extmsg_remote_calls_total", remote="unblu", outcome="ok")
    await world.agent("outage", "DELETE")

    async def delivered() -> bool:
        convs = await world.conversations()
        return len(convs) == 1 and len(await world.messages(convs[0]["id"])) == 3

    await eventually(delivered, timeout=20)
    ok_after = await _samples(world, "extmsg_remote_calls_total", remote="unblu", outcome="ok")
    assert ok_after > ok_before
    assert await _samples(world, "extmsg_oldest_ready_job_seconds") == 0.0
    # a call's name is its path without ids: bounded labels
    text = await (await world.session.get(f"{world.admin}/metrics")).text()
    assert 'call="conversations/create"' in text
    assert "{" not in "".join(re.findall(r'call="([^"]*)"', text))


async def test_provider_sends_are_counted_by_outcome(world: World) -> None:
    assert await world.say("p1", "Hi") == 200
    [conv] = await eventually(world.conversations)
    world.provider.fail_text["Bo: Hello there"] = 1  # one 503, then accepted
    await world.agent(
        f"conversations/{conv['id']}/messages", "POST", text="Hello there", senderName="Bo"
    )
    await eventually(lambda: at_least(world.provider.sends, 1))

    async def counted() -> tuple[float, float] | None:
        by = {
            outcome: await _samples(
                world, "extmsg_remote_calls_total", remote="loopback", call="send", outcome=outcome
            )
            for outcome in ("ok", "retryable")
        }
        return (by["ok"], by["retryable"]) if by["ok"] else None

    assert await eventually(counted) == (1.0, 1.0)
    timed = await _samples(
        world, "extmsg_remote_call_seconds_count", remote="loopback", call="send"
    )
    assert timed == 2.0
