"""The messenger unit: a class whose methods the core calls for its own channels only, served
beside other messengers without route collisions."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from extmsg import hookspecs
from extmsg.app import create_app
from extmsg.appkeys import RUNTIME as RUNTIME_KEY
from extmsg.config import parse_config
from extmsg.errors import PermanentError, PluginError
from extmsg.messenger import HOOK_METHODS, RAW_ONLY_HOOKS, Messenger, handler_route
from extmsg.models import (
    Attachment,
    Channel,
    Contact,
    ContactCheck,
    ErrorVerdict,
    HttpReply,
    InboundRequest,
    OutboundMessage,
    Route,
    SendResult,
)
from extmsg.plugins import Hooks, build_hooks

from . import loopback_plugin, relay_messenger
from .conftest import make_channel
from .helpers import ServeProcess, free_port
from .loopback_fake import signed
from .relay_messenger import Relay, RelaySettings


class _S(msgspec.Struct):
    pass


class Recorder(Messenger):
    """Implements every unit method and records who it was called for."""

    name = "recorder"
    settings = _S
    routes = (Route(name="inbound", path="inbound"),)

    def __init__(self) -> None:
        self.calls: list[str] = []

    def verify_inbound(self, request: InboundRequest, channels: Sequence[Channel]) -> bool:
        self.calls.append("verify_inbound")
        return True

    def parse_inbound(self, request: InboundRequest, channels: Sequence[Channel]) -> list[Any]:
        self.calls.append("parse_inbound")
        return []

    def render_ack(self, request: InboundRequest, events: Sequence[Any]) -> HttpReply:
        self.calls.append("render_ack")
        return HttpReply(body=b"rec")

    async def fetch_attachment(self, channel: Channel, attachment: Attachment) -> Attachment:
        self.calls.append("fetch_attachment")
        return msgspec.structs.replace(attachment, data=b"x")

    def validate_contact(self, channel: Channel, identifier: str) -> ContactCheck:
        self.calls.append("validate_contact")
        return ContactCheck(valid=True, address=identifier.upper())

    def render_outbound(self, channel: Channel, message: OutboundMessage) -> list[OutboundMessage]:
        self.calls.append("render_outbound")
        return [message]

    async def send(self, channel: Channel, message: OutboundMessage) -> SendResult:
        self.calls.append("send")
        return SendResult(provider_message_id="r1")

    async def find_sent(self, channel: Channel, message: OutboundMessage) -> bool:
        self.calls.append("find_sent")
        return False

    async def mark_read(self, channel: Channel, provider_message_id: str) -> bool:
        self.calls.append("mark_read")
        return True

    def classify_error(self, channel: Channel, error: BaseException) -> ErrorVerdict | None:
        self.calls.append("classify_error")
        return ErrorVerdict(retryable=False, reason="recorder says no")


def _hooks(*plugins: object) -> Hooks:
    return build_hooks(entry_points=False, extra=[loopback_plugin, *plugins], disabled=())


def _message() -> OutboundMessage:
    return OutboundMessage(
        id="m1", unblu_message_id="u1", conversation_id="c1", contact=Contact(address="+41"),
        text="hi", sender_name="Anna",
    )  # fmt: skip


def _request(route: str = "inbound") -> InboundRequest:
    return InboundRequest(method="POST", url="https://x/", path="/", route=route, body=b"{}")


async def _call_every_hook(hooks: Hooks, channel: Channel) -> None:
    request = _request()
    await hooks.verify_inbound(channel.messenger, request, [channel])
    await hooks.parse_inbound(channel.messenger, request, [channel])
    await hooks.render_ack(channel.messenger, request, [])
    await hooks.fetch_attachment(
        channel, Attachment(file_name="a", mime_type="x/y", url="https://f")
    )
    await hooks.validate_contact(channel, "abc")
    await hooks.render_outbound(channel, _message())
    await hooks.find_sent(channel, _message())
    await hooks.mark_read(channel, "p1")
    await hooks.classify_error(channel, RuntimeError("boom"))
    with contextlib.suppress(PluginError):  # nobody sends for the other messenger
        await hooks.send(channel, _message())


async def test_unit_methods_are_called_for_its_own_channels_only() -> None:
    unit = Recorder()
    hooks = _hooks(unit)
    other = make_channel("elsewhere", "elsewhere", settings=_S())
    await _call_every_hook(hooks, other)
    assert unit.calls == []
    await _call_every_hook(hooks, make_channel("rec", "recorder", settings=_S()))
    assert sorted(unit.calls) == sorted(HOOK_METHODS)


async def test_unit_answers_for_its_channels() -> None:
    hooks = _hooks(Recorder())
    mine = make_channel("rec", "recorder", settings=_S())
    assert (await hooks.validate_contact(mine, "abc")).address == "ABC"
    assert (await hooks.render_ack("recorder", _request(), [])).body == b"rec"
    assert await hooks.mark_read(mine, "p1") is True
    verdict = await hooks.classify_error(mine, RuntimeError("boom"))
    assert verdict.reason == "recorder says no"
    fetched = await hooks.fetch_attachment(
        mine, Attachment(file_name="a", mime_type="x/y", url="u")
    )
    assert fetched.data == b"x"


class Minimal(Messenger):
    name = "minimal"
    settings = _S

    def classify_error(self, channel: Channel, error: BaseException) -> ErrorVerdict | None:
        return None  # leave it to the core


async def test_methods_left_out_keep_the_core_defaults() -> None:
    hooks = _hooks(Minimal())
    mine = make_channel("min", "minimal", settings=_S())
    [rendered] = await hooks.render_outbound(mine, _message())
    assert rendered.text == "Anna: hi"  # the core's sender prefix
    assert await hooks.mark_read(mine, "p1") is False
    assert (await hooks.validate_contact(mine, " x ")).address == "x"
    assert (await hooks.render_ack("minimal", _request(), [])).status == 200
    verdict = await hooks.classify_error(mine, PermanentError("refused", status=400))
    assert verdict.retryable is False  # the core's classification of a DeliveryError
    plugin = next(p for p in hooks.plugins() if p.name.endswith("Minimal"))
    assert "extmsg_send" not in plugin.hooks
    assert "extmsg_startup" not in plugin.hooks  # the base class's do-nothing lifecycle
    assert "extmsg_classify_error" in plugin.hooks
    with pytest.raises(PluginError, match="no plugin sends messages for messenger 'minimal'"):
        await hooks.send(mine, _message())


def test_a_unit_registers_as_class_instance_or_module() -> None:
    for plugin in (Relay, Relay(), relay_messenger):
        hooks = _hooks(plugin)
        assert hooks.messenger_types()["relay"].settings is RelaySettings
        assert hooks.messenger_plugin("relay") in {p.name for p in hooks.plugins()}
    names = {p.name for p in _hooks(relay_messenger).plugins()}
    assert "tests.relay_messenger" in names


class _Nameless(Messenger):
    settings = _S


class _AsyncClassifier(Messenger):
    name = "asyncclass"
    settings = _S

    async def classify_error(self, channel: Channel, error: BaseException) -> None:  # type: ignore[override]
        return None


@pytest.mark.parametrize(
    ("unit", "message"),
    [
        (_Nameless(), "sets no 'name'"),
        (_AsyncClassifier(), "classify_error must be a plain 'def'"),
    ],
)
def test_a_broken_unit_is_one_clear_error(unit: Messenger, message: str) -> None:
    with pytest.raises(PluginError, match=re.escape(message)) as info:
        _hooks(unit)
    assert "\n" not in str(info.value)


class _Handshake(Messenger):
    name = "handshake"
    settings = _S
    routes = (Route(name="events", path="hook", scope="messenger"),)

    @handler_route("hook", scope="messenger")
    async def verify(self, request: InboundRequest, channels: Sequence[Channel]) -> HttpReply:
        return HttpReply(body=request.body[::-1])


async def test_handler_routes_are_bound_methods() -> None:
    [events, verify] = _hooks(_Handshake()).messenger_types()["handshake"].routes
    assert (events.name, events.kind) == ("events", "events")
    assert (verify.name, verify.method, verify.kind) == ("verify", "GET", "handler")
    assert verify.handler is not None
    assert (await verify.handler(_request(), [])).body == b"}{"


class _Clash(Messenger):
    name = "clash"
    settings = _S
    routes = (Route(name="inbound", path="inbound"), Route(name="status", path="/inbound/"))


def test_routes_of_a_messenger_that_collide_are_refused_at_load() -> None:
    with pytest.raises(PluginError) as info:
        _hooks(_Clash()).messenger_types()
    text = str(info.value)
    assert "plugin 'tests.test_messenger_unit._Clash'" in text
    assert "routes 'inbound' and 'status' both take POST /channels/{channel}/inbound" in text
    assert "\n" not in text


def test_a_messenger_declared_by_two_plugins_is_refused_naming_both() -> None:
    class Loopback(Relay):
        name = "loopback"

    with pytest.raises(PluginError) as info:
        _hooks(Loopback()).messenger_types()
    text = str(info.value)
    assert "messenger type 'loopback' is declared by both plugin" in text
    assert "tests.loopback_plugin" in text
    assert "Loopback" in text


CHANNELS = {
    "channels": [
        {"name": "loop", "messenger": "loopback", "webhook_secret": "w",
         "settings": {"token": "tok"}},
        {"name": "relay", "messenger": "relay", "webhook_secret": "w",
         "settings": {"token": "relay-token"}},
    ]
}  # fmt: skip


async def test_two_messengers_both_route_inbound_and_each_reaches_its_plugin(
    tmp_path: Path,
) -> None:
    hooks = _hooks(Relay())
    raw = {**CHANNELS, "store": {"path": str(tmp_path / "s.sqlite3")}}
    app = create_app(parse_config(raw, hooks.messenger_types()), hooks)
    async with TestClient(TestServer(app)) as client:
        body, headers = signed("tok", {"messages": [{"id": "L1", "from": "+41", "text": "a"}]})
        resp = await client.post("/channels/loop/inbound", data=body, headers=headers)
        assert resp.status == 200
        assert await resp.read() == b""  # the loopback plugin keeps the core's empty ack
        resp = await client.post(
            "/channels/relay/inbound",
            json={"id": "R1", "from": "+42", "text": "b"},
            headers={"x-relay-token": "relay-token"},
        )
        assert (resp.status, await resp.read()) == (200, relay_messenger.ACK)
        # Each request was verified by its own plugin: the other's credentials are refused.
        resp = await client.post("/channels/relay/inbound", data=body, headers=headers)
        assert resp.status == 403
        resp = await client.post("/channels/nope/inbound", data=body, headers=headers)
        assert resp.status == 404
        stored = await app[RUNTIME_KEY].store.job_counts()
        assert sum(stored.values()) == 2


CONFIG = """
[server]
port = {port}
log_level = "INFO"

