"""End to end in one process: the Twilio fake ⇄ extmsg (the core's app with this plugin) ⇄ the
Unblu sandbox. What a customer texts shows up in Unblu; what an agent writes reaches the fake,
and its delivery reports (or Twilio's refusals) come back as message states."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from twilio_testkit import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER

from extmsg.fetch import LOOPBACK
from extmsg.models import MessageState
from extmsg.plugins import build_hooks
from extmsg.runtime import Runtime
from extmsg.sandbox_mode import start_sandbox
from extmsg.testing.helpers import eventually, free_port, in_doubt_after_send, running_extmsg
from extmsg_sms_twilio import plugin
from extmsg_sms_twilio.fake import (
    TWILIO_FAKE,
    FakeFailure,
    FakeTwilio,
    InboundResult,
    create_twilio_fake,
    inbound_params,
)

CUSTOMER = "+41791234567"


@dataclass
class World:
    base: str
    fake_url: str
    fake: FakeTwilio
    sandbox: Any
    session: aiohttp.ClientSession
    channel_id: str
    runtime: Runtime

    async def text(self, body: str, **params: str) -> InboundResult:
        values = inbound_params(from_=CUSTOMER, to=FROM_NUMBER, body=body, account_sid=ACCOUNT_SID)
        values.update(params)
        return await self.fake.send_inbound(f"{self.base}/channels/sms/inbound", values)

    async def agent(self, path: str, method: str = "GET", **body: Any) -> Any:
        url = f"{self.sandbox.url}/sandbox/api/{path}"
        async with self.session.request(method, url, json=body or None) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def conversation(self) -> dict[str, Any]:
        async def one() -> dict[str, Any] | None:
            data = await self.agent(f"conversations?channelId={self.channel_id}")
            convs = data["conversations"] if isinstance(data, dict) else data
            # Opened and holding its first message (created, then posted to: two steps).
            return convs[0] if convs and convs[0]["messageCount"] >= 1 else None

        return await eventually(one)

    async def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        data = await self.agent(f"conversations/{conversation_id}/messages")
        return list(data["messages"] if isinstance(data, dict) else data)

    async def message_in(self, conversation_id: str, text: str, state: str) -> dict[str, Any]:
        async def find() -> dict[str, Any] | None:
            for m in await self.messages(conversation_id):
                if m.get("text") == text and m["state"] == state:
                    return m
            return None

        return await eventually(find)


@pytest.fixture(params=["v4", "v3"])
async def world(
    request: pytest.FixtureRequest, tmp_path: Path, unblu_sandbox: Any
) -> AsyncIterator[World]:
    async with _world(request.param, tmp_path, unblu_sandbox) as running:
        yield running


@contextlib.asynccontextmanager
async def _world(
    version: str, tmp_path: Path, unblu_sandbox: Any, *, callbacks: bool = True
) -> AsyncIterator[World]:
    fake_app = create_twilio_fake(
        account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, callback_delay=0.02, callbacks=callbacks
    )
    fake_server = TestServer(fake_app)
    await fake_server.start_server()
    fake_url = str(fake_server.make_url("")).rstrip("/")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    hooks = build_hooks(entry_points=False, extra=[plugin], disabled=())
    raw = {
        "server": {"port": port, "public_url": base, "fetch_allowed_networks": list(LOOPBACK)},
        "store": {"path": str(tmp_path / "store.sqlite3")},
        "unblu": {
            "base_url": unblu_sandbox.base_url,
            "api_version": version,
            "username": "admin",
            "password": "admin",
        },
        "engine": {"backoff_initial": 0.05, "backoff_max": 0.5},
        "channels": [
            {
                "name": "sms",
                "messenger": "sms_twilio",
                "webhook_secret": "whsec-123",
                "settings": {
                    "account_sid": ACCOUNT_SID,
                    "auth_token": AUTH_TOKEN,
                    "from_number": FROM_NUMBER,
                    "api_base_url": fake_url,
                },
            }
        ],
    }
    try:
        async with running_extmsg(raw, hooks, port=port) as extmsg:
            channel_id = extmsg.channel_ids["sms"]
            yield World(
                base,
                fake_url,
                fake_app[TWILIO_FAKE],
                unblu_sandbox,
                extmsg.session,
                channel_id,
                extmsg.runtime,
            )
    finally:
        await fake_server.close()


async def test_conversation_round_trip(world: World) -> None:
    first = await world.text("Hello, my parcel did not arrive")
    assert (first.status, first.content_type) == (200, "text/xml")
    assert first.body == '<?xml version="1.0" encoding="UTF-8"?><Response/>'
    again = await world.fake.send_inbound(f"{world.base}/channels/sms/inbound", first.params)
    assert again.status == 200  # Twilio's retry of the same MessageSid

    conv = await world.conversation()
    assert conv["sourceId"] == CUSTOMER
    [message] = await world.messages(conv["id"])
    assert message["text"] == "Hello, my parcel did not arrive"
    assert message["sourceId"] == first.params["MessageSid"]

    await world.agent(
        f"conversations/{conv['id']}/messages",
        "POST",
        text="Let me check that for you",
        senderName="Anna",
    )
    await world.message_in(conv["id"], "Let me check that for you", "DELIVERED")
    [sent] = world.fake.messages
    assert (sent["to"], sent["from"]) == (CUSTOMER, FROM_NUMBER)
    assert sent["body"] == "Anna: Let me check that for you"
    assert sent["status_callback"].startswith(f"{world.base}/channels/sms/status?ref=")
    assert [c["http_status"] for c in sent["callbacks"]] == [200, 200, 200]


async def test_mms_arrives_as_file(world: World) -> None:
    """Basic auth on the fake's API host, then its redirect to "storage" on another origin,
    which answers 400 if the credentials came along (as pre-signed storage does)."""
    url = world.fake_url + world.fake.add_media(b"\x89PNG-picture", "image/png")
    result = await world.text("", NumMedia="1", MediaUrl0=url, MediaContentType0="image/png")
    assert result.status == 200
    conv = await world.conversation()

    async def file_message() -> dict[str, Any] | None:
        found = [m for m in await world.messages(conv["id"]) if m["type"] == "FILE"]
        return found[0] if found else None

    message = await eventually(file_message)
    assert message["mimeType"] == "image/png"
    async with world.session.get(f"{world.sandbox.url}/sandbox/api/files/{message['id']}") as r:
        assert await r.read() == b"\x89PNG-picture"


@pytest.mark.parametrize(
    ("scenario", "text"),
    [
        ("opted_out", "replied STOP"),
        ("unreachable", "unreachable"),
        ("invalid_number", "not a valid phone number"),
    ],
)
async def test_twilio_failures_reach_the_agent(world: World, scenario: str, text: str) -> None:
    await world.text("Hi")
    conv = await world.conversation()
    world.fake.fail(CUSTOMER, scenario)
    await world.agent(f"conversations/{conv['id']}/messages", "POST", text="Are you there?")
    failed = await world.message_in(conv["id"], "Are you there?", "FAILED")
    assert text in failed["failureText"]


async def test_stop_blocks_sends_until_start(world: World) -> None:
    await world.text("Hi")
    conv = await world.conversation()
    assert (await world.text("STOP")).status == 200

    async def stop_shown() -> bool:
        return any(m.get("text") == "STOP" for m in await world.messages(conv["id"]))

    await eventually(stop_shown)  # the agent sees why later messages fail
    await world.agent(f"conversations/{conv['id']}/messages", "POST", text="Anything else?")
    failed = await world.message_in(conv["id"], "Anything else?", "FAILED")
    assert "wrote STOP" in failed["failureText"]
    assert world.fake.messages == []

    assert (await world.text("START")).status == 200

    async def start_shown() -> bool:
        return any(m.get("text") == "START" for m in await world.messages(conv["id"]))

    await eventually(start_shown)
    await world.agent(f"conversations/{conv['id']}/messages", "POST", text="Welcome back")
    await world.message_in(conv["id"], "Welcome back", "DELIVERED")


async def test_agent_file_goes_out_as_a_signed_media_link(world: World) -> None:
    await world.text("Can you send me the form?")
    conv = await world.conversation()
    data = base64.b64encode(b"%PDF-1.4 form").decode()
    await world.agent(
        f"conversations/{conv['id']}/messages",
        "POST",
        file={"name": "form.pdf", "mimeType": "application/pdf", "data": data},
        senderName="Anna",
    )

    async def delivered_file() -> dict[str, Any] | None:
        for m in await world.messages(conv["id"]):
            if m["type"] == "FILE" and m["state"] == "DELIVERED":
                return m
        return None

    await eventually(delivered_file)
    [sent] = world.fake.messages
    [url] = sent["media_urls"]
    assert url.startswith(f"{world.base}/media/sms/")
    assert sent["body"] == "Anna:"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/pdf"
            assert await resp.read() == b"%PDF-1.4 form"
        async with session.get(url.replace("signature=", "signature=0")) as resp:
            assert resp.status == 404


async def test_long_agent_message_is_split(world: World) -> None:
    await world.text("Tell me everything")
    conv = await world.conversation()
    text = "All the details you asked for. " * 60  # 1860 characters
    await world.agent(
        f"conversations/{conv['id']}/messages", "POST", text=text.strip(), senderName="Anna"
    )
    await world.message_in(conv["id"], text.strip(), "DELIVERED")
    bodies = [m["body"] for m in world.fake.messages]
    assert len(bodies) == 2
    assert all(len(b) <= 1600 for b in bodies)
    assert " ".join(bodies).split() == ("Anna: " + text).split()
    refs = {m["status_callback"] for m in world.fake.messages}
    assert len(refs) == 1  # both parts report on the one agent message


async def test_part_two_refused_while_part_one_is_delivered_still_goes_out(
    tmp_path: Path, unblu_sandbox: Any
) -> None:
    """Twilio takes part one of a long message, answers 429 to part two, and reports part one
    sent and delivered before the retry. The agent's message is not shown as sent meanwhile;
    the retry sends part two (each part reaches Twilio once), and the message is delivered
    once both parts are."""
    async with _world("v4", tmp_path, unblu_sandbox) as world:
        await world.text("Tell me everything")
        conv = await world.conversation()
        throttled = FakeFailure(status=429, code=20429, message="Too Many Requests")
        world.fake.fail(CUSTOMER, throttled, after=1)  # until cleared
        text = ("All the details you asked for. " * 60).strip()  # two SMS
        await world.agent(
            f"conversations/{conv['id']}/messages", "POST", text=text, senderName="Anna"
        )

        async def part_one_reported() -> bool:
            return len(world.fake.messages) == 1 and _statuses_done(world) >= 2

        await eventually(part_one_reported)  # its "sent" and "delivered"
        shown = [m["state"] for m in await world.messages(conv["id"]) if m.get("text") == text]
        assert len(shown) == 1
        assert shown[0] not in ("SENT", "DELIVERED")
        stored = await world.runtime.store.find_message(
            "sms", "out", provider_message_id=world.fake.messages[0]["sid"]
        )
        assert stored is not None
        assert stored.state == MessageState.PENDING

        world.fake.clear_failures()
        await world.message_in(conv["id"], text, "DELIVERED")
        bodies = [m["body"] for m in world.fake.messages]
        assert len(bodies) == 2
        assert " ".join(bodies).split() == ("Anna: " + text).split()
        await world.fake.wait_idle()
        assert len(world.fake.messages) == 2


def _statuses_done(world: World) -> float:
    value = world.runtime.metrics.registry.get_sample_value(
        "extmsg_jobs_finished_total", {"kind": "to_unblu.provider_status", "outcome": "done"}
    )
    return value or 0.0


@pytest.fixture
async def file_host() -> AsyncIterator[tuple[str, list[str | None]]]:
    """A file server on another port of this machine, recording each Authorization header."""
    seen: list[str | None] = []

    async def picture(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(body=b"\x89PNG-elsewhere", content_type="image/png")

    app = web.Application()
    app.router.add_get("/picture.png", picture)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/picture.png")), seen
    finally:
        await server.close()


async def _file_of(world: World, conv_id: str) -> bytes:
    async def file_message() -> dict[str, Any] | None:
        found = [m for m in await world.messages(conv_id) if m["type"] == "FILE"]
        return found[0] if found else None

    message = await eventually(file_message)
    async with world.session.get(f"{world.sandbox.url}/sandbox/api/files/{message['id']}") as r:
        return await r.read()


async def test_mms_media_elsewhere_gets_no_credentials(
    world: World, file_host: tuple[str, list[str | None]]
) -> None:
    """A signed MMS whose MediaUrl is not Twilio's API: fetched (loopback is allowed here)
    without the account's credentials."""
    url, seen = file_host
    await world.text("", NumMedia="1", MediaUrl0=url, MediaContentType0="image/png")
    conv = await world.conversation()
    assert await _file_of(world, conv["id"]) == b"\x89PNG-elsewhere"
    assert seen == [None]


