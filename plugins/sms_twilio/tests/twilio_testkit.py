"""Helpers for the Twilio plugin's tests: testdata, channels, signing, the core's inbound path.

A module of its own (not ``conftest``) so test modules can import it when several plugins'
tests run in one session."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import msgspec
import pytest

from extmsg import optout
from extmsg.errors import BadInbound, SignatureError
from extmsg.fetch import LOOPBACK
from extmsg.models import Channel, InboundRequest
from extmsg.plugins import Hooks
from extmsg_sms_twilio import plugin
from extmsg_sms_twilio.settings import TwilioSettings

TESTDATA = Path(__file__).parent / "testdata"
ACCOUNT_SID = "ACa2370418fe0c4d599b2f3fc4d23fccc5"
AUTH_TOKEN = "test-auth-token-9d1c0f6b2e8a4b7c"
FROM_NUMBER = "+15005550006"
PUBLIC_URL = "https://extmsg.example.com"
CHANNEL = "sms"


def load_cases(name: str) -> list[dict[str, Any]]:
    data = json.loads((TESTDATA / f"{name}.json").read_text(encoding="utf-8"))
    cases: list[dict[str, Any]] = data["cases"]
    return cases


def case_params(name: str, key: str = "name") -> pytest.MarkDecorator:
    """``pytest.mark.parametrize`` over a testdata file, each case named by ``key``."""
    cases = load_cases(name)
    return pytest.mark.parametrize(
        "case", cases, ids=[str(c.get(key) or c.get("identifier")) for c in cases]
    )


def text_of(parts: Iterable[Any]) -> str:
    """Testdata spells long texts as ``[[chunk, times], …]``."""
    if isinstance(parts, str):
        return parts
    return "".join(chunk * times for chunk, times in parts)


def make_channel(
    settings: dict[str, Any] | None = None,
    *,
    public_url: str = PUBLIC_URL,
    name: str = CHANNEL,
    **channel: Any,
) -> Channel:
    values: dict[str, Any] = {
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "from_number": FROM_NUMBER,
    }
    values.update(settings or {})
    values = {k: v for k, v in values.items() if v is not None}
    return Channel(
        name=name,
        messenger=plugin.NAME,
        settings=msgspec.convert(values, TwilioSettings),
        public_url=public_url,
        webhook_secret="unblu-secret",
        **{"fetch_allowed_networks": LOOPBACK, **channel},
    )


def twilio_sign(url: str, params: Iterable[tuple[str, str]], key: str, algorithm: str) -> str:
    """Twilio's signature, written out from its documentation (independent of the plugin)."""
    data = url
    # by name, then several values of a name by value; a repeated name=value pair counts once
    for name, value in sorted(set(params)):
        data += name + value
    digestmod = hashlib.sha1 if algorithm == "HMAC_SHA1" else hashlib.sha256
    mac = hmac.new(key.encode(), data.encode(), digestmod).digest()
    return base64.b64encode(mac).decode()


def build_request(case: dict[str, Any]) -> InboundRequest:
    """The ``InboundRequest`` the core would hand over for a testdata case, signed per its
    ``signature`` entry (computed here from the test secret)."""
    spec = case["request"]
    sig = case.get("signature", {"mode": "valid"})
    body_text: str | None = spec.get("body")
    form: list[tuple[str, str]] | None = None
    if "form" in spec:
        form = [(k, v) for k, v in spec["form"]]
        body_text = urlencode(form)
    raw = (body_text or "").encode("utf-8")
    url: str = spec["url"].replace("{body_sha256}", hashlib.sha256(raw).hexdigest())
    headers = {k.lower(): v for k, v in spec.get("headers", {}).items()}

    algorithm = sig.get("algorithm", "HMAC_SHA1")
    json_body = "bodySHA256=" in url
    if json_body or spec["method"] == "GET":
        signed: list[tuple[str, str]] = []
    else:
        signed = parse_qsl(raw.decode(), keep_blank_values=True)
    key = {"valid": sig.get("key", AUTH_TOKEN), "wrong_token": "another-token", "garbage": ""}
    mode = sig["mode"]
    if mode == "garbage":
        headers["x-twilio-signature"] = "bm90IGEgc2lnbmF0dXJl"
    elif mode != "missing":
        headers["x-twilio-signature"] = twilio_sign(
            sig.get("url", url), signed, key[mode], algorithm
        )
    if algorithm != "HMAC_SHA1" or "settings_header" in sig:
        headers["x-twilio-webhooks-signature-settings"] = sig.get(
            "settings_header", f"key=KS0123,algorithm={algorithm}"
        )

    if "tamper" in sig and form is not None:
        changed = dict(form)
        changed.update(sig["tamper"])
        raw = urlencode(list(changed.items())).encode()
    if "replace_body" in sig:
        raw = sig["replace_body"].encode("utf-8")
    query = tuple(parse_qsl(url.partition("?")[2], keep_blank_values=True))
    path = url.split("://", 1)[1].partition("/")[2].partition("?")[0]
    return InboundRequest(
        method=spec["method"],
        url=url,
        path="/" + path,
        route=spec["route"],
        query=query,
        headers=headers,
        body=raw,
    )


async def deliver(hooks: Hooks, channel: Channel, request: InboundRequest) -> dict[str, Any]:
    """What the core does with a provider request on an ``events`` route, as status + events
    (the channel's opt-out keywords applied, as the core's intake does)."""
    try:
        await hooks.verify_inbound(channel.messenger, request, [channel])
        events = await hooks.parse_inbound(channel.messenger, request, [channel])
    except SignatureError as exc:
        return {"status": 403, "error": str(exc)}
    except BadInbound as exc:
        return {"status": 400, "error": str(exc)}
    assert events is not None
    rules = optout.rules(channel, hooks.messenger_types().get(channel.messenger))
    events = optout.add_keyword_updates(rules, events)
    reply = await hooks.render_ack(channel.messenger, request, events)
    return {
        "status": reply.status,
        "events": msgspec.json.decode(msgspec.json.encode(events)),
        "reply": (reply.body, reply.content_type),
    }
