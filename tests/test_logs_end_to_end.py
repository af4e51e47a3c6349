"""What a real ``extmsg serve`` writes to its log, with all three bundled messengers, at DEBUG
and with hook tracing on, while every flow runs: contacts write (SMS, WhatsApp, mail), agents
answer, statuses come back, a send is retried, one becomes a dead letter after the provider
answered with an error body quoting the text and the auth token, a webhook with a bad
signature is refused, and a file whose download URL carries a token cannot be fetched.

No configured secret and no message text appears anywhere in the output, in the text and the
JSON format. In JSON every line is a JSON object, and a message's lines share one request id
from the webhook that brought it to the Unblu call that delivered it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import aiosmtplib
import pytest
from aiohttp.test_utils import TestServer

from extmsg.sandbox import run_sandbox
from extmsg.testing.helpers import ServeProcess, eventually, free_port
from extmsg_email_smtp.fake import FakeMailServer
from extmsg_sms_twilio.fake import TWILIO_FAKE, FakeFailure, create_twilio_fake, inbound_params
from extmsg_sms_twilio.signature import compute_signature
from extmsg_whatsapp import fake as wa

# -- configured secrets (each distinct, so that a leak names its source) ----------------------
UNBLU_PASSWORD = "unblu-pw-Rq81zT"
DSN_PASSWORD = "dsn-pw-Kx02vb"
SMS_WEBHOOK_SECRET = "whsec-sms-L0g5aa"
WA_WEBHOOK_SECRET = "whsec-wa-L0g5bb"
MAIL_WEBHOOK_SECRET = "whsec-mail-L0g5cc"
ACCOUNT_SID = "AC0f1e2d3c4b5a69788796a5b4c3d2e1f0"
AUTH_TOKEN = "tw-auth-9f8e7d6c5b4a"
WA_ACCESS_TOKEN = "EAAG-wa-token-31f9c"
WA_APP_SECRET = "wa-app-secret-77d1"
WA_VERIFY_TOKEN = "wa-verify-5e2a91"
IMAP_PASSWORD = "imap-pw-Zz93qq"
#: Not configured anywhere: a credential in a provider's file URL.
URL_TOKEN = "url-tok-4Hq8mW"
SECRETS = (
    UNBLU_PASSWORD,
    DSN_PASSWORD,
    SMS_WEBHOOK_SECRET,
    WA_WEBHOOK_SECRET,
    MAIL_WEBHOOK_SECRET,
    AUTH_TOKEN,
    WA_ACCESS_TOKEN,
    WA_APP_SECRET,
    WA_VERIFY_TOKEN,
    IMAP_PASSWORD,
    URL_TOKEN,
)

# -- what people write ---------------------------------------------------------------------
SMS_IN = "Parcel 7Q-zebra never arrived"
SMS_OUT = "Sorry, checking the zebra parcel"
RETRIED = "Retry walrus message"
DEAD = "Dead letter narwhal text"
FORGED = "Forged lynx message body"
MMS_IN = "Picture of the ibis attached"
WA_IN = "WhatsApp otter question here"
WA_OUT = "Otter answer from the desk"
MAIL_IN = "Mail about the heron invoice"
MAIL_OUT = "Heron invoice is paid already"
TEXTS = (SMS_IN, SMS_OUT, RETRIED, DEAD, FORGED, MMS_IN, WA_IN, WA_OUT, MAIL_IN, MAIL_OUT)

CUSTOMER = "+41791234567"
MMS_CUSTOMER = "+41795550101"
FROM_NUMBER = "+15005550006"
WA_NUMBER_ID = "106540352242922"
WA_CUSTOMER = "41797654321"
MAILBOX = "support@acme.example"
MAIL_CUSTOMER = "heron.customer@example.org"
INBOUND_REQUEST_ID = "it-sms-in-0001"

CONFIG = """
[server]
port = {port}
public_url = "http://127.0.0.1:{port}"
log_level = "DEBUG"
log_format = "text"  # `--log-format json` overrides it
fetch_allowed_networks = ["127.0.0.0/8"]

[store]
path = "store.sqlite3"
dsn = "postgresql://extmsg:{DSN_PASSWORD}@db.invalid/extmsg"

[unblu]
base_url = "{unblu}"
username = "admin"
password = "{UNBLU_PASSWORD}"

[engine]
backoff_initial = 0.05
backoff_max = 0.2
max_attempts = 3