async def test_sandbox_mode_fetches_files_from_loopback(
    tmp_path: Path, file_host: tuple[str, list[str | None]]
) -> None:
    """``extmsg serve --sandbox``: its fakes and their files live on 127.0.0.1, which the
    sandbox allows; the MMS's file arrives in the Unblu sandbox."""
    url, seen = file_host
    hooks = build_hooks(entry_points=False, extra=[plugin], disabled=())
    port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        raw = await start_sandbox(
            stack,
            {"server": {"port": port}, "store": {"path": str(tmp_path / "s.sqlite3")}},
            hooks,
            free_port(),
        )
        assert "127.0.0.0/8" in raw["server"]["fetch_allowed_networks"]
        [channel] = raw["channels"]
        fake_url = channel["settings"]["api_base_url"]
        sandbox_url = raw["unblu"]["base_url"].split("/app/", 1)[0]
        async with running_extmsg(raw, hooks, port=port) as extmsg:
            params = {"NumMedia": "1", "MediaUrl0": url, "MediaContentType0": "image/png"}
            async with extmsg.session.post(
                f"{fake_url}/fake/inbound", json={"params": params}
            ) as resp:
                assert resp.status == 200, await resp.text()

            async def file_message() -> dict[str, Any] | None:
                async with extmsg.session.get(f"{sandbox_url}/sandbox/api/conversations") as r:
                    data = await r.json()
                for conv in data["conversations"] if isinstance(data, dict) else data:
                    path = f"{sandbox_url}/sandbox/api/conversations/{conv['id']}/messages"
                    async with extmsg.session.get(path) as r:
                        body = await r.json()
                    messages = body["messages"] if isinstance(body, dict) else body
                    for m in messages:
                        if m["type"] == "FILE":
                            return dict(m)
                return None

            message = await eventually(file_message)
            assert message["mimeType"] == "image/png"
    assert seen == [None]


