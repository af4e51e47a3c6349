"""End to end in one process: the Graph API fake ⇄ extmsg (the core's app with this plugin) ⇄
the Unblu sandbox, for both Unblu API generations, with two WhatsApp numbers of one Meta app
sharing the messenger-scoped webhook route. What contacts write shows up in Unblu on the right
channel; what agents write reaches the fake from the right number, and its statuses come back
as message states; the 24-hour window and read receipts work across the whole chain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from whatsapp_testkit import (
    ACCESS_TOKEN,
    APP_SECRET,
    MAIN_NUMBER_ID,
    SUPPORT_NUMBER_ID,
    WEBHOOK_PATH,
    load_cases,
)

from extmsg.plugins import build_hooks
from extmsg.testing.helpers import eventually, free_port, in_doubt_after_send, running_extmsg
from extmsg_whatsapp import fake as wa
from extmsg_whatsapp import outbound, plugin
from extmsg_whatsapp.fake import FAKE, GraphFake, create_graph_fake

ALICE = "41791234567"  # writes to number A (wa-main, has a template)
BOB = "41797654321"  # writes to number B (wa-support, no template)
TEMPLATE = "support_followup"


@dataclass
class World:
    base: str
    fake_url: str
    fake: GraphFake
    sandbox: Any
    session: aiohttp.ClientSession
    channel_ids: dict[str, str]  # phone_number_id → Unblu channel id
    admin: str  # the admin listener: /metrics

    @property
    def webhook_url(self) -> str:
        return self.base + WEBHOOK_PATH

    async def webhook(self, payload: dict[str, Any]) -> int:
        return await wa.send_webhook(self.webhook_url, APP_SECRET, payload, session=self.session)

    async def contact_writes(self, number_id: str, sender: str, text: str) -> dict[str, Any]:
        """A contact's text to one business number; the webhook payload posted (signed)."""
        message = wa.text_message(sender, text)
        payload = wa.webhook_payload(
            wa.entry(
                wa.value(number_id, contacts=[wa.contact(sender, "Contact")], messages=[message])
            )
        )
        assert await self.webhook(payload) == 200
        return message

    async def agent(self, path: str, method: str = "GET", **body: Any) -> Any:
        url = f"{self.sandbox.url}/sandbox/api/{path}"
        async with self.session.request(method, url, json=body or None) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def conversations(self, number_id: str) -> list[dict[str, Any]]:
        data = await self.agent(f"conversations?channelId={self.channel_ids[number_id]}")
        return list(data["conversations"] if isinstance(data, dict) else data)

    async def conversation(self, number_id: str) -> dict[str, Any]:
        async def one() -> dict[str, Any] | None:
            convs = await self.conversations(number_id)
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

    async def reply(self, conversation_id: str, text: str) -> None:
        await self.agent(
            f"conversations/{conversation_id}/messages", "POST", text=text, senderName="Anna"
        )

    async def fake_calls(self) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.fake_url}/fake/messages") as resp:
            assert resp.status == 200
            calls: list[dict[str, Any]] = (await resp.json())["messages"]
            return calls


def _channel(name: str, number_id: str, fake_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "messenger": "whatsapp",
        "webhook_secret": f"whsec-{name}",
        "settings": {
            "phone_number_id": number_id,
            "access_token": ACCESS_TOKEN,
            "app_secret": APP_SECRET,
            "verify_token": "main-verify-token",
            "api_base_url": fake_url,
            **extra,
        },
    }


@pytest.fixture(params=["v4", "v3"])
async def world(
    request: pytest.FixtureRequest, tmp_path: Path, unblu_sandbox: Any
) -> AsyncIterator[World]:
    async with _world(request.param, tmp_path, unblu_sandbox) as running:
        yield running


