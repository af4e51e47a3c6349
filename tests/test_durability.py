"""Nothing acknowledged is lost, nothing is doubled, order is kept — across kill -9.

``extmsg serve`` runs as a subprocess between the Unblu sandbox and a provider fake (both in
this process). While messages flow both ways, the server is killed with SIGKILL at random
moments and started again on the same store. Then every message extmsg acknowledged must have
arrived, in order per conversation, and duplicates are allowed only inside the documented
window (a remote accepted, the crash came before our commit): at most one per job in flight
per crash.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from extmsg.sandbox import run_sandbox

from .helpers import ServeProcess, free_port
from .loopback_fake import LoopbackProvider, signed

CONTACTS = 20
PER_CONTACT = 100  # 2,000 messages each way
WORKERS = 8
KILLS = 4

CONFIG = """
[server]
port = {port}
public_url = "http://127.0.0.1:{port}"
shutdown_timeout = 2.0

[store]
path = "store.sqlite3"

[unblu]
base_url = "{unblu}"
username = "admin"
password = "admin"

[engine]
workers = {workers}
backoff_initial = 0.05
backoff_max = 0.5
lease_seconds = 3.0

[[channels]]
name = "loop"
messenger = "loopback"
webhook_secret = "whsec-123"
sender_prefix = ""
[channels.settings]
token = "tok"
api_url = "{provider}"
"""


def contact(i: int) -> str:
    return f"+4179{i:07d}"


async def test_kill_9_while_messages_flow_both_ways(tmp_path: Path, aiohttp_server: Any) -> None:
    rng = random.Random(20261125)
    sandbox = await run_sandbox(
        "127.0.0.1", 0, delivery_retries=1000, retry_backoff=0.05, retry_backoff_max=0.3
    )
    provider = LoopbackProvider()
    provider_server = await aiohttp_server(provider.app)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "extmsg.toml"
    config.write_text(
        CONFIG.format(
            port=port,
            unblu=sandbox.base_url,
            workers=WORKERS,
            provider=str(provider_server.make_url("")).rstrip("/"),
        )
    )
    proc = ServeProcess(config, env={"EXTMSG_PLUGINS": "tests.loopback_plugin"})
    proc.start()
    acked: dict[str, list[str]] = defaultdict(list)  # contact → inbound ids, in ack order
    try:
        async with aiohttp.ClientSession() as session:
            await proc.wait_ready(base)

            async def post_inbound(sender: str, message_id: str) -> None:
                """Like a provider: retry until acknowledged."""
                body, headers = signed(
                    "tok", {"messages": [{"id": message_id, "from": sender, "text": message_id}]}
                )
                while True:
                    try:
                        async with session.post(
                            f"{base}/channels/loop/inbound", data=body, headers=headers
                        ) as resp:
                            if resp.status == 200:
                                acked[sender].append(message_id)
                                return
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.05)

            # Every contact opens its conversation first.
            await asyncio.gather(*(post_inbound(contact(i), f"in-{i}-0") for i in range(CONTACTS)))
            conversations = await _wait_conversations(session, sandbox.url, CONTACTS)

            async def customer(i: int) -> None:
                for n in range(1, PER_CONTACT):
                    await post_inbound(contact(i), f"in-{i}-{n}")

            async def agent(i: int) -> None:
                conv = conversations[contact(i)]
                for n in range(PER_CONTACT):
                    url = f"{sandbox.url}/sandbox/api/conversations/{conv}/messages"
                    async with session.post(url, json={"text": f"out-{i}-{n}"}) as resp:
                        assert resp.status == 201, await resp.text()
                    if n % 10 == 0:
                        await asyncio.sleep(0)

            async def killer() -> None:
                for _ in range(KILLS):
                    await asyncio.sleep(rng.uniform(0.4, 1.5))
                    proc.kill()  # SIGKILL: no shutdown, no flush
                    proc.start()
                    await proc.wait_ready(base, limit=30)

            started = time.monotonic()
            await asyncio.gather(
                killer(),
                *(customer(i) for i in range(CONTACTS)),
                *(agent(i) for i in range(CONTACTS)),
            )

            async def settled() -> bool:
                async with session.post(
                    f"{sandbox.url}/sandbox/api/drain", json={"timeout": 30}
                ) as resp:
                    await resp.read()
                nonlocal arrived
                arrived = await _inbound_by_contact(session, sandbox.url)
                counts = Counter(m for ids in arrived.values() for m in ids)
                inbound_done = all(counts[m] >= 1 for ids in acked.values() for m in ids)
                outbound_done = len({s["text"] for s in provider.sends}) >= CONTACTS * PER_CONTACT
                return inbound_done and outbound_done

            arrived: dict[str, list[str]] = {}
            deadline = time.monotonic() + 120
            while not await settled():
                assert time.monotonic() < deadline, "messages did not all arrive"
                await asyncio.sleep(0.5)
            elapsed = time.monotonic() - started
    finally:
        proc.kill()
        await sandbox.close()

    crashes = KILLS
    window = WORKERS * crashes

    # Inbound: every acknowledged message is in Unblu, in order per contact.
    counts = Counter(m for ids in arrived.values() for m in ids)
    acked_total = sum(len(ids) for ids in acked.values())
    assert acked_total == CONTACTS * PER_CONTACT
    inbound_dupes = sum(counts[m] - 1 for ids in acked.values() for m in ids)
    assert inbound_dupes <= window, f"{inbound_dupes} inbound duplicates > window {window}"
    for sender, ids in acked.items():
        seen = _dedup(arrived[sender])
        assert seen == ids, f"order broken for {sender}"

    # Outbound: every agent message reached the provider once (bar the window), in order.
    texts = [s["text"] for s in provider.sends]
    outbound_dupes = len(texts) - len(set(texts))
    assert len(set(texts)) == CONTACTS * PER_CONTACT
    assert outbound_dupes <= window, f"{outbound_dupes} outbound duplicates > window {window}"
    per_contact: dict[str, list[str]] = defaultdict(list)
    for s in provider.sends:
        per_contact[s["to"]].append(s["text"])
    for i in range(CONTACTS):
        assert _dedup(per_contact[contact(i)]) == [f"out-{i}-{n}" for n in range(PER_CONTACT)]
    print(
        f"\n{2 * CONTACTS * PER_CONTACT} messages with {crashes} kill -9 in {elapsed:.1f}s; "
        f"duplicates: inbound {inbound_dupes}, outbound {outbound_dupes} (window {window})"
    )


async def _wait_conversations(session: aiohttp.ClientSession, url: str, n: int) -> dict[str, str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with session.get(f"{url}/sandbox/api/conversations") as resp:
            data = await resp.json()
        convs = data["conversations"] if isinstance(data, dict) else data
        if len(convs) >= n:
            return {c["sourceId"]: c["id"] for c in convs}
        await asyncio.sleep(0.1)
    raise AssertionError("conversations were not created")


async def _inbound_by_contact(session: aiohttp.ClientSession, url: str) -> dict[str, list[str]]:
    """The contact's messages that reached Unblu, by sourceId, in Unblu's order."""
    out: dict[str, list[str]] = defaultdict(list)
    async with session.get(f"{url}/sandbox/api/conversations") as resp:
        data = await resp.json()
    for conv in data["conversations"] if isinstance(data, dict) else data:
        async with session.get(f"{url}/sandbox/api/conversations/{conv['id']}/messages") as resp:
            data = await resp.json()
        msgs = data["messages"] if isinstance(data, dict) else data
        out[conv["sourceId"]] += [
            m["sourceId"] for m in msgs if m.get("fromMessenger") and m.get("sourceId")
        ]
    return out


def _dedup(items: list[str]) -> list[str]:
    """Order of first appearance: a duplicate inside the window repeats an earlier item."""
    seen: set[str] = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


pytestmark = pytest.mark.slow
