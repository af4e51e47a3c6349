"""The provider-fake kit (extmsg.testing.fakes) and how ``extmsg serve --sandbox`` runs fakes:
a fake of the loopback messenger written on the kit, in a few lines."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from extmsg import hookimpl
from extmsg.models import ProviderFake
from extmsg.plugins import build_hooks
from extmsg.sandbox_mode import start_sandbox
from extmsg.testing.fakes import (
    FAKE,
    CustomerMessage,
    Failure,
    FailureScript,
    FakeProvider,
    call_factory,
)
from extmsg.testing.helpers import eventually, free_port, running_extmsg
from extmsg.testing.tally import sandbox_conversations, sandbox_messages
from tests import loopback_plugin
from tests.loopback_plugin import sign


class LoopbackFake(FakeProvider):
    """The loopback messenger's provider, on the kit."""

    messenger = "loopback"
    title = "Loopback fake"

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/send", self.send)

    def channel_settings(self, base_url: str) -> dict[str, Any]:
        return {"token": "loop-token", "api_url": base_url}

    async def send(self, request: web.Request) -> web.Response:
        data = await request.json()
        failure = await self.take_failure(data["to"])
        if failure is not None:
            return self.failure_response(failure)
        sent = self.record(id=uuid.uuid4().hex, to=data["to"], text=data["text"])
        return web.json_response({"id": sent["id"]})

    async def deliver(self, message: CustomerMessage, data: Mapping[str, Any]) -> dict[str, Any]:
        if not self.webhook_url:
            raise ValueError("no webhook_url known")
        item = {"id": message.id or uuid.uuid4().hex, "from": message.sender, "text": message.text}
        body = json.dumps({"messages": [item]}).encode()
        headers = {"x-loopback-signature": sign("loop-token", body)}
        posted = await self.post_signed(self.webhook_url, body=body, headers=headers)
        return {"status": posted.status, "id": item["id"]}


class _Fakes:
    @hookimpl
    def extmsg_provider_fakes(self) -> list[ProviderFake]:
        return [LoopbackFake.declare(description="the loopback API")]


def test_a_failure_script_counts_times_and_after() -> None:
    script = FailureScript()
    script.add("a", "boom", times=2, after=1)
    assert [script.take("a") for _ in range(4)] == [None, "boom", "boom", None]
    assert script.take("b") is None
    with pytest.raises(ValueError, match="times"):
        script.add("a", "boom", times=0)
    with pytest.raises(ValueError, match="after"):
        script.add("a", "boom", after="x")  # type: ignore[arg-type]


def test_factories_get_the_arguments_they_take() -> None:
    def old(extmsg_url: str | None = None) -> str:
        return f"old {extmsg_url}"

    def new(*, extmsg_url: str | None = None, webhook_url: str | None = None) -> str:
        return f"new {extmsg_url} {webhook_url}"

    assert call_factory(old, extmsg_url="e", webhook_url="w") == "old e"
    assert call_factory(new, extmsg_url="e", webhook_url="w") == "new e w"


async def test_scripted_failures_answer_like_a_provider() -> None:
    """429 with Retry-After, 403, 503, and a timeout held until the caller gives up — or
    until the fake stops, which does not wait for the held request."""
    app = LoopbackFake().create_app()
    server = TestServer(app)
    await server.start_server()
    fake = app[FAKE]
    try:
        async with aiohttp.ClientSession() as http:
            for name, status in (("throttled", 429), ("forbidden", 403), ("server_error", 503)):
                fake.fail("kim", name, times=1)
                async with http.post(
                    server.make_url("/send"), json={"to": "kim", "text": "x"}
                ) as resp:
                    assert resp.status == status
                    assert resp.headers.get("Retry-After") == ("2" if status == 429 else None)
            fake.fail("kim", Failure(status=504, hold=30.0), times=1)
            with pytest.raises(TimeoutError):
                async with http.post(
                    server.make_url("/send"),
                    json={"to": "kim", "text": "x"},
                    timeout=aiohttp.ClientTimeout(total=0.3),
                ):
                    pass
            async with http.post(server.make_url("/send"), json={"to": "kim", "text": "hi"}) as r:
                assert r.status == 200
                sent_id = (await r.json())["id"]
            async with http.get(server.make_url("/fake/messages")) as resp:
                [sent] = (await resp.json())["messages"]
            async with http.get(server.make_url("/fake/thread")) as resp:
                [shown] = (await resp.json())["entries"]
            assert (shown["sender"], shown["text"], shown["id"]) == ("business", "hi", sent_id)
            assert (sent["id"], sent["to"], sent["text"], sent["state"]) == (
                sent_id, "kim", "hi", "sent",
            )  # fmt: skip
    finally:
        started = time.monotonic()
        await server.close()
        assert time.monotonic() - started < 5, "a held request must not hold up shutdown"


async def test_sandbox_gives_each_fake_its_channel_webhook(tmp_path: Path) -> None:
    """``extmsg serve --sandbox`` builds the fake with its channel's webhook URL: a customer
    writing through ``POST /fake/inbound`` in the generic shape reaches Unblu."""
    hooks = build_hooks(entry_points=False, extra=[loopback_plugin, _Fakes()], disabled=())
    port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        raw = await start_sandbox(
            stack,
            {"server": {"port": port}, "store": {"path": str(tmp_path / "s.sqlite3")}},
            hooks,
            free_port(),
        )
        [channel] = raw["channels"]
        assert channel["name"] == "loopback-sandbox"
        fake_url = channel["settings"]["api_url"]
        sandbox_url = raw["unblu"]["base_url"].split("/app/", 1)[0]
        async with running_extmsg(raw, hooks, port=port) as extmsg:
            http = extmsg.session
            async with http.post(
                f"{fake_url}/fake/inbound", json={"from": "kim", "text": "Hello sandbox"}
            ) as resp:
                answer = await resp.json()
            assert answer["status"] == 200, answer

            async def arrived() -> bool:
                for conv in await sandbox_conversations(http, sandbox_url):
                    for m in await sandbox_messages(http, sandbox_url, conv["id"]):
                        if m.get("text") == "Hello sandbox":
                            return True
                return False

            await eventually(arrived)
            async with http.get(f"{fake_url}/") as resp:
                assert "Loopback fake" in await resp.text()
            # the console's view of the customer, from the kit: what they wrote
            async with http.get(f"{fake_url}/fake/thread") as resp:
                thread = await resp.json()
            assert thread["messenger"] == "loopback"
            [entry] = thread["entries"]
            assert (entry["sender"], entry["contact"], entry["text"], entry["state"]) == (
                "customer", "kim", "Hello sandbox", "sent",
            )  # fmt: skip


async def test_a_bad_inbound_request_is_a_400_naming_the_problem() -> None:
    app = LoopbackFake(webhook_url="http://127.0.0.1:9/x").create_app()
    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            for body, says in (
                ([1], "JSON object"),
                ({"text": "who?"}, "from"),
                ({"from": 1, "text": "x"}, "from"),
            ):
                async with http.post(server.make_url("/fake/inbound"), json=body) as resp:
                    assert resp.status == 400
                    assert says in (await resp.json())["error"]
            async with http.post(
                server.make_url("/fake/inbound"), json={"from": "kim", "text": "x"}
            ) as resp:
                assert resp.status == 502  # nothing listens at the webhook URL
            async with http.post(
                server.make_url("/fake/failures"), json={"to": "kim", "failure": "nope"}
            ) as resp:
                assert resp.status == 400
                assert "throttled" in (await resp.json())["error"]
    finally:
        await server.close()
