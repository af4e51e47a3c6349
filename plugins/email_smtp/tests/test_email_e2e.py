"""End to end with real SMTP on both sides: a customer's mail client → the plugin's listener →
extmsg (the core's app with this plugin) → the Unblu sandbox, and the agent's answers → the
recording SMTP server. Threading survives the round trip; auto-replies stay out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from email_testkit import ADDRESS, SmtpSink

from extmsg.plugins import build_hooks
from extmsg.testing.helpers import eventually, free_port, running_extmsg
from extmsg_email_smtp import plugin

CUSTOMER = "jane.doe@example.org"
SUBJECT = "Opening hours"
FIRST_TEXT = "Hello, when are you open on Saturdays?"
AGENT_TEXT = "We are open from 9 to 13 on Saturdays."
REPLY_TEXT = "Thanks, and on Sundays?"
SENT_OR_LATER = {"SENT", "DELIVERED", "READ"}
_PARSER = BytesParser(policy=policy.default)


def customer_mail(text: str, subject: str = SUBJECT, **headers: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = Address("Jane Doe", addr_spec=CUSTOMER)
    mail["To"] = ADDRESS
    mail["Subject"] = subject
    mail["Date"] = "Tue, 04 Mar 2025 10:15:00 +0100"
    mail["Message-ID"] = make_msgid(domain="example.org")
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    mail.set_content(text)
    return mail


@dataclass
class World:
    sandbox: Any
    session: aiohttp.ClientSession
    channel_id: str
    listen_port: int
    sink: SmtpSink

    async def mail(self, mail: EmailMessage, to: str | None = None) -> None:
        await aiosmtplib.send(
            mail,
            sender=CUSTOMER,
            recipients=[to or ADDRESS],
            hostname="127.0.0.1",
            port=self.listen_port,
            start_tls=False,
            timeout=10,
        )

    async def agent(self, path: str, method: str = "GET", **body: Any) -> Any:
        url = f"{self.sandbox.url}/sandbox/api/{path}"
        async with self.session.request(method, url, json=body or None) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def conversations(self) -> list[dict[str, Any]]:
        data = await self.agent(f"conversations?channelId={self.channel_id}")
        return list(data["conversations"] if isinstance(data, dict) else data)

    async def conversation(self) -> dict[str, Any]:
        async def one() -> dict[str, Any] | None:
            convs = await self.conversations()
            # Opened and holding its first message (created, then posted to: two steps).
            return convs[0] if convs and convs[0]["messageCount"] >= 1 else None

        return await eventually(one)

    async def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        data = await self.agent(f"conversations/{conversation_id}/messages")
        return list(data["messages"] if isinstance(data, dict) else data)

    async def sent_mail(self, count: int) -> list[EmailMessage]:
        async def arrived() -> list[tuple[bytes, dict[str, Any]]] | None:
            got = self.sink.messages()
            return got if len(got) >= count else None

        recorded = await eventually(arrived)
        out = []
        for raw, _info in recorded:
            msg = _PARSER.parsebytes(raw)
            assert isinstance(msg, EmailMessage)
            out.append(msg)
        return out


@pytest.fixture
def new_mail_rule() -> str:
    """``same``: threads by contact (no Reply-To); ``new``: by token, with a Reply-To."""
    return "same"


@pytest.fixture(params=["v4", "v3"])
async def world(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    unblu_sandbox: Any,
    smtp_sink: SmtpSink,
    new_mail_rule: str,
) -> AsyncIterator[World]:
    port, listen_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    hooks = build_hooks(entry_points=False, extra=[plugin], disabled=())
    raw = {
        "server": {"port": port, "public_url": base},
        "store": {"path": str(tmp_path / "store.sqlite3")},
        "unblu": {
            "base_url": unblu_sandbox.base_url,
            "api_version": request.param,
            "username": "admin",
            "password": "admin",
        },
        "engine": {"backoff_initial": 0.05, "backoff_max": 0.5},
        "channels": [
            {
                "name": "email",
                "messenger": "email_smtp",
                "webhook_secret": "whsec-email-123",
                "settings": {
                    "address": ADDRESS,
                    "display_name": "Acme Support",
                    "smtp_host": "127.0.0.1",
                    "smtp_port": smtp_sink.port,
                    "smtp_security": "none",
                    "smtp_timeout": 10,
                    "inbound": ["smtp"],
                    "listen_host": "127.0.0.1",
                    "listen_port": listen_port,
                    "new_mail_rule": new_mail_rule,
                },
            }
        ],
    }
    async with running_extmsg(raw, hooks, port=port) as extmsg:
        channel_id = extmsg.channel_ids["email"]
        yield World(unblu_sandbox, extmsg.session, channel_id, listen_port, smtp_sink)


@pytest.mark.parametrize("new_mail_rule", ["same", "new"])
async def test_mail_round_trip_keeps_the_thread(world: World, new_mail_rule: str) -> None:
    # 1. A new mail opens one queued conversation; its first message is the mail's text
    #    (subject_in_text="new": a thread's first message starts with its subject).
    first = customer_mail(FIRST_TEXT)
    await world.mail(first)
    conv = await world.conversation()
    assert conv["state"] == "QUEUED"
    assert len(await world.conversations()) == 1
    [message] = await world.messages(conv["id"])
    assert message["text"] == f"Subject: {SUBJECT}\n\n{FIRST_TEXT}"
    assert message["fromMessenger"] is True
    assert message["sourceId"] == first["Message-ID"]

    # 2. The agent answers: one mail to Jane, threaded on her mail, signed with Anna's name.
    sent = await world.agent(
        f"conversations/{conv['id']}/messages", "POST", text=AGENT_TEXT, senderName="Anna"
    )

    async def agent_message_sent() -> dict[str, Any] | None:
        for m in await world.messages(conv["id"]):
            if m["id"] == sent["id"] and m["state"] in SENT_OR_LATER:
                return m
        return None

    await eventually(agent_message_sent)
    [answer] = await world.sent_mail(1)
    assert [a.addr_spec for a in answer["To"].addresses] == [CUSTOMER]
    assert answer["Subject"] == f"Re: {SUBJECT}"
    assert answer["In-Reply-To"] == first["Message-ID"]
    assert "Anna" in answer["From"].addresses[0].display_name
    plain = answer.get_body(preferencelist=("plain",))
    assert plain is not None
    assert AGENT_TEXT in plain.get_content()
    our_id = str(answer["Message-ID"])
    if new_mail_rule == "new":  # a token thread: the reply goes to support+t…@acme.example
        assert answer["Reply-To"] is not None
        assert answer["Reply-To"].addresses[0].addr_spec.startswith("support+t")

    # 3. Jane replies as a mail client does: quoted history, a changed subject, to Reply-To.
    reply_to = answer["Reply-To"].addresses[0].addr_spec if answer["Reply-To"] else ADDRESS
    quoted = "\n".join(f"> {line}" for line in AGENT_TEXT.splitlines())
    reply = customer_mail(
        f"{REPLY_TEXT}\n\nOn Tue, 4 Mar 2025 at 10:20, Anna via Acme Support <{ADDRESS}> wrote:\n"
        f"{quoted}\n",
        subject=f"Re: {SUBJECT} (weekend)",
        In_Reply_To=our_id,
        References=f"{first['Message-ID']} {our_id}",
    )
    reply.replace_header("To", reply_to)
    await world.mail(reply, to=reply_to)

    async def reply_arrived() -> dict[str, Any] | None:
        for m in await world.messages(conv["id"]):
            if m.get("fromMessenger") and m["id"] != message["id"]:
                return m
        return None

    from_jane = await eventually(reply_arrived)
    assert from_jane["text"] == REPLY_TEXT
    assert from_jane["sourceId"] == reply["Message-ID"]
    assert len(await world.conversations()) == 1
    assert len(await world.messages(conv["id"])) == 3


def auto_reply(**headers: str) -> EmailMessage:
    """Only the header marks it: the subject and text look like any reply."""
    return customer_mail(
        "I will be back on Monday.",
        subject=f"Re: {SUBJECT}",
        Auto_Submitted="auto-replied",
        **headers,
    )


async def test_auto_reply_opens_no_conversation(world: World) -> None:
    await world.mail(auto_reply())  # taken (250), then dropped
    # A real mail after it: had the auto-reply become a message, both would share one
    # conversation (new_mail_rule="same"); once this one is there, the other was handled.
    await world.mail(customer_mail(FIRST_TEXT))
    conv = await world.conversation()
    await world.agent("drain", "POST", timeout=2)
    assert len(await world.conversations()) == 1
    [message] = await world.messages(conv["id"])
    assert message["text"].endswith(FIRST_TEXT)
    assert world.sink.messages() == []


async def test_auto_reply_in_a_thread_feeds_nothing(world: World) -> None:
    first = customer_mail(FIRST_TEXT)
    await world.mail(first)
    conv = await world.conversation()
    await world.agent(
        f"conversations/{conv['id']}/messages", "POST", text=AGENT_TEXT, senderName="Anna"
    )
    [answer] = await world.sent_mail(1)
    our_id = str(answer["Message-ID"])
    await world.mail(auto_reply(In_Reply_To=our_id, References=our_id))
    await world.mail(customer_mail(REPLY_TEXT, In_Reply_To=our_id, References=our_id))

    async def reply_arrived() -> list[dict[str, Any]] | None:
        messages = await world.messages(conv["id"])
        return messages if any(m.get("text") == REPLY_TEXT for m in messages) else None

    messages = await eventually(reply_arrived)
    await world.agent("drain", "POST", timeout=2)
    texts = [m.get("text") for m in await world.messages(conv["id"])]
    assert len(texts) == len(messages) == 3
    assert not any("back on Monday" in (t or "") for t in texts)
    assert len(await world.conversations()) == 1
    assert len(world.sink.messages()) == 1  # and no answer to the auto-reply either


async def test_a_display_name_longer_than_unblu_takes_is_cut_not_lost(world: World) -> None:
    # Unblu takes at most 250 characters in a person's name, counted in UTF-16 (an emoji is
    # two); a mail from a longer name must still become a message, under the name's start.
    name = "Jane " + "Doe 😀 " * 50  # 305 characters, 355 UTF-16 units
    mail = customer_mail(FIRST_TEXT)
    mail.replace_header("From", str(Address(name, addr_spec=CUSTOMER)))
    await world.mail(mail)
    conv = await world.conversation()
    [message] = await world.messages(conv["id"])
    assert message["text"].endswith(FIRST_TEXT)
    shown = message["sender"]["displayName"]
    assert shown.endswith("…")
    assert name.startswith(shown[:-1])
    assert 240 <= len(shown.encode("utf-16-le")) // 2 <= 250