[store]
path = "store.sqlite3"

[[channels]]
name = "loop"
messenger = "loopback"
webhook_secret = "whsec"
[channels.settings]
token = "tok"

[[channels]]
name = "relay"
messenger = "relay"
webhook_secret = "whsec"
[channels.settings]
token = "relay-token"
"""


async def test_serve_runs_two_messengers_with_an_inbound_route_and_announces_their_urls(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = tmp_path / "extmsg.toml"
    config.write_text(CONFIG.format(port=port))
    proc = ServeProcess(
        config, env={"EXTMSG_PLUGINS": "tests.loopback_plugin,tests.relay_messenger"}
    )
    proc.start()
    base = f"http://127.0.0.1:{port}"
    try:
        await proc.wait_ready(base)
        async with aiohttp.ClientSession() as session:
            body, headers = signed("tok", {"messages": [{"id": "L1", "from": "+41"}]})
            async with session.post(
                f"{base}/channels/loop/inbound", data=body, headers=headers
            ) as resp:
                assert resp.status == 200
            async with session.post(
                f"{base}/channels/relay/inbound",
                json={"id": "R1", "from": "+42"},
                headers={"x-relay-token": "relay-token"},
            ) as resp:
                assert (resp.status, await resp.read()) == (200, relay_messenger.ACK)
            async with session.get(f"{proc.admin_url}/metrics") as resp:
                metrics = await resp.text()
        for channel in ("loop", "relay"):
            assert (
                f'extmsg_inbound_events_total{{channel="{channel}",kind="message",'
                f'outcome="accepted"}} 1.0'
            ) in metrics
    finally:
        proc.kill()
    log = proc.log()
    assert f"relay webhook of relay: {base}/channels/relay/inbound" in log
    assert "relay webhook of loop" not in log  # the unit hears of its own channels only
    assert "will never be executed" not in log


def test_every_hook_is_a_unit_method_or_named_raw_only() -> None:
    """A new hook is either offered to units or listed as one only raw plugins implement."""
    hooks = {name for name in dir(hookspecs) if name.startswith("extmsg_")}
    lifecycle = {"extmsg_messenger_types", "extmsg_provider_fakes", "extmsg_startup",
                 "extmsg_listening", "extmsg_shutdown"}  # fmt: skip
    offered = {f"extmsg_{m}" for m in HOOK_METHODS} | lifecycle
    assert hooks == offered | set(RAW_ONLY_HOOKS)
    assert not offered & set(RAW_ONLY_HOOKS)


async def test_a_module_may_hold_a_unit_and_raw_hooks() -> None:
    """Raw hooks stay available beside a unit: both are registered from one module."""
    import types

    from extmsg import hookimpl

    module = types.ModuleType("extmsg_mixed")

    class Mixed(Messenger):
        name = "mixed"
        settings = _S

    Mixed.__module__ = module.__name__

    @hookimpl
    def extmsg_map_contact(channel: Channel, contact: Contact) -> Contact:
        return msgspec.structs.replace(contact, name="From the CRM")

    module.Mixed = Mixed  # type: ignore[attr-defined]
    module.extmsg_map_contact = extmsg_map_contact  # type: ignore[attr-defined]
    hooks = build_hooks(entry_points=False, extra=[module], disabled=())
    assert "mixed" in hooks.messenger_types()
    names = {p.name for p in hooks.plugins()}
    assert {"extmsg_mixed", "extmsg_mixed:hooks"} <= names
    channel = make_channel("m", "mixed", settings=_S())
    assert (await hooks.map_contact(channel, Contact(address="a"))).name == "From the CRM"


async def test_context_tells_a_unit_the_server_is_stopping_and_its_drain_waits_for_held_work() -> (
    None
):
    from aiohttp import web

    from extmsg.draining import IN_FLIGHT, InFlight
    from extmsg.messenger import MessengerContext

    bare = MessengerContext(web.Application(), None, "relay")
    assert not bare.stopping  # outside a server: never stopping, nothing to wait for
    with bare.in_flight():
        pass
    app = web.Application()
    requests = app[IN_FLIGHT] = InFlight()
    ctx = MessengerContext(app, None, "relay")
    with ctx.in_flight():
        assert requests.count == 1
        requests.stop_taking()
        assert ctx.stopping
        assert not await requests.idle(0.05)  # the drain waits for what a unit holds
    assert await requests.idle(0.05)