[[channels]]
name = "sms"
messenger = "sms_twilio"
webhook_secret = "{SMS_WEBHOOK_SECRET}"
[channels.settings]
account_sid = "{ACCOUNT_SID}"
auth_token = "{AUTH_TOKEN}"
from_number = "{FROM_NUMBER}"
api_base_url = "{twilio}"

[[channels]]
name = "wa"
messenger = "whatsapp"
webhook_secret = "{WA_WEBHOOK_SECRET}"
[channels.settings]
phone_number_id = "{WA_NUMBER_ID}"
access_token = "{WA_ACCESS_TOKEN}"
app_secret = "{WA_APP_SECRET}"
verify_token = "{WA_VERIFY_TOKEN}"
api_base_url = "{graph}"

[[channels]]
name = "mail"
messenger = "email_smtp"
webhook_secret = "{MAIL_WEBHOOK_SECRET}"
[channels.settings]
address = "{MAILBOX}"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
smtp_security = "none"
inbound = ["smtp"]
listen_host = "127.0.0.1"
listen_port = {listen_port}
imap_password = "{IMAP_PASSWORD}"
"""


@dataclass
class World:
    base: str
    sandbox: Any
    twilio: Any
    graph: wa.GraphFake
    mail: FakeMailServer
    listen_port: int
    session: aiohttp.ClientSession

    async def agent(self, path: str, method: str = "GET", **body: Any) -> Any:
        url = f"{self.sandbox.url}/sandbox/api/{path}"
        async with self.session.request(method, url, json=body or None) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def conversation(self, source_id: str) -> str:
        async def find() -> str | None:
            data = await self.agent(f"conversations?sourceId={quote(source_id)}")
            convs = data["conversations"] if isinstance(data, dict) else data
            return str(convs[0]["id"]) if convs and convs[0]["messageCount"] >= 1 else None

        return await eventually(find)

    async def any_new_conversation(self, known: set[str]) -> str:
        async def find() -> str | None:
            data = await self.agent("conversations")
            convs = data["conversations"] if isinstance(data, dict) else data
            fresh = [c for c in convs if c["id"] not in known and c["messageCount"] >= 1]
            return str(fresh[0]["id"]) if fresh else None

        return await eventually(find)

    async def reply(self, conversation_id: str, text: str) -> None:
        await self.agent(
            f"conversations/{conversation_id}/messages", "POST", text=text, senderName="Anna"
        )

    async def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        data = await self.agent(f"conversations/{conversation_id}/messages")
        return list(data["messages"] if isinstance(data, dict) else data)

    async def state_of(self, conversation_id: str, text: str, states: set[str]) -> None:
        async def reached() -> bool:
            messages = await self.messages(conversation_id)
            return any(m.get("text") == text and m["state"] in states for m in messages)

        await eventually(reached)

    async def twilio_inbound(self, params: dict[str, str], **headers: str) -> int:
        url = f"{self.base}/channels/sms/inbound"
        pairs = list(params.items())
        sent = {"X-Twilio-Signature": compute_signature(url, pairs, AUTH_TOKEN), **headers}
        async with self.session.post(url, data=pairs, headers=sent) as resp:
            return resp.status


@pytest.fixture
async def servers() -> AsyncIterator[tuple[Any, Any, Any, Any, FakeMailServer]]:
    sandbox = await run_sandbox(
        "127.0.0.1", 0, password=UNBLU_PASSWORD, retry_backoff=0.05, retry_backoff_max=0.2
    )
    twilio = TestServer(
        create_twilio_fake(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, callback_delay=0.02)
    )
    await twilio.start_server()
    graph = TestServer(
        wa.create_graph_fake(
            access_token=WA_ACCESS_TOKEN,
            app_secret=WA_APP_SECRET,
            verify_token=WA_VERIFY_TOKEN,
            auto_statuses=("sent", "delivered"),
        )
    )
    await graph.start_server()
    mail = FakeMailServer()
    await mail.start()
    try:
        yield sandbox, twilio, graph, None, mail
    finally:
        await mail.stop()
        await graph.close()
        await twilio.close()
        await sandbox.close()


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_no_secret_and_no_message_text_reaches_the_log(
    tmp_path: Path, servers: tuple[Any, Any, Any, Any, FakeMailServer], log_format: str
) -> None:
    sandbox, twilio, graph, _, mail = servers
    port, listen_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    graph.app[wa.FAKE].webhook_url = f"{base}/messengers/whatsapp/webhook"
    config = tmp_path / "extmsg.toml"
    config.write_text(
        CONFIG.format(
            port=port,
            unblu=sandbox.base_url,
            twilio=str(twilio.make_url("")).rstrip("/"),
            graph=str(graph.make_url("")).rstrip("/"),
            smtp_port=mail.smtp_port,
            listen_port=listen_port,
            **globals(),
        )
    )
    args = ("--log-format", "json") if log_format == "json" else ()
    proc = ServeProcess(config, env={"EXTMSG_TRACE_HOOKS": "1"}, args=args)
    proc.start()
    try:
        await proc.wait_ready(base)
        async with aiohttp.ClientSession() as session:
            world = World(
                base,
                sandbox,
                twilio.app[TWILIO_FAKE],
                graph.app[wa.FAKE],
                mail,
                listen_port,
                session,
            )
            await _drive_every_flow(world, proc)
    finally:
        proc.kill()
    log = proc.log()
    _assert_clean(log)
    if log_format == "json":
        _assert_json_with_request_ids(log)


async def _drive_every_flow(world: World, proc: ServeProcess) -> None:
    twilio = world.twilio
    # SMS in, with a request id of the caller's; an agent's answer out, with its statuses.
    params = inbound_params(from_=CUSTOMER, to=FROM_NUMBER, body=SMS_IN, account_sid=ACCOUNT_SID)
    assert await world.twilio_inbound(params, **{"X-Request-Id": INBOUND_REQUEST_ID}) == 200
    sms = await world.conversation(CUSTOMER)
    await world.reply(sms, SMS_OUT)
    await world.state_of(sms, SMS_OUT, {"DELIVERED", "READ"})
    # A retry: Twilio fails once, then takes it.
    twilio.fail(CUSTOMER, "server_error", times=1)
    await world.reply(sms, RETRIED)
    await world.state_of(sms, RETRIED, {"SENT", "DELIVERED", "READ"})
    # A dead letter: Twilio refuses for good, quoting the text and the auth token.
    refusal = FakeFailure(status=400, code=None, message=f"Body '{DEAD}' refused for {AUTH_TOKEN}")
    twilio.fail(CUSTOMER, refusal, times=1)
    await world.reply(sms, DEAD)
    await world.state_of(sms, DEAD, {"FAILED"})
    # The agent reads why; the token the refusal quoted is not part of it.
    failed = [m for m in await world.messages(sms) if m.get("text") == DEAD]
    assert "refused" in failed[0]["failureText"]
    assert AUTH_TOKEN not in failed[0]["failureText"]
    # A forged webhook.
    forged = inbound_params(from_=CUSTOMER, to=FROM_NUMBER, body=FORGED, account_sid=ACCOUNT_SID)
    url = f"{world.base}/channels/sms/inbound"
    headers = {"X-Twilio-Signature": "bm90IHRoZSBzaWduYXR1cmU="}
    async with world.session.post(url, data=forged, headers=headers) as resp:
        assert resp.status == 403
    # A file whose URL carries a credential, on a port where nothing listens: the fetch fails,
    # is retried, and the message ends as a dead letter.
    media = f"http://bot:{URL_TOKEN}@127.0.0.1:{free_port()}/Media/ME1?Token={URL_TOKEN}"
    mms = inbound_params(
        from_=MMS_CUSTOMER,
        to=FROM_NUMBER,
        body=MMS_IN,
        account_sid=ACCOUNT_SID,
        media=[(media, "image/jpeg")],
    )
    assert await world.twilio_inbound(mms) == 200
    # WhatsApp in and out, with statuses.
    message = wa.text_message(WA_CUSTOMER, WA_IN)
    payload = wa.webhook_payload(
        wa.entry(
            wa.value(WA_NUMBER_ID, contacts=[wa.contact(WA_CUSTOMER, "Otto")], messages=[message])
        )
    )
    webhook = f"{world.base}/messengers/whatsapp/webhook"
    assert await wa.send_webhook(webhook, WA_APP_SECRET, payload, session=world.session) == 200
    chat = await world.conversation(WA_CUSTOMER)
    await world.reply(chat, WA_OUT)
    await world.state_of(chat, WA_OUT, {"DELIVERED", "READ"})
    # Mail in and out.
    mail = EmailMessage()
    mail["From"] = MAIL_CUSTOMER
    mail["To"] = MAILBOX
    mail["Subject"] = "Invoice"
    mail.set_content(MAIL_IN)
    await aiosmtplib.send(mail, hostname="127.0.0.1", port=world.listen_port, timeout=10)
    thread = await world.any_new_conversation({sms, chat})
    await world.reply(thread, MAIL_OUT)
    await eventually(lambda: _mail_sent(world.mail))
    # The file's message gave up after its attempts.
    await eventually(lambda: _dead_letters(proc, 2))


async def _mail_sent(mail: FakeMailServer) -> bool:
    return bool(mail.handler.messages)


async def _dead_letters(proc: ServeProcess, count: int) -> bool:
    return proc.log().count("is a dead letter") >= count


def _assert_clean(log: str) -> None:
    for secret in SECRETS:
        assert secret not in log, f"secret {secret!r} in the log"
    for text in TEXTS:
        assert text not in log, f"message text {text!r} in the log"
    # The run logged what the checks above looked through: hook calls, retries, dead letters,
    # the refused signature, the unreachable file, and the redactions themselves.
    assert "hook extmsg_send(" in log
    assert "hook extmsg_parse_inbound(" in log
    assert "failed on attempt 1" in log
    assert log.count("is a dead letter") >= 2
    assert "signature check failed" in log or "refused" in log
    assert "Could not fetch http://" in log
    assert "***" in log
    assert "[message text]" in log  # the provider's refusal quoted the text: it was cut out


def _assert_json_with_request_ids(log: str) -> None:
    records = []
    for line in log.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)

    # From the SMS webhook (the caller's X-Request-Id) to the Unblu call that posted it.
    same = [r for r in records if r.get("request_id") == INBOUND_REQUEST_ID]
    assert any(r["message"].startswith("hook extmsg_parse_inbound(") for r in same)
    posted = [r for r in same if "sendMessage" in r["message"] and r["logger"] == "extmsg.unblu"]
    assert posted, "the Unblu call that posted the SMS does not carry its request id"
    assert posted[0]["channel"] == "sms"
    assert posted[0]["job_id"]
    assert posted[0]["conversation_id"]
    assert posted[0]["message_id"]

    # From Unblu's call with the agent's answer to Twilio, and back to Unblu as sent.
    sent = [r for r in records if r["message"].startswith("twilio sent ")]
    assert sent
    rid = sent[0]["request_id"]
    lines = [r for r in records if r.get("request_id") == rid]
    assert any(r["message"].startswith("hook extmsg_send(") for r in lines)
    assert any("messageSentSuccessfully" in r["message"] for r in lines)
    assert {r["message_id"] for r in lines if "message_id" in r} == {sent[0]["message_id"]}
    # Ids of different messages differ.
    assert rid != INBOUND_REQUEST_ID

    # A mail has no HTTP request: its id is born at the listener and reaches Unblu too.
    [received] = [r for r in records if r["message"].startswith("email mail: mail from ")]
    mail_lines = [r for r in records if r.get("request_id") == received["request_id"]]
    assert any("sendMessage" in r["message"] for r in mail_lines)
    assert {r.get("channel") for r in mail_lines} == {"mail"}


async def test_message_texts_are_logged_only_when_the_setting_asks(
    tmp_path: Path, servers: tuple[Any, Any, Any, Any, FakeMailServer]
) -> None:
    """``log_message_text = true`` (and ``log_format = "json"`` from the file, no flag)."""
    sandbox, twilio, graph, _, mail = servers
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "extmsg.toml"
    text = CONFIG.replace('log_format = "text"', 'log_format = "json"\nlog_message_text = true')
    config.write_text(
        text.format(
            port=port,
            unblu=sandbox.base_url,
            twilio=str(twilio.make_url("")).rstrip("/"),
            graph=str(graph.make_url("")).rstrip("/"),
            smtp_port=mail.smtp_port,
            listen_port=free_port(),
            **globals(),
        )
    )
    proc = ServeProcess(config, env={"EXTMSG_TRACE_HOOKS": "1"})
    proc.start()
    try:
        await proc.wait_ready(base)
        async with aiohttp.ClientSession() as session:
            world = World(
                base, sandbox, twilio.app[TWILIO_FAKE], graph.app[wa.FAKE], mail, 0, session
            )
            params = inbound_params(
                from_=CUSTOMER, to=FROM_NUMBER, body=SMS_IN, account_sid=ACCOUNT_SID
            )
            assert await world.twilio_inbound(params) == 200
            await world.conversation(CUSTOMER)
    finally:
        proc.kill()
    records = [json.loads(line) for line in proc.log().splitlines()]
    assert any(repr(SMS_IN) in r["message"] for r in records)
    assert not any(secret in proc.log() for secret in SECRETS)
