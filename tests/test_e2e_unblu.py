"""End to end over real HTTP: ``extmsg serve`` ⇄ the Unblu sandbox ⇄ a messenger, v3 and v4.

The messenger is the loopback test plugin, so these tests are about the core and the Unblu
side; each messenger plugin has its own end-to-end tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from extmsg.unblu import signing

from .helpers import ServeProcess, free_port
from .loopback_fake import LoopbackProvider, signed

T = TypeVar("T")

CONFIG = """
[server]
port = {port}
public_url = "http://127.0.0.1:{port}"

[store]
path = "store.sqlite3"

[unblu]
base_url = "{unblu}"
api_version = "{version}"
username = "admin"
password = "admin"

[engine]
backoff_initial = 0.05
backoff_max = 0.5
max_attempts = 4

[[channels]]
name = "loop"
messenger = "loopback"
webhook_secret = "whsec-123"
sender_fallback = "Support"
[channels.settings]
token = "tok"
api_url = "{provider}"
"""

CUSTOMER = "+41790000001"


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 10.0) -> T:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@dataclass
class World:
    base: str
    sandbox: Any
    provider: LoopbackProvider
    session: aiohttp.ClientSession
    proc: ServeProcess
    channel_id: str

    async def inbound(self, payload: dict[str, Any], token: str = "tok") -> int:
        body, headers = signed(token, payload)
        async with self.session.post(
            f"{self.base}/channels/loop/inbound", data=body, headers=headers
        ) as resp:
            return resp.status

    async def say(self, message_id: str, text: str, sender: str = CUSTOMER) -> int:
        return await self.inbound({"messages": [{"id": message_id, "from": sender, "text": text}]})

    async def agent(self, path: str, method: str = "GET", **body: Any) -> Any:
        url = f"{self.sandbox.url}/sandbox/api/{path}"
        async with self.session.request(method, url, json=body or None) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def conversations(self) -> list[dict[str, Any]]:
        data = await self.agent(f"conversations?channelId={self.channel_id}")
        return list(data["conversations"] if isinstance(data, dict) else data)

    async def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        data = await self.agent(f"conversations/{conversation_id}/messages")
        return list(data["messages"] if isinstance(data, dict) else data)


@pytest.fixture(params=["v4", "v3"])
async def world(
    request: pytest.FixtureRequest, tmp_path: Path, unblu_sandbox: Any, aiohttp_server: Any
) -> AsyncIterator[World]:
    provider = LoopbackProvider()
    provider_server = await aiohttp_server(provider.app)
    port = free_port()
    config = tmp_path / "extmsg.toml"
    config.write_text(
        CONFIG.format(
            port=port,
            unblu=unblu_sandbox.base_url,
            version=request.param,
            provider=str(provider_server.make_url("")).rstrip("/"),
        )
    )
    proc = ServeProcess(config, env={"EXTMSG_PLUGINS": "tests.loopback_plugin"})
    proc.start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await proc.wait_ready(base)

            async def provisioned() -> str | None:
                async with session.get(f"{base}/readyz") as resp:
                    body = await resp.json()
                channel_id: str | None = body["channels"]["loop"]["unblu_channel_id"]
                return channel_id

            channel_id = await eventually(provisioned)
            yield World(base, unblu_sandbox, provider, session, proc, channel_id)
    finally:
        proc.kill()


async def test_channel_is_provisioned_with_our_endpoint(world: World) -> None:
    channels = await world.agent("channels")
    items = channels["channels"] if isinstance(channels, dict) else channels
    [channel] = [c for c in items if c["id"] == world.channel_id]
    assert channel["name"] == "loop"
    assert channel["webhookEndpoint"] == f"{world.base}/unblu/loop"
    assert channel["messageStateHandledExternally"] is True


async def test_conversation_lifecycle(world: World) -> None:
    assert await world.say("p1", "Hello, I need help") == 200

    async def one_conversation() -> list[dict[str, Any]] | None:
        convs = await world.conversations()
        if convs and convs[0]["messageCount"] >= 1:
            return convs
        return None

    [conv] = await eventually(one_conversation)
    assert conv["sourceId"] == CUSTOMER
    assert conv["state"] == "QUEUED"
    [first] = await world.messages(conv["id"])
    assert first["text"] == "Hello, I need help"
    assert first["sourceId"] == "p1"

    # The next message lands in the same conversation; a repeated delivery adds nothing.
    assert await world.say("p2", "Are you there?") == 200
    assert await world.say("p2", "Are you there?") == 200

    async def two_messages() -> list[dict[str, Any]] | None:
        msgs = await world.messages(conv["id"])
        return msgs if len(msgs) >= 2 else None

    msgs = await eventually(two_messages)
    await asyncio.sleep(0.3)
    assert [m["text"] for m in await world.messages(conv["id"])] == [
        "Hello, I need help",
        "Are you there?",
    ]
    assert len(await world.conversations()) == 1
    assert [m["sourceId"] for m in msgs] == ["p1", "p2"]

    # After the agent ends it, the customer's next message opens a new conversation.
    await world.agent(f"conversations/{conv['id']}/end", "POST", reason="ENDED_BY_PARTICIPANT")
    assert await world.say("p3", "One more question") == 200

    async def second_conversation() -> list[dict[str, Any]] | None:
        convs = await world.conversations()
        fresh = [c for c in convs if c["id"] != conv["id"] and c["messageCount"] >= 1]
        return fresh or None

    [fresh] = await eventually(second_conversation)
    assert fresh["sourceId"] == CUSTOMER
    assert fresh["state"] == "QUEUED"
    assert [m["text"] for m in await world.messages(fresh["id"])] == ["One more question"]


async def test_agent_reply_is_sent_once_with_prefix_and_states_flow_back(world: World) -> None:
    assert await world.say("p1", "Hi") == 200
    [conv] = await eventually(world.conversations)
    await world.agent(
        f"conversations/{conv['id']}/messages",
        "POST",
        text="How can I help?",
        senderName="Anna Agent",
    )
    await world.agent(f"conversations/{conv['id']}/messages", "POST", text="Still there?")
    sends = await eventually(lambda: _at_least(world.provider.sends, 2))
    await asyncio.sleep(0.3)
    assert len(world.provider.sends) == 2
    assert sends[0]["to"] == CUSTOMER
    assert sends[0]["text"] == "Anna Agent: How can I help?"
    assert sends[1]["text"].endswith(": Still there?")

    async def agent_message(state: str) -> dict[str, Any] | None:
        msgs = await world.messages(conv["id"])
        for m in msgs:
            if m.get("text") == "How can I help?" and m["state"] == state:
                return m
        return None

    await eventually(lambda: agent_message("SENT"))
    ref = sends[0]["ref"]
    # The provider's statuses, one of them late: READ is never lost to a late DELIVERED.
    assert await world.inbound({"statuses": [{"state": "delivered", "ref": ref}]}) == 200
    await eventually(lambda: agent_message("DELIVERED"))
    assert await world.inbound({"statuses": [{"state": "read", "id": "lp-1"}]}) == 200
    await eventually(lambda: agent_message("READ"))
    assert await world.inbound({"statuses": [{"state": "delivered", "ref": ref}]}) == 200
    await asyncio.sleep(0.5)
    assert (await agent_message("READ")) is not None

    # The agent reads the customer's message: the provider gets the read receipt.
    [visitor] = [m for m in await world.messages(conv["id"]) if m.get("sourceId") == "p1"]
    await world.agent(f"conversations/{conv['id']}/messages/{visitor['id']}/read", "POST")
    assert await eventually(lambda: _at_least(world.provider.reads, 1)) == ["p1"]


async def test_permanent_provider_failure_is_reported_to_unblu(world: World) -> None:
    world.provider.fail[CUSTOMER] = 400
    assert await world.say("p1", "Hi") == 200
    [conv] = await eventually(world.conversations)
    await world.agent(f"conversations/{conv['id']}/messages", "POST", text="Hello?")

    async def failed() -> dict[str, Any] | None:
        for m in await world.messages(conv["id"]):
            if m.get("text") == "Hello?" and m["state"] == "FAILED":
                return m
        return None

    message = await eventually(failed)
    assert message["failState"] == "TERMINAL"
    assert "recipient refused (400)" in message["failureText"]
    assert world.provider.sends == []


async def test_bad_signatures_are_refused_and_change_nothing(world: World) -> None:
    assert await world.inbound({"messages": [{"id": "x1", "from": CUSTOMER}]}, token="wrong") == 403
    body = b'{"$_type": "PingRequest", "pingId": "p"}'
    headers = {"x-unblu-service-name": "outbound.ping", "x-unblu-signature-256": "0" * 64}
    async with world.session.post(f"{world.base}/unblu/loop", data=body, headers=headers) as resp:
        assert resp.status == 403
    async with world.session.post(
        f"{world.base}/unblu/loop",
        data=body,
        headers={
            "x-unblu-service-name": "outbound.ping",
            **signing.sign_headers("whsec-123", body),
        },
    ) as resp:
        assert resp.status == 200
        answer = await resp.read()
        assert resp.headers[signing.SIGNATURE_256_HEADER] == signing.signature_256(
            "whsec-123", answer
        )
    await asyncio.sleep(0.3)
    assert await world.conversations() == []


async def _at_least(items: list[T], n: int) -> list[T] | None:
    return list(items) if len(items) >= n else None
