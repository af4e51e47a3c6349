"""A real ``extmsg serve`` with hook tracing and DEBUG logging, between the Unblu sandbox and the
Twilio fake: a customer texts, an agent answers, and no configured secret (Unblu password,
webhook secret, Twilio auth token, store DSN password) shows up anywhere in its output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from twilio_testkit import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER

from extmsg.sandbox import run_sandbox
from extmsg.testing.helpers import ServeProcess, eventually, free_port
from extmsg_sms_twilio.fake import TWILIO_FAKE, create_twilio_fake, inbound_params

CUSTOMER = "+41791234567"
UNBLU_PASSWORD = "unblu-pass-4f7a1c9e"
WEBHOOK_SECRET = "whsec-8b2d6e0f3a"
DSN_PASSWORD = "dsn-pw-5c1e9a"

CONFIG = """
[server]
port = {port}
public_url = "http://127.0.0.1:{port}"
log_level = "DEBUG"
fetch_allowed_networks = ["127.0.0.0/8"]

[store]
path = "store.sqlite3"
dsn = "postgresql://extmsg:{dsn_password}@db.invalid/extmsg"

[unblu]
base_url = "{unblu}"
username = "admin"
password = "{password}"

[engine]
backoff_initial = 0.05
backoff_max = 0.5

[[channels]]
name = "sms"
messenger = "sms_twilio"
webhook_secret = "{webhook_secret}"
[channels.settings]
account_sid = "{account_sid}"
auth_token = "{auth_token}"
from_number = "{from_number}"
api_base_url = "{fake_url}"
"""


async def test_no_secret_reaches_the_log(tmp_path: Path) -> None:
    sandbox = await run_sandbox(
        "127.0.0.1", 0, password=UNBLU_PASSWORD, retry_backoff=0.05, retry_backoff_max=0.2
    )
    fake_app = create_twilio_fake(
        account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, callback_delay=0.02
    )
    fake_server = TestServer(fake_app)
    await fake_server.start_server()
    fake = fake_app[TWILIO_FAKE]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "extmsg.toml"
    config.write_text(
        CONFIG.format(
            port=port,
            unblu=sandbox.base_url,
            password=UNBLU_PASSWORD,
            dsn_password=DSN_PASSWORD,
            webhook_secret=WEBHOOK_SECRET,
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            from_number=FROM_NUMBER,
            fake_url=str(fake_server.make_url("")).rstrip("/"),
        )
    )
    proc = ServeProcess(config, env={"EXTMSG_TRACE_HOOKS": "1"})
    proc.start()
    try:
        await proc.wait_ready(base)
        values = inbound_params(
            from_=CUSTOMER, to=FROM_NUMBER, body="Where is my parcel?", account_sid=ACCOUNT_SID
        )
        result = await fake.send_inbound(f"{base}/channels/sms/inbound", values)
        assert result.status == 200
        async with aiohttp.ClientSession() as session:

            async def api(path: str, method: str = "GET", **body: Any) -> Any:
                url = f"{sandbox.url}/sandbox/api/{path}"
                async with session.request(method, url, json=body or None) as resp:
                    assert resp.status < 300, await resp.text()
                    return await resp.json()

            async def conversation() -> dict[str, Any] | None:
                data = await api("conversations")
                convs = data["conversations"] if isinstance(data, dict) else data
                return convs[0] if convs and convs[0]["messageCount"] >= 1 else None

            conv = await eventually(conversation)
            await api(
                f"conversations/{conv['id']}/messages", "POST", text="On its way", senderName="Ann"
            )
            await eventually(lambda: _sent(fake))
    finally:
        proc.kill()
        await fake_server.close()
        await sandbox.close()
    log = proc.log()
    # The run did log, hooks included: the absence of secrets below is not the absence of lines.
    assert "DEBUG extmsg.plugins: hook extmsg_send(" in log
    for secret in (UNBLU_PASSWORD, WEBHOOK_SECRET, AUTH_TOKEN, DSN_PASSWORD):
        assert secret not in log
    assert "***" in log


async def _sent(fake: Any) -> bool | None:
    return bool(fake.messages) or None