@contextlib.asynccontextmanager
async def _world(
    version: str,
    tmp_path: Path,
    unblu_sandbox: Any,
    *,
    auto_statuses: tuple[str, ...] = ("sent", "delivered", "read"),
) -> AsyncIterator[World]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    fake_app = create_graph_fake(
        access_token=ACCESS_TOKEN,
        app_secret=APP_SECRET,
        webhook_url=base + WEBHOOK_PATH,
        auto_statuses=auto_statuses,
    )
    fake_server = TestServer(fake_app)
    await fake_server.start_server()
    fake_url = str(fake_server.make_url("")).rstrip("/")
    hooks = build_hooks(entry_points=False, extra=[plugin], disabled=())
    raw = {
        "server": {"port": port, "public_url": base},
        "store": {"path": str(tmp_path / "store.sqlite3")},
        "unblu": {
            "base_url": unblu_sandbox.base_url,
            "api_version": version,
            "username": "admin",
            "password": "admin",
        },
        "engine": {"backoff_initial": 0.05, "backoff_max": 0.5},
        "channels": [
            _channel("wa-main", MAIN_NUMBER_ID, fake_url, template_name=TEMPLATE),
            _channel("wa-support", SUPPORT_NUMBER_ID, fake_url, media_max_bytes=1024 * 1024),
        ],
    }
    try:
        async with running_extmsg(raw, hooks, port=port) as extmsg:
            channel_ids = {
                MAIN_NUMBER_ID: extmsg.channel_ids["wa-main"],
                SUPPORT_NUMBER_ID: extmsg.channel_ids["wa-support"],
            }
            assert channel_ids[MAIN_NUMBER_ID] != channel_ids[SUPPORT_NUMBER_ID]
            yield World(
                base,
                fake_url,
                fake_app[FAKE],
                unblu_sandbox,
                extmsg.session,
                channel_ids,
                extmsg.admin,
            )
    finally:
        await fake_server.close()


async def _two_contacts(world: World) -> tuple[dict[str, Any], dict[str, Any]]:
    """Alice writes to number A, Bob to number B; their queued conversations."""
    await world.contact_writes(MAIN_NUMBER_ID, ALICE, "Hi A, where is my parcel?")
    await world.contact_writes(SUPPORT_NUMBER_ID, BOB, "Hi B, my invoice is wrong")
    return await world.conversation(MAIN_NUMBER_ID), await world.conversation(SUPPORT_NUMBER_ID)


async def test_two_numbers_land_on_their_channels(world: World) -> None:
    alice_msg = wa.text_message(ALICE, "Hi A, where is my parcel?")
    bob_msg = wa.text_message(BOB, "Hi B, my invoice is wrong")
    payload = wa.webhook_payload(
        wa.entry(
            wa.value(MAIN_NUMBER_ID, contacts=[wa.contact(ALICE, "Alice")], messages=[alice_msg])
        ),
        wa.entry(
            wa.value(SUPPORT_NUMBER_ID, contacts=[wa.contact(BOB, "Bob")], messages=[bob_msg])
        ),
    )
    assert await world.webhook(payload) == 200

    conv_a = await world.conversation(MAIN_NUMBER_ID)
    conv_b = await world.conversation(SUPPORT_NUMBER_ID)
    assert conv_a["id"] != conv_b["id"]
    for conv, number_id, sender, message in (
        (conv_a, MAIN_NUMBER_ID, ALICE, alice_msg),
        (conv_b, SUPPORT_NUMBER_ID, BOB, bob_msg),
    ):
        assert conv["channelId"] == world.channel_ids[number_id]
        assert conv["sourceId"] == sender
        assert conv["state"] == "QUEUED"
        [shown] = await world.messages(conv["id"])
        assert shown["text"] == message["text"]["body"]
        assert shown["sourceId"] == message["id"]

    # Meta redelivers the same payload: nothing new
    assert await world.webhook(payload) == 200
    await world.agent("drain", "POST", timeout=5)
    await asyncio.sleep(0.3)
    for number_id in (MAIN_NUMBER_ID, SUPPORT_NUMBER_ID):
        [conv] = await world.conversations(number_id)
        assert len(await world.messages(conv["id"])) == 1


async def test_agent_reply_is_sent_and_read(world: World) -> None:
    conv_a, conv_b = await _two_contacts(world)
    await world.reply(conv_b["id"], "Let me check that invoice")
    read = await world.message_in(conv_b["id"], "Let me check that invoice", "READ")
    states = [h["state"] for h in read["history"]]
    assert states[-3:] == ["SENT", "DELIVERED", "READ"]  # the fake's status webhooks, in order

    sends = [c for c in await world.fake_calls() if c["kind"] == "message"]
    assert len(sends) == 1
    [send] = sends
    assert send["phone_number_id"] == SUPPORT_NUMBER_ID
    assert send["status"] == 200
    body = send["request"]
    assert body["to"] == BOB
    assert body["type"] == "text"
    assert body["text"]["body"] == "Anna: Let me check that invoice"
    assert not any(m["sender"]["personType"] == "AGENT" for m in await world.messages(conv_a["id"]))


