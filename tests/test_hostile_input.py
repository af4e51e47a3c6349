"""Hostile input against the core's routes over real HTTP: never a 5xx, nothing lost.

The messenger is the loopback test plugin; each messenger plugin tests its own routes.
"""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from extmsg import jsonsafe, sanitize
from extmsg.models import Attachment, Contact, InboundMessage
from extmsg.plugins import build_hooks
from extmsg.testing.helpers import eventually, raw_request, running_extmsg
from extmsg.unblu import calls, signing, wire

from . import loopback_plugin
from .loopback_fake import sign, signed

SECRET = "whsec-123"
TOKEN = "tok"
CUSTOMER = "+41790000001"


@dataclass
class World:
    base: str
    sandbox: Any
    session: aiohttp.ClientSession
    channel_id: str
    admin: str  # the admin listener: /metrics

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        async with self.session.post(self.base + path, data=body, headers=headers) as resp:
            return resp.status, await resp.text()

    async def inbound(self, body: bytes) -> tuple[int, str]:
        headers = {"x-loopback-signature": sign(TOKEN, body), "content-type": "application/json"}
        return await self.post("/channels/loop/inbound", body, headers)

    async def agent(self, path: str) -> Any:
        async with self.session.get(f"{self.sandbox.url}/sandbox/api/{path}") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def texts(self, count: int) -> list[str]:
        async def arrived() -> list[str] | None:
            data = await self.agent(f"conversations?channelId={self.channel_id}")
            texts = []
            for conv in data["conversations"] if isinstance(data, dict) else data:
                messages = await self.agent(f"conversations/{conv['id']}/messages")
                items = messages["messages"] if isinstance(messages, dict) else messages
                texts += [m.get("text") for m in items]
            return texts if len(texts) >= count else None

        return await eventually(arrived)

    async def accepted(self) -> float:
        async with self.session.get(self.admin + "/metrics") as resp:
            text = await resp.text()
        pattern = r'extmsg_inbound_events_total\{[^}]*outcome="accepted"[^}]*\} (\S+)'
        return sum(float(v) for v in re.findall(pattern, text))


@pytest.fixture
async def world(tmp_path: Path, unblu_sandbox: Any) -> AsyncIterator[World]:
    hooks = build_hooks(entry_points=False, extra=[loopback_plugin], disabled=())
    raw = {
        "store": {"path": str(tmp_path / "store.sqlite3")},
        "unblu": {"base_url": unblu_sandbox.base_url, "username": "admin", "password": "admin"},
        "engine": {"backoff_initial": 0.05, "backoff_max": 0.5},
        "channels": [
            {
                "name": "loop",
                "messenger": "loopback",
                "webhook_secret": SECRET,
                "settings": {"token": TOKEN, "api_url": "http://127.0.0.1:9"},
            }
        ],
    }
    async with running_extmsg(raw, hooks) as extmsg:
        yield World(
            extmsg.base, unblu_sandbox, extmsg.session, extmsg.channel_ids["loop"], extmsg.admin
        )


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


# --- JSON depth ------------------------------------------------------------------------------


@pytest.mark.parametrize("service", [calls.NEW_MESSAGE, None], ids=["v4", "v3"])
async def test_unblu_call_nested_too_deep_is_a_400(world: World, service: str | None) -> None:
    body = b'{"eventType": "external_messenger.new_message", "x": ' + deep(100_000) + b"}"
    headers = {**signing.sign_headers(SECRET, body), "content-type": "application/json"}
    if service:
        headers[calls.SERVICE_HEADER] = service
    status, text = await world.post("/unblu/loop", body, headers)
    assert status == 400
    assert "nested deeper than 64 levels" in text


def test_depth_check_ignores_brackets_in_strings_and_stops_at_the_limit() -> None:
    assert jsonsafe.depth_problem(b'{"a": "' + b"[" * 10_000 + b'"}') is None
    assert jsonsafe.depth_problem(b'{"a": "\\"[[[["}') is None
    assert jsonsafe.depth_problem(deep(64)) is None
    assert jsonsafe.depth_problem(deep(65)) == "JSON nested deeper than 64 levels"
    assert jsonsafe.depth_problem(b"[]" * 100_000) is None


