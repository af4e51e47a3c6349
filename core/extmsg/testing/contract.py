"""The contract every messenger plugin keeps, as a test class to subclass.

A plugin's test module subclasses :class:`WebhookContract` (providers that call extmsg over
HTTP) or :class:`MessengerContract` (mail arriving by SMTP or IMAP) and provides a few
fixtures; the inherited tests then check what the core relies on, the same way for every
messenger::

    class TestContract(WebhookContract):
        messenger = "telegram"

        @pytest.fixture
        def plugin(self):
            return extmsg_telegram.plugin

        @pytest.fixture
        def channel(self, channel_factory):
            return channel_factory("telegram", TelegramSettings(bot_token="t"))

        @pytest.fixture
        def signed_request(self, channel):
            return InboundRequest(...)      # a real-shaped, correctly signed message webhook

        @pytest.fixture
        def unsigned_request(self, signed_request):
            return msgspec.structs.replace(signed_request, headers={})

The end-to-end checks (a redelivered webhook gives one message, two contacts get two messages,
each class of send error is classified, the fake speaks the sandbox's fake protocol) run the
real server against the Unblu sandbox and the plugin's own provider fake (its
``extmsg_provider_fakes``); they are skipped for a plugin that ships none.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import msgspec
import pytest
from aiohttp import web

from ..errors import SignatureError
from ..models import (
    Attachment,
    Channel,
    Contact,
    InboundMessage,
    InboundRequest,
    MessengerType,
    OutboundMessage,
    ProviderFake,
)
from ..plugins import Hooks, build_hooks
from .fakes import GENERIC_FAILURES, call_factory, sandbox_webhook_url
from .helpers import RunningExtmsg, eventually, free_port, running_extmsg
from .tally import sandbox_conversations, sandbox_messages

__all__ = ["MessengerContract", "WebhookContract"]


class MessengerContract:
    """Inherit and provide the fixtures ``plugin`` (the plugin module or object) and
    ``channel`` (a :class:`~extmsg.models.Channel` of the messenger with valid settings)."""

    #: The messenger type the plugin declares.
    messenger: str = ""
    #: The agent's name is put in front of the text (False when it goes elsewhere, e.g. a
    #: mail's From line).
    prefixes_text: bool = True
    #: Two contacts' addresses, as the provider writes them, for the end-to-end checks.
    contacts: tuple[str, str] = ("+41791110001", "+41791110002")
    #: How the provider numbers messages: ``"provider"`` (ids unique across contacts: Twilio's
    #: SIDs, WhatsApp's wamids) or ``"contact"`` (counted per chat, as Telegram does; the check
    #: then gives two contacts the same id and expects two messages).
    message_ids_per: Literal["provider", "contact"] = "provider"
    #: Channel settings that make a send give up within a second, for the timeout check
    #: (``{"timeout": 0.5}``); None skips it.
    quick_timeout: ClassVar[Mapping[str, Any] | None] = None
    #: The ``Retry-After`` the fake's ``throttled`` failure carries reaches the verdict (None:
    #: the provider has no such header).
    honours_retry_after: bool = True

    @pytest.fixture
    def hooks(self, plugin: Any) -> Hooks:
        return build_hooks(entry_points=False, extra=[plugin], disabled=())

    @pytest.fixture
    def other_channel(self, channel: Channel) -> Channel:
        return msgspec.structs.replace(channel, name="elsewhere", messenger="some-other-messenger")

    # -- declaration -------------------------------------------------------------------------
    def test_declares_its_messenger_type(self, hooks: Hooks, channel: Channel) -> None:
        mtype = hooks.messenger_types()[self.messenger]
        assert isinstance(mtype, MessengerType)
        assert isinstance(channel.settings, mtype.settings)
        assert mtype.contact_identifier_type in ("PHONE_NUMBER", "EMAIL", "NUMBER", "OTHER")
        for route in mtype.routes:
            if route.kind == "handler":
                assert route.handler is not None, f"route {route.name} has no handler"

    # -- first-result hooks decline other messengers -----------------------------------------
    async def test_leaves_other_messengers_alone(
        self, hooks: Hooks, other_channel: Channel
    ) -> None:
        h: Any = hooks.pm.hook
        message = _outbound()
        contact = Contact(address="someone")
        attachment = Attachment(file_name="a.bin", url="x:1")
        inbound = InboundRequest(method="POST", url="http://x/", path="/", route="inbound")
        for name, kwargs in (
            ("extmsg_send", {"channel": other_channel, "message": message}),
            ("extmsg_find_sent", {"channel": other_channel, "message": message}),
            ("extmsg_render_outbound", {"channel": other_channel, "message": message}),
            ("extmsg_mark_read", {"channel": other_channel, "provider_message_id": "p"}),
            ("extmsg_fetch_attachment", {"channel": other_channel, "attachment": attachment}),
            ("extmsg_validate_contact", {"channel": other_channel, "identifier": "x"}),
            ("extmsg_map_contact", {"channel": other_channel, "contact": contact}),
            (
                "extmsg_verify_inbound",
                {"messenger": "some-other-messenger", "request": inbound, "channels": []},
            ),
            (
                "extmsg_parse_inbound",
                {"messenger": "some-other-messenger", "request": inbound, "channels": []},
            ),
        ):
            caller = getattr(h, name)
            for impl in caller.get_hookimpls():
                if impl.plugin_name.startswith("extmsg.defaults."):
                    continue
                result = impl.function(*(kwargs[arg] for arg in impl.argnames))
                assert result is None, f"{impl.plugin_name}.{name} answered for another messenger"

    # -- outbound ------------------------------------------------------------------------------
    async def test_renders_the_agent_message_with_the_channel_prefix(
        self, hooks: Hooks, channel: Channel
    ) -> None:
        parts = await hooks.render_outbound(channel, _outbound(sender_name="Anna Agent"))
        assert parts, "rendering must produce at least one message"
        assert all(p.id == "m-contract" for p in parts), "parts keep the message's id"
        text = "".join(p.text or "" for p in parts)
        if self.prefixes_text:
            assert text.startswith("Anna Agent: ")
        assert "Hello from the contract" in text

    async def test_validates_contact_identifiers(self, hooks: Hooks, channel: Channel) -> None:
        check = await hooks.validate_contact(channel, "   ")
        assert not check.valid
        assert check.error

    # -- end to end, with the plugin's provider fake ------------------------------------------
    @pytest.fixture
    def fake_declaration(self, hooks: Hooks) -> ProviderFake:
        fakes = [f for f in hooks.provider_fakes() if f.messenger == self.messenger]
        if not fakes or fakes[0].channel_settings is None:
            pytest.skip(f"{self.messenger} ships no provider fake with channel settings")
        return fakes[0]

    @pytest.fixture
    async def world(
        self, hooks: Hooks, fake_declaration: ProviderFake, tmp_path: Path, unblu_sandbox: Any
    ) -> AsyncIterator[ContractWorld]:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        mtype = hooks.messenger_types()[self.messenger]
        app = call_factory(
            fake_declaration.factory,
            extmsg_url=base,
            webhook_url=sandbox_webhook_url(base, mtype, "contract"),
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            fake_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            assert fake_declaration.channel_settings is not None
            settings = fake_declaration.channel_settings(fake_url, app)
            raw = {
                "server": {"port": port, "fetch_allowed_networks": ["127.0.0.0/8"]},
                "store": {"path": str(tmp_path / "contract.sqlite3")},
                "unblu": {
                    "base_url": unblu_sandbox.base_url,
                    "username": "admin",
                    "password": "admin",
                },
                "engine": {"backoff_initial": 0.05, "backoff_max": 0.5},
                "channels": [
                    {
                        "name": "contract",
                        "messenger": self.messenger,
                        "webhook_secret": "contract-webhook-secret",
                        "settings": settings,
                    }
                ],
            }
            async with running_extmsg(raw, hooks, port=port) as extmsg:
                yield ContractWorld(extmsg, fake_url, unblu_sandbox.url)
        finally:
            await runner.cleanup()  # a no-op when done

    async def test_a_redelivered_message_gives_one_message(self, world: ContractWorld) -> None:
        """The provider sends the same message twice (its retry): one message in Unblu."""
        contact = self.contacts[0]
        first = await world.write(contact, "Only once, please")
        assert first.get("id"), "/fake/inbound must answer the provider's message id"
        again = await world.write(contact, "Only once, please", id=first["id"])
        assert again["id"] == first["id"]
        await world.write(contact, "And this one after it")
        await world.wait_for("And this one after it")
        texts = [t for _, t in await world.visitor_texts()]
        assert sum("Only once, please" in t for t in texts) == 1, texts

    async def test_two_contacts_get_two_messages(self, world: ContractWorld) -> None:
        """Two contacts writing get a message each, in a conversation each — also when the
        provider numbers messages per chat and both ids coincide."""
        a, b = self.contacts
        shared = {"id": "1"} if self.message_ids_per == "contact" else {}
        first = await world.write(a, "Hello from the first contact", **shared)
        second = await world.write(b, "Hello from the second contact", **shared)
        if self.message_ids_per == "contact":
            assert first["id"] == second["id"]
        await world.wait_for("Hello from the first contact")
        await world.wait_for("Hello from the second contact")
        found = await world.visitor_texts()
        conversations = {c for c, t in found if "Hello from the" in t}
        assert len([t for _, t in found if "Hello from the" in t]) == 2
        assert len(conversations) == 2

    async def test_send_errors_are_classified(self, hooks: Hooks, world: ContractWorld) -> None:
        """Each class of failure the fake scripts is retryable or permanent, as the engine
        needs; then a send goes through and ``/fake/messages`` lists it."""
        channel = world.extmsg.runtime.channels["contract"]
        if self.quick_timeout:
            quick = msgspec.structs.replace(channel.settings, **self.quick_timeout)
            channel = msgspec.structs.replace(channel, settings=quick)
        to = self.contacts[1]
        [part, *_] = await hooks.render_outbound(channel, _outbound(contact=Contact(address=to)))
        expected = {"throttled": True, "forbidden": False, "server_error": True, "timeout": True}
        assert set(expected) == set(GENERIC_FAILURES)
        for name, retryable in expected.items():
            if name == "timeout" and not self.quick_timeout:
                continue
            await world.script(to, name)
            with pytest.raises(Exception) as raised:  # noqa: PT011 - any error the plugin raises
                await hooks.send(channel, part)
            verdict = await hooks.classify_error(channel, raised.value)
            assert verdict.retryable is retryable, f"{name}: {verdict}"
            assert verdict.reason, f"{name}: a verdict needs a reason a person can act on"
            if name == "throttled" and self.honours_retry_after:
                assert verdict.retry_after == pytest.approx(2.0), f"{name}: {verdict}"
        result = await hooks.send(channel, part)
        # the provider's id, which the plugin may scope (``chat:id``)
        sent = [
            m
            for m in await world.fake_messages()
            if m["id"] and str(m["id"]) in result.provider_message_id
        ]
        assert len(sent) == 1, "/fake/messages lists each send under the provider's id"
        assert {"id", "to", "text", "at", "state"} <= set(sent[0])
        assert "Hello from the contract" in (sent[0]["text"] or "")

    async def test_the_fake_speaks_the_sandbox_protocol(self, world: ContractWorld) -> None:
        """``/fake/inbound`` in its generic shape reaches extmsg; bad requests get a 400 that
        names the problem, never a 5xx; ``/fake/failures`` knows every generic failure."""
        http = world.extmsg.session
        for body in ([1, 2], {"from": 7, "text": "x"}, {"from": "x", "text": ["a"]}):
            async with http.post(f"{world.fake_url}/fake/inbound", json=body) as resp:
                assert resp.status == 400, (body, resp.status, await resp.text())
                assert (await resp.json())["error"]
        for name in GENERIC_FAILURES:
            await world.script(self.contacts[0], name)
        async with http.delete(f"{world.fake_url}/fake/failures") as resp:
            assert resp.status < 300
        async with http.post(
            f"{world.fake_url}/fake/failures", json={"to": self.contacts[0], "failure": "nope"}
        ) as resp:
            assert resp.status == 400
        async with http.get(f"{world.fake_url}/") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
        await world.write(self.contacts[0], "Hello through the generic shape")
        await world.wait_for("Hello through the generic shape")
        assert isinstance(await world.fake_messages(), list)
        async with http.get(f"{world.fake_url}/fake/thread") as resp:
            if resp.status != 404:  # optional for a fake not on the kit
                assert resp.status == 200, await resp.text()
                thread = await resp.json(content_type=None)
                texts = [e.get("text") or "" for e in thread["entries"]]
                assert any("Hello through the generic shape" in t for t in texts), thread


class WebhookContract(MessengerContract):
    """For providers that call extmsg over HTTP. Also provide ``signed_request`` (a real-shaped,
    correctly signed webhook carrying a contact's message) and ``unsigned_request`` (the same
    without its signature)."""

    def test_has_an_events_route(self, hooks: Hooks) -> None:
        routes = hooks.messenger_types()[self.messenger].routes
        assert any(route.kind == "events" for route in routes)

    # -- inbound -------------------------------------------------------------------------------
    async def test_refuses_an_unsigned_request(
        self, hooks: Hooks, channel: Channel, unsigned_request: InboundRequest
    ) -> None:
        with pytest.raises(SignatureError):
            await hooks.verify_inbound(self.messenger, unsigned_request, [channel])

    @pytest.fixture
    def wrongly_signed_request(
        self, signed_request: InboundRequest, unsigned_request: InboundRequest
    ) -> InboundRequest:
        """The signed request with its signature headers' values altered."""
        headers = dict(signed_request.headers)
        changed = [k for k in headers if unsigned_request.headers.get(k) != headers[k]]
        assert changed, "unsigned_request must lack (or alter) the signature headers"
        for key in changed:
            headers[key] = _altered(headers[key])
        return msgspec.structs.replace(signed_request, headers=headers)

    async def test_refuses_a_wrong_signature(
        self, hooks: Hooks, channel: Channel, wrongly_signed_request: InboundRequest
    ) -> None:
        with pytest.raises(SignatureError):
            await hooks.verify_inbound(self.messenger, wrongly_signed_request, [channel])

    async def test_refuses_a_changed_body_under_a_good_signature(
        self, hooks: Hooks, channel: Channel, signed_request: InboundRequest
    ) -> None:
        body = signed_request.body.replace(b"a", b"b", 1) + b" "
        if body.rstrip() == signed_request.body:
            body = signed_request.body + b"\n"
        changed = msgspec.structs.replace(signed_request, body=body)
        with pytest.raises(SignatureError):
            await hooks.verify_inbound(self.messenger, changed, [channel])

    async def test_a_signed_message_verifies_and_parses_to_stable_events(
        self, hooks: Hooks, channel: Channel, signed_request: InboundRequest
    ) -> None:
        signed = signed_request
        assert await hooks.verify_inbound(self.messenger, signed, [channel]) is True
        events = await hooks.parse_inbound(self.messenger, signed, [channel])
        assert events is not None
        messages = [e for e in events if isinstance(e, InboundMessage)]
        assert messages, "the signed request should carry a contact's message"
        for message in messages:
            assert message.provider_message_id
            assert message.contact.address
        # A provider's retry of the same request must parse to the same ids (dedup key).
        again = await hooks.parse_inbound(self.messenger, signed, [channel])
        assert again is not None
        assert [e.provider_message_id for e in again if isinstance(e, InboundMessage)] == [
            m.provider_message_id for m in messages
        ]
        reply = await hooks.render_ack(self.messenger, signed, events)
        assert 200 <= reply.status < 300