async def test_closed_window_uses_the_template(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv_a, _ = await _two_contacts(world)
    monkeypatch.setattr(outbound, "clock", lambda: time.time() + 25 * 3600)
    await world.reply(conv_a["id"], "Your parcel has arrived")
    await world.message_in(conv_a["id"], "Your parcel has arrived", "READ")

    [send] = [c for c in await world.fake_calls() if c["kind"] == "message"]
    assert send["phone_number_id"] == MAIN_NUMBER_ID
    body = send["request"]
    assert body["to"] == ALICE
    assert body["type"] == "template"
    assert body["template"]["name"] == TEMPLATE
    [component] = body["template"]["components"]
    assert component["parameters"] == [{"type": "text", "text": "Anna: Your parcel has arrived"}]


async def test_closed_window_without_template_fails(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, conv_b = await _two_contacts(world)
    monkeypatch.setattr(outbound, "clock", lambda: time.time() + 25 * 3600)
    await world.reply(conv_b["id"], "Your invoice is fixed")
    failed = await world.message_in(conv_b["id"], "Your invoice is fixed", "FAILED")
    assert "24 hours" in failed["failureText"]
    assert "no template" in failed["failureText"]
    assert [c for c in await world.fake_calls() if c["kind"] == "message"] == []


async def test_agent_reading_sends_a_read_receipt(world: World) -> None:
    _, conv_b = await _two_contacts(world)
    [contact_msg] = await world.messages(conv_b["id"])
    await world.agent(
        f"conversations/{conv_b['id']}/messages/{contact_msg['id']}/read", "POST", state="READ"
    )

    async def read_calls() -> list[dict[str, Any]] | None:
        calls = [c for c in await world.fake_calls() if c["kind"] == "read"]
        return calls or None

    [call] = await eventually(read_calls)
    assert call["phone_number_id"] == SUPPORT_NUMBER_ID
    assert call["request"]["message_id"] == contact_msg["sourceId"]
    assert call["request"]["status"] == "read"
    assert call["status"] == 200
    assert world.fake.reads == [contact_msg["sourceId"]]


async def test_in_doubt_message_is_sent_again_and_counted(
    tmp_path: Path, unblu_sandbox: Any
) -> None:
    """The Cloud API has no idempotency key and no list of sent messages: after an attempt
    that died once Meta had accepted the message, the next one (in doubt) cannot ask, so the
    contact gets it twice, and extmsg counts that possible double. (Statuses are off: one
    carrying our id in ``biz_opaque_callback_data`` would settle the doubt on its own.)"""
    with in_doubt_after_send() as doubt:
        async with _world("v4", tmp_path, unblu_sandbox, auto_statuses=()) as world:
            await world.contact_writes(MAIN_NUMBER_ID, ALICE, "Hi, where is my parcel?")
            conv = await world.conversation(MAIN_NUMBER_ID)
            await world.reply(conv["id"], "It ships today")
            await world.message_in(conv["id"], "It ships today", "SENT")
            texts = [
                c["request"]["text"]["body"]
                for c in await world.fake_calls()
                if c["kind"] == "message"
            ]
            assert texts == ["Anna: It ships today"] * 2
            assert len(doubt.cut_off) == 1
            assert doubt.in_doubt("unknown", "wa-main") == 1


async def test_a_lone_surrogate_does_not_sink_its_batch(world: World) -> None:
    # Meta escapes non-ASCII text, so half a surrogate pair arrives as the escape "\ud800";
    # it used to fail the whole batch on every retry, and the other messages with it.
    texts = ["first of three", "broken \ud800 emoji", "third of three"]
    messages = [wa.text_message(ALICE, text) for text in texts]
    payload = wa.webhook_payload(
        wa.entry(
            wa.value(MAIN_NUMBER_ID, contacts=[wa.contact(ALICE, "Al\udc00ice")], messages=messages)
        )
    )
    assert b"\\ud800" in wa.encode(payload)
    assert await world.webhook(payload) == 200
    conv = await world.conversation(MAIN_NUMBER_ID)

    async def all_three() -> list[str] | None:
        got = [m.get("text") for m in await world.messages(conv["id"])]
        return got if len(got) >= 3 else None

    assert await eventually(all_three) == [
        "first of three",
        "broken \ufffd emoji",
        "third of three",
    ]


async def test_a_body_nested_too_deep_is_a_400(world: World) -> None:
    body = b'{"object": "whatsapp_business_account", "entry": ' + b"[" * 50_000 + b"]" * 50_000
    body += b"}"
    headers = {"X-Hub-Signature-256": wa.sign(body, APP_SECRET), "Content-Type": "application/json"}
    async with world.session.post(world.webhook_url, data=body, headers=headers) as resp:
        assert resp.status == 400
        assert "nested deeper than 64 levels" in await resp.text()


async def _metric(world: World, name: str) -> float:
    async with world.session.get(f"{world.admin}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def test_a_status_for_a_message_we_never_sent_is_dropped_quietly(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Meta sends every app on the business account the statuses of every app's messages."""
    caplog.set_level(logging.DEBUG, logger="extmsg")
    [case] = [c for c in load_cases("inbound_statuses.json") if c["name"] == "sent"]
    assert await world.webhook(case["request"]["body"]) == 200
    unmatched = 'extmsg_statuses_unmatched_total{channel="wa-main"}'

    async def dropped() -> float | None:
        return await _metric(world, unmatched) or None

    assert await eventually(dropped) == 1.0
    await asyncio.sleep(0.3)
    assert await _metric(world, "extmsg_dead_letters") == 0.0
    assert (
        await _metric(
            world, 'extmsg_jobs_finished_total{kind="to_unblu.provider_status",outcome="dead"}'
        )
        == 0.0
    )
    # not a dead letter, not an error; its wait for a late match is no warning either
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("no message extmsg sent matches it" in r.getMessage() for r in caplog.records)


async def _contact_sends_media(world: World, number_id: str, *messages: dict[str, Any]) -> None:
    payload = wa.webhook_payload(
        wa.entry(wa.value(number_id, contacts=[wa.contact(ALICE, "Alice")], messages=[*messages]))
    )
    assert await world.webhook(payload) == 200


async def test_an_expired_media_id_reaches_the_agent_as_caption_and_note(world: World) -> None:
    """Meta keeps media for 7 days but retries a webhook for up to 7 days: the id is gone."""
    unknown_media_id = "1480396729813452"  # never stored: Graph answers error 100
    photo = wa.media_message(
        ALICE,
        "image",
        unknown_media_id,
        mime_type="image/jpeg",
        caption="My damaged parcel",
    )
    await _contact_sends_media(world, MAIN_NUMBER_ID, photo)
    conv = await world.conversation(MAIN_NUMBER_ID)
    [shown] = await world.messages(conv["id"])
    assert shown["sourceId"] == photo["id"]
    caption, note = shown["text"].split("\n")
    assert caption == "My damaged parcel"
    assert note.startswith(
        f"[Attachment image-{unknown_media_id[-8:]}.jpg could not be delivered: "
    )
    assert "no longer available from WhatsApp" in note
    assert note.endswith("]")
    assert await _metric(world, "extmsg_dead_letters") == 0.0


async def test_an_oversized_file_reaches_the_agent_as_a_note_beside_the_files_that_fit(
    world: World,
) -> None:
    big = world.fake.add_media(b"%PDF" + b"x" * 1_500_000, "application/pdf", "statement.pdf")
    small = world.fake.add_media(b"%PDF small", "application/pdf", "form.pdf")
    too_big = wa.media_message(
        ALICE,
        "document",
        big,
        mime_type="application/pdf",
        filename="statement.pdf",
        caption="Here is the statement",
    )
    fits = wa.media_message(
        ALICE, "document", small, mime_type="application/pdf", filename="form.pdf"
    )
    await _contact_sends_media(world, SUPPORT_NUMBER_ID, too_big, fits)
    conv = await world.conversation(SUPPORT_NUMBER_ID)

    async def both() -> list[dict[str, Any]] | None:
        shown = await world.messages(conv["id"])
        return shown if len(shown) == 2 else None

    note, file = await eventually(both)
    assert note["text"] == (
        "Here is the statement\n"
        "[Attachment statement.pdf could not be delivered: the file is larger than 1 MB]"
    )
    assert file["fileName"] == "form.pdf"


async def test_stop_is_confirmed_and_blocks_replies_until_start(world: World) -> None:
    """WhatsApp has no keywords of its own: the channel's defaults (STOP / START, confirmed by
    extmsg) are applied by the core."""
    _, conv_b = await _two_contacts(world)
    await world.contact_writes(SUPPORT_NUMBER_ID, BOB, "stop")

    async def texts_to_bob() -> list[str]:
        return [
            c["request"]["text"]["body"]
            for c in await world.fake_calls()
            if c["kind"] == "message" and c["request"].get("to") == BOB and "text" in c["request"]
        ]

    async def confirmed() -> list[str] | None:
        found = await texts_to_bob()
        return found or None

    [confirmation] = await eventually(confirmed)
    assert "Reply START" in confirmation

    async def stop_shown() -> bool:  # the agent sees why later replies fail
        return any(m.get("text") == "stop" for m in await world.messages(conv_b["id"]))

    await eventually(stop_shown)
    await world.reply(conv_b["id"], "Are you still there?")
    failed = await world.message_in(conv_b["id"], "Are you still there?", "FAILED")
    assert "wrote STOP" in failed["failureText"]
    assert len(await texts_to_bob()) == 1