def _reference_depth(data: bytes) -> int:
    """The nesting depth, counted the plain way (brackets in strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in data.decode():
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def test_depth_check_agrees_with_plain_counting() -> None:
    rng = random.Random(7)

    def value(levels: int) -> Any:
        if levels == 0 or rng.random() < 0.01:
            return rng.choice(["x", 'q"[', "]]\\", 1])
        width = 2 if rng.random() < 0.05 else 1  # mostly chains: the size stays small
        if rng.random() < 0.5:
            return ["[", *(value(levels - 1) for _ in range(width))]
        return {f"k{i}]": value(levels - 1) for i in range(width)}

    verdicts = []
    for _ in range(300):
        data = json.dumps(value(rng.randint(30, 90))).encode()
        too_deep = jsonsafe.depth_problem(data) is not None
        assert too_deep == (_reference_depth(data) > jsonsafe.MAX_DEPTH), data[:200]
        verdicts.append(too_deep)
    assert 50 < sum(verdicts) < 250  # both sides of the limit were tried


# --- lone surrogates ---------------------------------------------------------------------------


async def test_a_lone_surrogate_does_not_sink_its_batch(world: World) -> None:
    # json.dumps writes the lone surrogate as the escape "\ud800", as a provider would.
    payload = {
        "messages": [
            {"id": "s1", "from": CUSTOMER, "text": "first"},
            {"id": "s2", "from": CUSTOMER, "text": "broken \ud800 half", "name": "X\udc00"},
            {"id": "s3", "from": CUSTOMER, "text": "third"},
        ]
    }
    body, _ = signed(TOKEN, payload)
    assert b"\\ud800" in body
    status, text = await world.inbound(body)
    assert status == 200, text
    assert sorted(await world.texts(3)) == ["broken \ufffd half", "first", "third"]


def test_scrub_replaces_lone_surrogates_everywhere_and_keeps_the_rest() -> None:
    value = {"k\ud800": ("a", ["b\udfff", 1]), "ok": "😀"}
    assert sanitize.scrub(value) == {"k\ufffd": ("a", ["b\ufffd", 1]), "ok": "😀"}
    same = {"a": ("b", ["c"])}
    assert sanitize.scrub(same) is same


def _hostile_value(rng: random.Random, depth: int = 0) -> Any:
    strings = ["", "ok", "caf\u00e9 \U0001f600", "x\ud800", "\udfff", "a\udbff\udc00b"]
    kind = rng.randrange(9 if depth < 3 else 4)
    if kind == 0:
        return rng.choice(strings)
    if kind == 1:
        return rng.choice([None, 7, 2**70, 1.5, b"\xff\x00"])
    if kind == 2:
        return object() if rng.random() < 0.2 else {"set", rng.choice(strings)}
    if kind == 3:
        return rng.choice(strings) + rng.choice(strings)
    if kind in (4, 5):
        items = [_hostile_value(rng, depth + 1) for _ in range(rng.randrange(4))]
        return tuple(items) if kind == 4 else items
    if kind == 6:
        return {rng.choice(strings): _hostile_value(rng, depth + 1) for _ in range(3)}
    name = rng.choice([None, *strings])
    contact = Contact(address=rng.choice(strings), name=name)
    caption = rng.choice([None, *strings])
    attachments = (Attachment(file_name=rng.choice(strings), caption=caption),)
    return InboundMessage(
        provider_message_id=rng.choice(strings),
        contact=contact,
        text=rng.choice([None, *strings]),
        attachments=attachments if rng.random() < 0.5 else (),
    )


def test_scrub_answers_what_walking_the_value_answers() -> None:
    # Whatever is in the value (Structs, nesting, what does not encode): every lone surrogate
    # replaced, and the very same object when there is none.
    rng = random.Random(11)
    for _ in range(3000):
        value = _hostile_value(rng)
        walked = sanitize._scrub(value)
        scrubbed = sanitize.scrub(value)
        assert (scrubbed is value) is (walked is value), value
        assert repr(scrubbed) == repr(walked)


async def test_unblu_call_with_a_lone_surrogate_is_read(world: World) -> None:
    body = json.dumps({"$_type": "PingRequest", "pingId": "p\ud800"}).encode()
    headers = {
        **signing.sign_headers(SECRET, body),
        calls.SERVICE_HEADER: calls.PING,
        "content-type": "application/json",
    }
    status, text = await world.post("/unblu/loop", body, headers)
    assert status == 200, text
    assert json.loads(text)["pingId"] == "p\ufffd"


# --- lengths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"id": "m" * 1001, "from": CUSTOMER}, "provider_message_id"),
        ({"id": "long-from", "from": "+" + "1" * 600}, "contact.address"),
    ],
)
async def test_an_absurd_id_or_address_refuses_the_request_and_stores_nothing(
    world: World, message: dict[str, str], field: str
) -> None:
    good = {"id": "good-1", "from": CUSTOMER, "text": "hello"}
    body, _ = signed(TOKEN, {"messages": [good, {**message, "text": "x"}]})
    status, text = await world.inbound(body)
    assert status == 400
    assert field in json.loads(text)["error"]
    # Nothing of the refused request was stored: the good message alone is new, not a duplicate.
    before = await world.accepted()
    body, _ = signed(TOKEN, {"messages": [good]})
    assert (await world.inbound(body))[0] == 200
    assert await world.accepted() == before + 1
    assert await world.texts(1) == ["hello"]


async def test_an_absurd_unblu_message_id_is_a_400_naming_it(world: World) -> None:
    body = json.dumps(
        {
            "$_type": "ExternalMessengerNewMessageRequest",
            "conversationMessage": {
                "$_type": "TextMessageData",
                "id": "u" * 5000,
                "conversationId": "c1",
                "type": "TEXT",
                "text": "hi",
                "senderPerson": {"id": "a1", "personType": "AGENT"},
            },
        }
    ).encode()
    headers = {**signing.sign_headers(SECRET, body), calls.SERVICE_HEADER: calls.NEW_MESSAGE}
    status, text = await world.post("/unblu/loop", body, headers)
    assert status == 400
    assert "conversationMessage.id" in json.loads(text)["error"]


def test_fit_counts_utf16_units_and_never_splits_a_pair() -> None:
    assert wire.fit("short", 250) == "short"
    cut = wire.fit("😀" * 200, 250)
    assert cut is not None
    assert wire.text_length(cut) <= 250
    assert cut == "😀" * 124 + "…"


# --- signatures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"\xff\xfe\x80", b"caf\xe9", "café".encode(), b"sha1=\xc3\x28"],
    ids=["not-utf8", "latin-1", "utf-8", "broken-utf8"],
)
@pytest.mark.parametrize("header", [signing.SIGNATURE_HEADER, signing.SIGNATURE_256_HEADER])
async def test_unblu_signature_with_raw_bytes_is_a_403(
    world: World, header: str, value: bytes
) -> None:
    body = b'{"$_type": "PingRequest", "pingId": "p"}'
    response = await raw_request(
        world.base,
        "POST",
        "/unblu/loop",
        [(header, value), (calls.SERVICE_HEADER, calls.PING), ("Content-Type", "application/json")],
        body,
    )
    assert response.status == 403, response.body


@pytest.mark.parametrize(
    "query",
    [
        "signature=%C3%A9&expires=9999999999",
        "signature=%FF%FE&expires=9999999999",
        "signature=abc&expires=%E2%88%9E",
    ],
)
async def test_a_malformed_media_signature_is_not_found(world: World, query: str) -> None:
    response = await raw_request(world.base, "GET", "/media/loop/0123456789abcdef?" + query)
    assert response.status in (403, 404), response.body
    # Raw non-ASCII bytes in the request line: aiohttp's parser refuses them itself.
    raw = b"/media/loop/0123456789abcdef?signature=\xff\xfe&expires=9999999999"
    assert (await raw_request(world.base, "GET", raw)).status == 400


def test_a_huge_contact_name_is_cut_before_it_is_stored() -> None:
    from extmsg.flows import accept
    from extmsg.flows import payloads as p
    from extmsg.models import Contact, InboundMessage

    event = InboundMessage(
        provider_message_id="n1", contact=Contact(address=CUSTOMER, name="N" * 100_000)
    )
    intake = accept._intake("loop", event)
    assert intake.job is not None
    job = p.decode(intake.job.payload)
    assert isinstance(job, p.ToUnbluJob)
    assert job.message.contact.name == "N" * (sanitize.MAX_NAME - 1) + "…"


async def test_the_sandbox_counts_name_limits_as_unblu_does(world: World) -> None:
    # 200 emoji are 200 characters to Python and 400 to Unblu (Java counts UTF-16 units).
    url = f"{world.sandbox.base_url}/v4/persons/createOrUpdateVirtual"
    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}
    for field in ("nickname", "firstName", "lastName", "username"):
        body = {"$_type": "PersonData", "personSource": "VIRTUAL", "sourceId": f"s-{field}"}
        async with world.session.post(url, json={**body, field: "😀" * 200}, headers=auth) as resp:
            assert resp.status == 400, field
            assert "at most 250" in await resp.text()
        async with world.session.post(url, json={**body, field: "😀" * 125}, headers=auth) as resp:
            assert resp.status == 200, field