class ContractWorld:
    """extmsg serving one channel, ``contract``, against the sandbox and the plugin's fake."""

    def __init__(self, extmsg: RunningExtmsg, fake_url: str, sandbox_url: str) -> None:
        self.extmsg = extmsg
        self.fake_url = fake_url
        self.sandbox_url = sandbox_url

    async def write(self, sender: str, text: str, **extra: Any) -> dict[str, Any]:
        """A customer writes through the fake (``POST /fake/inbound``); its answer."""
        body = {"from": sender, "text": text, **extra}
        async with self.extmsg.session.post(f"{self.fake_url}/fake/inbound", json=body) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
        assert isinstance(answer, dict), answer
        assert answer.get("status", 0) < 300, answer
        return answer

    async def script(self, to: str, failure: str) -> None:
        body = {"to": to, "failure": failure, "times": 1}
        async with self.extmsg.session.post(f"{self.fake_url}/fake/failures", json=body) as resp:
            assert resp.status == 200, await resp.text()

    async def fake_messages(self) -> list[dict[str, Any]]:
        async with self.extmsg.session.get(f"{self.fake_url}/fake/messages") as resp:
            assert resp.status == 200
            listing = await resp.json()
        assert isinstance(listing, dict), "/fake/messages answers {'messages': [...]}"
        messages: list[dict[str, Any]] = listing["messages"]
        return messages

    async def visitor_texts(self) -> list[tuple[str, str]]:
        """(conversation id, text) of every message in the sandbox."""
        http = self.extmsg.session
        found = []
        for conv in await sandbox_conversations(http, self.sandbox_url):
            for message in await sandbox_messages(http, self.sandbox_url, conv["id"]):
                found.append((str(conv["id"]), str(message.get("text") or "")))
        return found

    async def wait_for(self, text: str) -> None:
        async def arrived() -> bool:
            return any(text in t for _, t in await self.visitor_texts())

        await eventually(arrived)


def _altered(value: str) -> str:
    """``value`` with its last character changed (a signature that does not match)."""
    if not value:
        return "x"
    last = value[-1]
    return value[:-1] + ("A" if last != "A" else "B")


def _outbound(**kw: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "id": "m-contract",
        "unblu_message_id": "u-contract",
        "conversation_id": "c-contract",
        "contact": Contact(address="+41790000000"),
        "text": "Hello from the contract",
        "last_inbound_at": time.time(),  # the contact just wrote: reply windows are open
    }
    fields.update(kw)
    return OutboundMessage(**fields)
