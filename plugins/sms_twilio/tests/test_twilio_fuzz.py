"""Hostile input on Twilio's routes: never a 5xx, never a stall, nothing stored when refused.

Recorded webhooks (testdata) mutated by Hypothesis and then signed correctly, so the parser is
what gets tested, and unsigned junk, against one long-lived server with this plugin and the
Unblu sandbox. ``EXTMSG_FUZZ=long`` runs the long profile (see :mod:`extmsg.testing.fuzz`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from twilio_testkit import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, load_cases, twilio_sign

from extmsg.plugins import build_hooks
from extmsg.testing.fuzz import FuzzHost, FuzzServer, FuzzSetup, fuzz_settings
from extmsg.testing.hostile import (
    classic_form_variants,
    classic_variants,
    encode_form,
    encode_json,
    hostile_header_value,
    hostile_headers,
    junk_body,
    mutated_form,
    mutated_json,
    query_value,
)
from extmsg_sms_twilio import plugin
from extmsg_sms_twilio.fake import create_twilio_fake

FORM = b"application/x-www-form-urlencoded"


def _forms(name: str) -> list[list[tuple[str, str]]]:
    return [
        [(k, v) for k, v in case["request"]["form"]]
        for case in load_cases(name)
        if "form" in case["request"]
    ]


INBOUND_FORMS = _forms("inbound")
STATUS_FORMS = _forms("status")
JSON_SEEDS: list[Any] = [dict(form) for form in INBOUND_FORMS + STATUS_FORMS]
ROUTES = {"inbound": "/channels/sms/inbound", "status": "/channels/sms/status"}
#: Every classic hostile value in a message's text, sender, id and a status's id.
CLASSIC_FORMS = [
    ("inbound", form)
    for field in ("Body", "From", "MessageSid", "ProfileName")
    for form in classic_form_variants(INBOUND_FORMS[0], field, id_field="MessageSid")
] + [
    ("status", form)
    for field in ("MessageSid", "ErrorMessage")
    for form in classic_form_variants(STATUS_FORMS[0], field)
]
CLASSIC_JSON = [
    doc
    for field in ("Body", "From")
    for doc in classic_variants(JSON_SEEDS[0], (field,), id_path=("MessageSid",))
]


def _with_classic_forms(test: Any) -> Any:
    for route, form in CLASSIC_FORMS:
        test = example(route=route, form=form, extra=[])(test)
    return test


def _with_classic_json(test: Any) -> Any:
    for doc in CLASSIC_JSON:
        test = example(doc=doc, ascii_only=True)(test)
    return test


def fuzz_setup(host: FuzzHost, unblu: str) -> FuzzSetup:
    """The server under test (built in its own process, see :class:`FuzzServer`)."""
    fake = create_twilio_fake(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, callback_delay=0)
    config = {
        "store": {"path": str(host.folder / "store.sqlite3")},
        "unblu": {"base_url": unblu, "api_version": "v4", "username": "admin", "password": "admin"},
        "engine": {"backoff_initial": 0.05, "backoff_max": 0.5, "max_attempts": 3},
        "channels": [
            {
                "name": "sms",
                "messenger": "sms_twilio",
                "webhook_secret": "whsec-123",
                "settings": {
                    "account_sid": ACCOUNT_SID,
                    "auth_token": AUTH_TOKEN,
                    "from_number": FROM_NUMBER,
                    "api_base_url": host.serve_aux(fake),
                },
            }
        ],
    }
    return FuzzSetup(
        config=config, hooks=build_hooks(entry_points=False, extra=[plugin], disabled=())
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    with FuzzServer(f"{__name__}:fuzz_setup", tmp_path_factory.mktemp("twilio-fuzz")) as fuzz:
        yield fuzz


def _signed_form(server: FuzzServer, path: str, body: bytes) -> bytes:
    """``X-Twilio-Signature`` over the parameters as the server decodes the body."""
    params = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return twilio_sign(server.base + path, params, AUTH_TOKEN, "HMAC_SHA1").encode()


@fuzz_settings(examples=60)
@given(
    route=st.sampled_from(sorted(ROUTES)),
    form=st.one_of(mutated_form(INBOUND_FORMS), mutated_form(STATUS_FORMS)),
    extra=hostile_headers(["user-agent", "i-twilio-idempotency-token"], max_count=1, max_size=2000),
)
@_with_classic_forms
def test_signed_form_webhooks(
    server: FuzzServer,
    route: str,
    form: list[tuple[str, str | bytes]],
    extra: list[tuple[bytes, bytes]],
) -> None:
    path = ROUTES[route] + ("?ref=msg-01HZX3" if route == "status" else "")
    body = encode_form(form)
    headers = [(b"Content-Type", FORM), (b"X-Twilio-Signature", _signed_form(server, path, body))]
    server.http(route, "POST", path, headers + extra, body)


@fuzz_settings(examples=30)
@given(doc=mutated_json(JSON_SEEDS), ascii_only=st.booleans())
@_with_classic_json
def test_signed_json_webhooks(server: FuzzServer, doc: Any, ascii_only: bool) -> None:
    body = encode_json(doc, ascii_only=ascii_only)
    path = f"/channels/sms/inbound?bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = twilio_sign(server.base + path, [], AUTH_TOKEN, "HMAC_SHA1").encode()
    headers = [(b"Content-Type", b"application/json"), (b"X-Twilio-Signature", signature)]
    server.http("inbound-json", "POST", path, headers, body)


@pytest.mark.parametrize("route", sorted(ROUTES))
@fuzz_settings(examples=30)
@given(
    body=junk_body(),
    signature=st.one_of(st.none(), hostile_header_value()),
    settings_header=st.one_of(st.none(), hostile_header_value(max_size=300)),
    content_type=st.sampled_from([FORM, b"application/json", b"text/plain", b"\xff"]),
    query=st.one_of(st.none(), query_value()),
)
def test_unsigned_junk(
    server: FuzzServer,
    route: str,
    body: bytes,
    signature: bytes | None,
    settings_header: bytes | None,
    content_type: bytes,
    query: str | None,
) -> None:
    headers = [(b"Content-Type", content_type)]
    if signature is not None:
        headers.append((b"X-Twilio-Signature", signature))
    if settings_header is not None:
        headers.append((b"X-Twilio-Webhooks-Signature-Settings", settings_header))
    path = ROUTES[route] + (f"?ref={query}&bodySHA256={query}" if query is not None else "")
    reply = server.http(f"{route}-junk", "POST", path, headers, body)
    assert reply.code in (400, 403, 404, 405, 413, 431), reply


def test_a_clean_webhook_is_accepted(server: FuzzServer) -> None:
    """The harness signs correctly: a recorded webhook gets through to a 200."""
    body = encode_form(INBOUND_FORMS[0])
    path = ROUTES["inbound"]
    headers = [(b"Content-Type", FORM), (b"X-Twilio-Signature", _signed_form(server, path, body))]
    reply = server.http("inbound", "POST", path, headers, body)
    assert reply.code == 200, reply
    doc = json.dumps(dict(INBOUND_FORMS[1])).encode()
    path = f"/channels/sms/inbound?bodySHA256={hashlib.sha256(doc).hexdigest()}"
    signature = twilio_sign(server.base + path, [], AUTH_TOKEN, "HMAC_SHA1").encode()
    headers = [(b"Content-Type", b"application/json"), (b"X-Twilio-Signature", signature)]
    assert server.http("inbound-json", "POST", path, headers, doc).code == 200
