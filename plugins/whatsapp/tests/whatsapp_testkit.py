"""Shared helpers of the WhatsApp plugin's tests: channels, signed requests, the core's flow."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from extmsg.errors import BadInbound, SignatureError
from extmsg.models import Channel, InboundEvent, InboundRequest
from extmsg.plugins import Hooks
from extmsg_whatsapp.settings import WhatsAppSettings

TESTDATA = Path(__file__).parent / "testdata"

PUBLIC_URL = "https://extmsg.example.com"
WEBHOOK_PATH = "/messengers/whatsapp/webhook"
WEBHOOK_URL = PUBLIC_URL + WEBHOOK_PATH

APP_SECRET = "test-app-secret"
OTHER_APP_SECRET = "other-app-secret"
ACCESS_TOKEN = "test-access-token"

MAIN_NUMBER_ID = "106540352242922"
SUPPORT_NUMBER_ID = "107655329012345"
OTHER_NUMBER_ID = "109876543210987"


def make_channel(
    name: str,
    phone_number_id: str,
    *,
    app_secret: str = APP_SECRET,
    verify_token: str = "test-verify-token",
    access_token: str = ACCESS_TOKEN,
    api_base_url: str = "https://graph.facebook.com",
    verify_signatures: bool = True,
    sender_prefix: str = "{sender}: ",
    fetch_allowed_networks: tuple[str, ...] = (),
    **settings: Any,
) -> Channel:
    return Channel(
        name=name,
        messenger="whatsapp",
        settings=WhatsAppSettings(
            phone_number_id=phone_number_id,
            access_token=access_token,
            app_secret=app_secret,
            verify_token=verify_token,
            api_base_url=api_base_url,
            **settings,
        ),
        public_url=PUBLIC_URL,
        webhook_secret="unblu-webhook-secret",
        sender_prefix=sender_prefix,
        fetch_allowed_networks=fetch_allowed_networks,
        verify_signatures=verify_signatures,
    )


def default_channels() -> list[Channel]:
    """Two numbers of one Meta app, and one number of another app sharing the route."""
    return [
        make_channel("wa-main", MAIN_NUMBER_ID, verify_token="main-verify-token"),
        make_channel("wa-support", SUPPORT_NUMBER_ID, verify_token="main-verify-token"),
        make_channel(
            "wa-other",
            OTHER_NUMBER_ID,
            app_secret=OTHER_APP_SECRET,
            verify_token="other-verify-token",
        ),
    ]


def load_cases(name: str) -> list[dict[str, Any]]:
    data = json.loads((TESTDATA / name).read_text(encoding="utf-8"))
    cases: list[dict[str, Any]] = data["cases"]
    return cases


def case_ids(cases: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(case["name"]) for case in cases]


def encode_body(body: Any) -> bytes:
    """A recorded body as Meta sends it: a raw string as is, JSON compact and ASCII-escaped."""
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def hub_signature(body: bytes, secret: str) -> str:
    """``X-Hub-Signature-256`` computed independently of the plugin."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


_SIGNERS = {"app": APP_SECRET, "other-app": OTHER_APP_SECRET, "wrong": "not-the-app-secret"}


def build_request(case: Mapping[str, Any]) -> InboundRequest:
    """An InboundRequest from a recorded case, signed as its ``signature`` says."""
    raw = case["request"]
    body = encode_body(raw.get("body", ""))
    headers = {k.lower(): v for k, v in raw.get("headers", {}).items()}
    how = case.get("signature", "app")
    if how in _SIGNERS:
        headers["x-hub-signature-256"] = hub_signature(body, _SIGNERS[how])
    elif how == "malformed":
        headers["x-hub-signature-256"] = "sha1=" + hashlib.sha1(body).hexdigest()  # noqa: S324
    elif how == "tampered":
        headers["x-hub-signature-256"] = hub_signature(body + b" ", APP_SECRET)
    elif how != "none":
        raise ValueError(f"unknown signature mode {how!r}")
    url = raw.get("url", WEBHOOK_URL)
    query = tuple((str(k), str(v)) for k, v in raw.get("query", {}).items())
    return InboundRequest(
        method=raw.get("method", "POST"),
        url=url,
        path=WEBHOOK_PATH,
        route=raw.get("route", "webhook"),
        query=query,
        headers=headers,
        body=body,
    )


async def run_inbound(
    hooks: Hooks, request: InboundRequest, channels: Sequence[Channel]
) -> tuple[int, list[InboundEvent]]:
    """What the core does with an ``events`` route: verify → parse → ack (403/400 on errors)."""
    try:
        verified = await hooks.verify_inbound("whatsapp", request, channels)
        if not verified:
            return 403, []
        events = await hooks.parse_inbound("whatsapp", request, channels)
    except SignatureError:
        return 403, []
    except BadInbound:
        return 400, []
    assert events is not None
    reply = await hooks.render_ack("whatsapp", request, events)
    return reply.status, events


def as_builtins(events: Sequence[InboundEvent]) -> list[Any]:
    """The events as the store holds them (JSON), to compare with recorded expectations."""
    return [msgspec.json.decode(msgspec.json.encode(event)) for event in events]
