"""Twilio beside another messenger whose webhook route is also called ``inbound``: the real
``extmsg serve`` starts, and each provider's request reaches its own plugin and then Unblu."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from neighbour_messenger import ACK
from twilio_testkit import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER

from extmsg.sandbox import run_sandbox
from extmsg.testing.helpers import ServeProcess, eventually, free_port
from extmsg_sms_twilio.fake import TWILIO_FAKE, create_twilio_fake, inbound_params
from extmsg_sms_twilio.plugin import TWIML_EMPTY

CONFIG = """
[server]
port = {port}
public_url = "http://127.0.0.1:{port}"

[store]
path = "store.sqlite3"

[unblu]
base_url = "{unblu}"
username = "admin"
password = "admin"

[[channels]]
name = "sms"
messenger = "sms_twilio"
webhook_secret = "whsec-sms"
[channels.settings]
account_sid = "{account_sid}"
auth_token = "{auth_token}"
from_number = "{from_number}"
api_base_url = "{fake_url}"

[[channels]]
name = "next-door"
messenger = "neighbour"
webhook_secret = "whsec-next"
[channels.settings]
token = "neighbour-token"
"""


async def test_twilio_and_a_second_inbound_route_both_reach_their_plugin(tmp_path: Path) -> None:
    sandbox = await run_sandbox("127.0.0.1", 0, password="admin")
    fake_app = create_twilio_fake(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, callback_delay=0)
    fake_server = TestServer(fake_app)
    await fake_server.start_server()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "extmsg.toml"
    config.write_text(
        CONFIG.format(
            port=port,
            unblu=sandbox.base_url,
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            from_number=FROM_NUMBER,
            fake_url=str(fake_server.make_url("")).rstrip("/"),
        )
    )
    env = {"EXTMSG_PLUGINS": "neighbour_messenger", "PYTHONPATH": str(Path(__file__).parent)}
    proc = ServeProcess(config, env=env)
    proc.start()
    try:
        await proc.wait_ready(base)
        values = inbound_params(
            from_="+41791234567", to=FROM_NUMBER, body="Hello by SMS", account_sid=ACCOUNT_SID
        )
        sms = await fake_app[TWILIO_FAKE].send_inbound(f"{base}/channels/sms/inbound", values)
        assert sms.status == 200
        assert sms.body == TWIML_EMPTY.decode()  # Twilio's plugin answered
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{base}/channels/next-door/inbound",
                json={"id": "n-1", "from": "neighbour-7", "text": "Hello next door"},
                headers={"x-token": "neighbour-token"},
            ) as resp:
                assert (resp.status, await resp.read()) == (200, ACK)  # and this one its own

            async def texts() -> set[str] | None:
                async with session.get(f"{sandbox.url}/sandbox/api/conversations") as resp:
                    data: Any = await resp.json()
                convs = data["conversations"] if isinstance(data, dict) else data
                found = set()
                for conv in convs:
                    url = f"{sandbox.url}/sandbox/api/conversations/{conv['id']}/messages"
                    async with session.get(url) as resp:
                        messages: Any = await resp.json()
                    items = messages["messages"] if isinstance(messages, dict) else messages
                    found |= {m.get("text") for m in items}
                wanted = {"Hello by SMS", "Hello next door"}
                return wanted if wanted <= found else None

            await eventually(texts)
    finally:
        proc.kill()
        await fake_server.close()
        await sandbox.close()
    assert "will never be executed" not in proc.log()