async def test_in_doubt_message_twilio_already_has_is_not_sent_again(
    tmp_path: Path, unblu_sandbox: Any
) -> None:
    """The first attempt dies after Twilio accepted the message; the next one, in doubt, finds
    it in Twilio's Messages list and records it instead of sending a second SMS. (Status
    callbacks are off: one carrying our id would settle the doubt on its own.)"""
    with in_doubt_after_send() as doubt:
        async with _world("v4", tmp_path, unblu_sandbox, callbacks=False) as world:
            await world.text("Where is my parcel?")
            conv = await world.conversation()
            await world.agent(
                f"conversations/{conv['id']}/messages",
                "POST",
                text="It ships today",
                senderName="Anna",
            )
            await world.message_in(conv["id"], "It ships today", "SENT")
            async with world.session.get(f"{world.fake_url}/fake/messages") as resp:
                sent = (await resp.json())["messages"]
            assert [m["body"] for m in sent] == ["Anna: It ships today"]
            assert len(doubt.cut_off) == 1
            assert doubt.in_doubt("found", "sms") == 1


async def test_mms_whose_media_is_gone_reaches_the_agent_with_a_note(world: World) -> None:
    gone = world.fake_url + world.fake.add_media(b"\x89PNG", "image/png")
    world.fake.media.clear()  # deleted at Twilio before extmsg fetched it: 404
    result = await world.text(
        "Photo of the meter", NumMedia="1", MediaUrl0=gone, MediaContentType0="image/png"
    )
    assert result.status == 200
    conv = await world.conversation()

    async def both() -> list[dict[str, Any]] | None:
        shown = await world.messages(conv["id"])
        return shown if len(shown) == 2 else None

    text, note = [m["text"] for m in await eventually(both)]
    assert text == "Photo of the meter"
    assert note.startswith("[Attachment ")
    assert "could not be delivered: the customer's file" in note
    assert "is no longer available at Twilio" in note


