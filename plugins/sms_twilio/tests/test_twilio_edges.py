"""Hostile and odd input on the Twilio routes, over real HTTP against the core's app: a clear
4xx, never a 5xx; the vendor's signing rules hold through the route; forwarded headers are
believed from trusted proxies only."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from twilio_testkit import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, load_cases, twilio_sign

from extmsg.plugins import build_hooks
from extmsg.testing.helpers import RunningExtmsg, raw_request, running_extmsg
from extmsg_sms_twilio import plugin
from extmsg_sms_twilio.fake import inbound_params

CUSTOMER = "+41791234567"
Serve = Callable[..., AbstractAsyncContextManager[RunningExtmsg]]


@pytest.fixture
def serve(tmp_path: Path, unblu_sandbox: Any) -> Serve:
    """``serve(**server)``: extmsg with one Twilio channel, ``[server]`` keys overridden."""

    def make(**server: Any) -> AbstractAsyncContextManager[RunningExtmsg]:
        hooks = build_hooks(entry_points=False, extra=[plugin], disabled=())
        raw = {
            "server": server,
            "store": {"path": str(tmp_path / "store.sqlite3")},
            "unblu": {
                "base_url": unblu_sandbox.base_url,
                "username": "admin",
                "password": "admin",
            },
            "channels": [
                {
                    "name": "sms",
                    "messenger": "sms_twilio",
                    "webhook_secret": "whsec-123",
                    "settings": {
                        "account_sid": ACCOUNT_SID,
                        "auth_token": AUTH_TOKEN,
                        "from_number": FROM_NUMBER,
                        "api_base_url": "http://127.0.0.1:9",
                    },
                }
            ],
        }
        return running_extmsg(raw, hooks)

    return make


@pytest.fixture
async def extmsg(serve: Serve) -> AsyncIterator[RunningExtmsg]:
    async with serve() as running:
        yield running


def _params(**extra: str) -> list[tuple[str, str]]:
    values = inbound_params(from_=CUSTOMER, to=FROM_NUMBER, body="hi", account_sid=ACCOUNT_SID)
    values.update(extra)
    return list(values.items())


async def _post(
    extmsg: RunningExtmsg,
    pairs: list[tuple[str, str]],
    *,
    signed_url: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    url = f"{extmsg.base}/channels/sms/inbound"
    sig = twilio_sign(signed_url or url, pairs, AUTH_TOKEN, "HMAC_SHA1")
    all_headers = {"X-Twilio-Signature": sig, **(headers or {})}
    async with extmsg.session.post(url, data=pairs, headers=all_headers) as resp:
        return resp.status, await resp.text()


async def test_json_body_nested_too_deep_is_a_400(extmsg: RunningExtmsg) -> None:
    body = b'{"MessageSid": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    path = f"/channels/sms/inbound?bodySHA256={hashlib.sha256(body).hexdigest()}"
    url = extmsg.base + path
    headers = {
        "X-Twilio-Signature": twilio_sign(url, [], AUTH_TOKEN, "HMAC_SHA1"),
        "Content-Type": "application/json",
    }
    async with extmsg.session.post(url, data=body, headers=headers) as resp:
        assert resp.status == 400
        assert "nested deeper than 64 levels" in await resp.text()


@pytest.mark.parametrize(
    "value",
    [b"\xff\xfe\x80\x81", b"caf\xe9=", "café=".encode(), b"\xed\xa0\x80"],
    ids=["not-utf8", "latin-1", "utf-8", "encoded-surrogate"],
)
async def test_signature_header_with_raw_bytes_is_a_403(
    extmsg: RunningExtmsg, value: bytes
) -> None:
    response = await raw_request(
        extmsg.base,
        "POST",
        "/channels/sms/inbound",
        [("X-Twilio-Signature", value), ("Content-Type", "application/x-www-form-urlencoded")],
        b"MessageSid=SM1&From=%2B41791234567&Body=hi",
    )
    assert response.status == 403, response.body


async def test_non_ascii_body_hash_is_a_403(extmsg: RunningExtmsg) -> None:
    url = extmsg.base + "/channels/sms/inbound?bodySHA256=%C3%A9"
    headers = {
        "X-Twilio-Signature": twilio_sign(url, [], AUTH_TOKEN, "HMAC_SHA1"),
        "Content-Type": "application/json",
    }
    async with extmsg.session.post(url, data=b"{}", headers=headers) as resp:
        assert resp.status == 403


async def test_repeated_keys_sign_exact_duplicates_once(extmsg: RunningExtmsg) -> None:
    """The vendor's vector for repeated keys holds for the signer used here, and a request so
    signed passes the route; one signed with every duplicate is not Twilio's and is refused."""
    [vector] = [c for c in load_cases("signature_vectors") if c["name"].startswith("repeated")]
    pairs = [(k, v) for k, v in vector["params"]]
    assert twilio_sign(vector["url"], pairs, "12345", "HMAC_SHA1") == vector["signature"]

    repeated = [*_params(), ("Digits", "5678"), ("Digits", "1234"), ("Digits", "1234")]
    assert (await _post(extmsg, repeated))[0] == 200

    url = f"{extmsg.base}/channels/sms/inbound"
    every_pair = url + "".join(k + v for k, v in sorted(repeated))
    mac = hmac.new(AUTH_TOKEN.encode(), every_pair.encode(), hashlib.sha1).digest()
    headers = {"X-Twilio-Signature": base64.b64encode(mac).decode()}
    async with extmsg.session.post(url, data=repeated, headers=headers) as resp:
        assert resp.status == 403


FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "sms.example.com"}
OUTSIDE = "https://sms.example.com/channels/sms/inbound"


async def test_forwarded_headers_from_a_trusted_proxy_rebuild_the_url(serve: Serve) -> None:
    async with serve(public_url=None, trusted_proxies=["10.0.0.0/8", "127.0.0.1"]) as extmsg:
        status, text = await _post(extmsg, _params(), signed_url=OUTSIDE, headers=FORWARDED)
        assert status == 200, text


@pytest.mark.parametrize("trusted", [[], ["10.0.0.0/8"]], ids=["none", "other-network"])
async def test_forwarded_headers_from_anyone_else_are_ignored(
    serve: Serve, trusted: list[str]
) -> None:
    async with serve(public_url=None, trusted_proxies=trusted) as extmsg:
        # A client naming the URL its signature is checked against is refused ...
        status, text = await _post(extmsg, _params(), signed_url=OUTSIDE, headers=FORWARDED)
        assert status == 403, text
        assert "signature" in json.loads(text)["error"]
        # ... and its forwarded headers do not change the URL that is checked.
        assert (await _post(extmsg, _params(), headers=FORWARDED))[0] == 200
