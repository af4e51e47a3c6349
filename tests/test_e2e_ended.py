"""A conversation the agent ends: the customer gets the channel's ``ended_text``, once.

Over real HTTP, v4 and v3: ``extmsg serve`` registers a ``conversation.ended`` webhook in the
sandbox, the sandbox emits the event when the agent ends the conversation, and the text reaches
the loopback provider — once, even when Unblu delivers the event again or the server is killed
between the event and the send.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from extmsg.sandbox.inputs import NewConversation, PersonFields
from extmsg.sandbox.state import Participant
from extmsg.testing.helpers import eventually
from extmsg.unblu import signing

from .e2e import CUSTOMER, World, serving

ENDED = "Thanks for writing to us. Reply any time to start again."
AUTH = {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}


@pytest.fixture(params=["v4", "v3"])
async def world(
    request: pytest.FixtureRequest, tmp_path: Path, unblu_sandbox: Any, aiohttp_server: Any
) -> AsyncIterator[World]:
    async with serving(
        request.param,
        tmp_path,
        unblu_sandbox,
        aiohttp_server,
        channel_settings=f'ended_text = "{ENDED}"',
    ) as running:
        yield running


def sent(world: World, text: str) -> list[dict[str, Any]]:
    return [s for s in world.provider.sends if s["text"] == text]


async def arrived(world: World, text: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        return sent(world, text) or None

    found: list[dict[str, Any]] = await eventually(check, timeout)
    return found


async def open_conversation(world: World, message_id: str = "p1") -> dict[str, Any]:
    assert await world.say(message_id, "Hello, I need help") == 200

    async def one() -> dict[str, Any] | None:
        convs = [c for c in await world.conversations() if c["state"] != "ENDED"]
        return convs[0] if convs and convs[0]["messageCount"] >= 1 else None

    conv: dict[str, Any] = await eventually(one)
    return conv


async def ended_deliveries(world: World) -> list[dict[str, Any]]:
    data = await world.agent("deliveries")
    items = data["deliveries"] if isinstance(data, dict) else data
    return [d for d in items if d["name"] == "conversation.ended"]


async def test_ending_a_conversation_sends_the_ended_text_once(world: World) -> None:
    # The registration extmsg provisioned: the channel's endpoint, its secret, the one event.
    url = f"{world.sandbox.base_url}/{world.version}/webhookregistrations/getByName"
    async with world.session.get(
        url, params={"name": "loop conversation.ended"}, headers=AUTH
    ) as resp:
        registration = await resp.json()
    assert registration["endpoint"] == f"{world.base}/unblu/loop"
    assert registration["events"] == ["conversation.ended"]
    assert registration["apiVersion"] == world.version.upper()

    async def reported() -> str | None:
        async with world.session.get(f"{world.admin}/readyz") as resp:
            body = await resp.json()
        found: str | None = body["channels"]["loop"]["ended_webhook_id"]
        return found

    assert await eventually(reported) == registration["id"]

    conv = await open_conversation(world)
    await world.agent(f"conversations/{conv['id']}/messages", "POST", text="Glad I could help")
    await arrived(world, "Sandbox Agent: Glad I could help")
    await world.agent(f"conversations/{conv['id']}/end", "POST", reason="ENDED_BY_PARTICIPANT")

    [notice] = await arrived(world, ENDED)
    assert notice["to"] == CUSTOMER  # no sender prefix: extmsg speaks, not an agent
    texts = [s["text"] for s in world.provider.sends]
    assert texts.index("Sandbox Agent: Glad I could help") < texts.index(ENDED)

    # Unblu delivering the same event again (a retry after a lost answer) sends nothing more.
    [delivery] = await eventually(lambda: ended_deliveries(world))
    assert delivery["state"] == "delivered"
    raw = json.dumps(delivery["body"], ensure_ascii=False, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Unblu-Hookshot",
        "x-unblu-event": "conversation.ended",
        **signing.sign_headers("whsec-123", raw),
    }
    async with world.session.post(f"{world.base}/unblu/loop", data=raw, headers=headers) as r:
        assert r.status == 200
    # ... and an unsigned one is refused like any call to the channel.
    unsigned = {k: v for k, v in headers.items() if not k.startswith("x-unblu-signature")}
    async with world.session.post(f"{world.base}/unblu/loop", data=raw, headers=unsigned) as r:
        assert r.status == 403
    # A conversation of no channel of ours ends too: the registration hears of it, no text.
    sandbox = world.sandbox.sandbox
    person = sandbox.upsert_virtual_person(PersonFields(source_id="web:1", person_type="VISITOR"))
    other = sandbox.create_conversation(
        NewConversation(
            channel_id=None,
            source_id="+41790000099",
            initial_engagement_type="CHAT_REQUEST",
            participants=[Participant(person.id, "CONTEXT_PERSON")],
        )
    )
    await world.agent(f"conversations/{other.id}/end", "POST")

    async def both_delivered() -> bool:
        return sum(d["state"] == "delivered" for d in await ended_deliveries(world)) >= 2

    await eventually(both_delivered)
    await asyncio.sleep(0.5)
    assert len(sent(world, ENDED)) == 1

    # The next message opens a new conversation, as before.
    assert await world.say("p2", "One more thing") == 200

    async def fresh() -> list[dict[str, Any]] | None:
        convs = [c for c in await world.conversations() if c["id"] != conv["id"]]
        return convs or None

    await eventually(fresh)


@pytest.mark.parametrize("version", ["v4", "v3"])
async def test_the_ended_text_survives_a_crash(
    version: str, tmp_path: Path, unblu_sandbox: Any, aiohttp_server: Any
) -> None:
    async with serving(
        version,
        tmp_path,
        unblu_sandbox,
        aiohttp_server,
        channel_settings=f'ended_text = "{ENDED}"',
        lease_seconds=1.0,  # a job running at the kill is taken back soon
    ) as world:
        await _crash_between_event_and_send(world)


async def _crash_between_event_and_send(world: World) -> None:
    conv = await open_conversation(world)
    world.provider.fail_text[ENDED] = 1_000_000  # the provider refuses it for now
    await world.agent(f"conversations/{conv['id']}/end", "POST")

    async def acknowledged() -> bool:
        return any(d["state"] == "delivered" for d in await ended_deliveries(world))

    await eventually(acknowledged)
    world.proc.kill()  # SIGKILL: the event was answered, the text not sent
    assert sent(world, ENDED) == []

    world.provider.fail_text.clear()
    world.proc.start()
    await world.proc.wait_ready(world.base)
    await arrived(world, ENDED, timeout=20)
    await asyncio.sleep(0.5)
    assert len(sent(world, ENDED)) == 1


async def test_without_ended_text_nothing_is_registered_or_sent(
    tmp_path: Path, unblu_sandbox: Any, aiohttp_server: Any
) -> None:
    async with serving("v4", tmp_path, unblu_sandbox, aiohttp_server) as world:
        conv = await open_conversation(world)
        await world.agent(f"conversations/{conv['id']}/end", "POST")
        await asyncio.sleep(0.5)
        assert unblu_sandbox.sandbox.state.webhooks == {}
        assert await ended_deliveries(world) == []
        assert world.provider.sends == []


async def test_a_refused_registration_holds_back_no_message(
    tmp_path: Path, unblu_sandbox: Any, aiohttp_server: Any
) -> None:
    """Unblu refusing the registration (an API user without the role) keeps the channel
    working; provisioning tries again and registers once it is allowed."""
    sandbox = unblu_sandbox.sandbox
    sandbox.forbid(["POST /webhookregistrations/create"])
    async with serving(
        "v4",
        tmp_path,
        unblu_sandbox,
        aiohttp_server,
        channel_settings=f'ended_text = "{ENDED}"',
    ) as world:
        await open_conversation(world)  # messages flow meanwhile
        assert sandbox.state.webhooks == {}
        sandbox.permit()

        async def registered() -> bool:
            return bool(sandbox.state.webhooks)

        await eventually(registered, timeout=15)


async def test_a_conversation_closed_from_the_messenger_side_gets_no_text(
    tmp_path: Path, unblu_sandbox: Any, aiohttp_server: Any
) -> None:
    async with serving(
        "v4",
        tmp_path,
        unblu_sandbox,
        aiohttp_server,
        channel_settings=f'ended_text = "{ENDED}"',
    ) as world:
        conv = await open_conversation(world)
        await world.agent(
            f"conversations/{conv['id']}/end", "POST", reason="EXTERNAL_CHANNEL_CLOSED"
        )

        async def acknowledged() -> bool:
            return any(d["state"] == "delivered" for d in await ended_deliveries(world))

        await eventually(acknowledged)
        await asyncio.sleep(0.5)
        assert sent(world, ENDED) == []