async def test_an_erased_contact_takes_its_published_files_along(
    tmp_path: Path, unblu_sandbox: Any
) -> None:
    """An agent's file published for Twilio to fetch belongs to the message it went with:
    erasing the contact removes it from the store, and its link stops working."""
    from extmsg.flows.payloads import contact_refs

    async with _world("v4", tmp_path, unblu_sandbox) as world:
        await world.text("Can you send me the form?")
        conv = await world.conversation()
        data = base64.b64encode(b"%PDF-1.4 private form").decode()
        await world.agent(
            f"conversations/{conv['id']}/messages",
            "POST",
            file={"name": "form.pdf", "mimeType": "application/pdf", "data": data},
        )

        async def delivered() -> bool | None:
            states = [m["state"] for m in await world.messages(conv["id"]) if m["type"] == "FILE"]
            return True if states == ["DELIVERED"] else None

        await eventually(delivered)
        [sent] = world.fake.messages
        [url] = sent["media_urls"]
        store = world.runtime.store

        async def settled() -> bool | None:
            found = await store.forget_contact("sms", [CUSTOMER], contact_refs, apply=False)
            return None if found.pending or found.running else True

        await eventually(settled)
        erased = await store.forget_contact("sms", [CUSTOMER], contact_refs, apply=True)
        assert erased.applied
        assert erased.media == 1
        async with world.session.get(url) as resp:
            assert resp.status == 404
