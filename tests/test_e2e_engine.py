"""The delivery engine seen from outside: outages, dead letters, replays, late statuses."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from extmsg.unblu import signing

from .e2e import CUSTOMER, World, at_least, eventually, world

__all__ = ["world"]  # the fixture


async def _metric(world: World, name: str) -> float:
    async with world.session.get(f"{world.admin}/metrics") as resp:
        text = await resp.text()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def test_unblu_outage_holds_messages_then_delivers_them_in_order(world: World) -> None:
    await world.agent("outage", "POST")  # the REST API answers 503 until DELETE
    for n in range(1, 11):
        assert await world.say(f"p{n}", f"message {n}") == 200
    await asyncio.sleep(1.0)
    assert await world.conversations() == []
    await world.agent("outage", "DELETE")

    async def all_ten() -> list[dict[str, Any]] | None:
        convs = await world.conversations()
        if len(convs) == 1:
            msgs = await world.messages(convs[0]["id"])
            return msgs if len(msgs) >= 10 else None
        return None

    msgs = await eventually(all_ten, timeout=20)
    assert [m["text"] for m in msgs] == [f"message {n}" for n in range(1, 11)]
    assert len(await world.conversations()) == 1


async def test_a_permanent_unblu_error_becomes_a_dead_letter_not_a_retry_loop(
    world: World,
) -> None:
    await world.agent("reset", "POST")  # the channel is gone from Unblu
    assert await world.say("p1", "Hello?") == 200

    async def dead() -> float | None:
        value = await _metric(world, "extmsg_dead_letters")
        return value or None

    assert await eventually(dead) == 1.0
    assert await _metric(world, 'extmsg_jobs{state="ready"}') == 0.0


async def test_provider_retries_and_unblu_replays_have_one_effect(world: World) -> None:
    for _ in range(3):
        assert await world.say("p1", "Hi") == 200
    [conv] = await eventually(world.conversations)
    await asyncio.sleep(0.3)
    assert [m["sourceId"] for m in await world.messages(conv["id"])] == ["p1"]

    await world.agent(f"conversations/{conv['id']}/messages", "POST", text="Hello there")
    await eventually(lambda: at_least(world.provider.sends, 1))
    deliveries = await world.agent(f"deliveries?channelId={world.channel_id}")
    items = deliveries["deliveries"] if isinstance(deliveries, dict) else deliveries
    [delivery] = [d for d in items if "new_message" in d["name"]]
    body = _raw(delivery["body"])
    headers = {**signing.sign_headers("whsec-123", body), "content-type": "application/json"}
    headers.update(_name_header(delivery))
    for _ in range(2):
        async with world.session.post(
            f"{world.base}/unblu/loop", data=body, headers=headers
        ) as resp:
            assert resp.status == 200
    await asyncio.sleep(0.5)
    assert len(world.provider.sends) == 1


async def test_late_statuses_never_move_a_state_backwards(world: World) -> None:
    assert await world.say("p1", "Hi") == 200
    [conv] = await eventually(world.conversations)
    for text in ("first", "second"):
        await world.agent(f"conversations/{conv['id']}/messages", "POST", text=text)
    sends = await eventually(lambda: at_least(world.provider.sends, 2))
    first, second = sends[0]["ref"], sends[1]["ref"]

    async def state_of(text: str, state: str) -> dict[str, Any] | None:
        for m in await world.messages(conv["id"]):
            if m.get("text") == text and m["state"] == state:
                return m
        return None

    await eventually(lambda: state_of("first", "SENT"))
    await eventually(lambda: state_of("second", "SENT"))
    # Read arrives before delivered; a late "sent" follows a failure.
    await world.inbound({"statuses": [{"state": "read", "ref": first}]})
    await world.inbound({"statuses": [{"state": "delivered", "ref": first}]})
    await world.inbound({"statuses": [{"state": "failed", "ref": second, "error": "no route"}]})
    await world.inbound({"statuses": [{"state": "sent", "ref": second}]})
    await world.inbound({"statuses": [{"state": "delivered", "ref": second}]})
    await eventually(lambda: state_of("first", "READ"))
    failed = await eventually(lambda: state_of("second", "FAILED"))
    assert failed["failureText"] == "no route"
    await asyncio.sleep(0.5)
    assert await state_of("first", "READ")
    assert await state_of("second", "FAILED")


async def _jobs_done(world: World, kind: str) -> float | None:
    """How many jobs of ``kind`` finished; None while none has."""
    async with world.session.get(f"{world.admin}/metrics") as resp:
        text = await resp.text()
    name = f'extmsg_jobs_finished_total{{kind="{kind}",outcome="done"}}'
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def _raw(body: Any) -> bytes:
    import json

    return body.encode() if isinstance(body, str) else json.dumps(body).encode()


def _name_header(delivery: dict[str, Any]) -> dict[str, str]:
    if delivery.get("style") == "event":
        return {"x-unblu-event": delivery["name"]}
    return {"x-unblu-service-name": delivery["name"]}


async def test_a_split_message_resumes_after_its_failed_part(world: World) -> None:
    assert await world.say("p1", "Hi") == 200
    [conv] = await eventually(world.conversations)
    world.provider.fail_text["part two"] = 2  # the provider fails twice, then takes it
    await world.agent(
        f"conversations/{conv['id']}/messages", "POST", text="part one|part two", senderName="Bo"
    )

    async def sent() -> dict[str, Any] | None:
        for m in await world.messages(conv["id"]):
            if m.get("text") == "part one|part two" and m["state"] == "SENT":
                return m
        return None

    await eventually(sent)
    assert [s["text"] for s in world.provider.sends] == ["Bo: part one", "part two"]
    # A status for the second part's provider id finds the message too; it is delivered
    # once both parts are.
    assert await world.inbound({"statuses": [{"state": "delivered", "id": "lp-2"}]}) == 200
    await eventually(lambda: _jobs_done(world, "to_unblu.provider_status"))
    assert await sent()
    assert await world.inbound({"statuses": [{"state": "delivered", "id": "lp-1"}]}) == 200

    async def delivered() -> dict[str, Any] | None:
        for m in await world.messages(conv["id"]):
            if m.get("text") == "part one|part two" and m["state"] == "DELIVERED":
                return m
        return None

    await eventually(delivered)


async def test_unblu_repeating_a_failed_message_sends_it_again(world: World) -> None:
    world.provider.fail[CUSTOMER] = 400
    assert await world.say("p1", "Hi") == 200
    [conv] = await eventually(world.conversations)
    await world.agent(f"conversations/{conv['id']}/messages", "POST", text="Try me")

    async def in_state(state: str) -> dict[str, Any] | None:
        for m in await world.messages(conv["id"]):
            if m.get("text") == "Try me" and m["state"] == state:
                return m
        return None

    await eventually(lambda: in_state("FAILED"))
    del world.provider.fail[CUSTOMER]
    deliveries = await world.agent(f"deliveries?channelId={world.channel_id}")
    items = deliveries["deliveries"] if isinstance(deliveries, dict) else deliveries
    [delivery] = [d for d in items if "new_message" in d["name"]]
    body = _raw(delivery["body"])
    headers = {**signing.sign_headers("whsec-123", body), "content-type": "application/json"}
    headers.update(_name_header(delivery))
    async with world.session.post(f"{world.base}/unblu/loop", data=body, headers=headers) as resp:
        assert resp.status == 200
    [sent] = await eventually(lambda: at_least(world.provider.sends, 1))
    assert sent["text"].endswith(": Try me")
    await eventually(lambda: in_state("SENT"))


async def test_an_early_parts_status_does_not_end_a_message_still_being_sent(
    world: World,
) -> None:
    """The provider refuses part two (retryably) and reports part one delivered before the
    retry: the message stays unsent in Unblu, the retry sends part two, and the message is
    delivered once both parts are."""
    assert await world.say("p1", "Hi") == 200
    [conv] = await eventually(world.conversations)
    world.provider.fail_text["part two"] = 10**6  # refused until cleared
    text = "part one|part two"
    await world.agent(f"conversations/{conv['id']}/messages", "POST", text=text, senderName="Bo")
    [first] = await eventually(lambda: at_least(world.provider.sends, 1))
    status = {"state": "delivered", "id": "lp-1", "ref": first["ref"]}
    assert await world.inbound({"statuses": [status]}) == 200

    await eventually(lambda: _jobs_done(world, "to_unblu.provider_status"))

    async def state() -> str:
        [message] = [m for m in await world.messages(conv["id"]) if m.get("text") == text]
        return str(message["state"])

    assert await state() not in ("SENT", "DELIVERED")
    world.provider.fail_text.clear()

    async def in_state(wanted: str) -> bool:
        return await state() == wanted

    await eventually(lambda: in_state("SENT"))
    assert [s["text"] for s in world.provider.sends] == ["Bo: part one", "part two"]
    second = {"state": "delivered", "id": "lp-2", "ref": first["ref"]}
    assert await world.inbound({"statuses": [second]}) == 200
    await eventually(lambda: in_state("DELIVERED"))
    await asyncio.sleep(0.3)
    assert [s["text"] for s in world.provider.sends] == ["Bo: part one", "part two"]


async def test_a_receipt_that_outruns_its_send_ends_right_without_a_warning(
    world: World,
) -> None:
    """The provider reports the message delivered before it answers the send: the receipt is
    stored, waits for the send's record (retried at DEBUG level), and then delivers it."""
    assert await world.say("p1", "Hi") == 200
    [conv] = await eventually(world.conversations)

    async def receipt_first(provider_id: str, body: dict[str, Any]) -> None:
        status = {"state": "delivered", "id": provider_id}
        assert await world.inbound({"statuses": [status]}) == 200
        # The receipt's job runs while the send is not recorded, longer than its first few
        # attempts take with this test's short backoff.
        await asyncio.sleep(1.0)

    world.provider.before_answer = receipt_first
    await world.agent(f"conversations/{conv['id']}/messages", "POST", text="Quick")

    async def delivered() -> bool:
        return any(
            m.get("text") == "Quick" and m["state"] == "DELIVERED"
            for m in await world.messages(conv["id"])
        )

    await eventually(delivered)
    log = world.proc.log()
    alarming = [
        line
        for line in log.splitlines()
        if ("WARNING" in line or "ERROR" in line) and "status" in line
    ]
    assert alarming == []
