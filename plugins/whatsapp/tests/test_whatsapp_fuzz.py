"""Hostile input on the WhatsApp webhook: never a 5xx, never a stall, nothing stored when
refused.

Recorded notifications (testdata) mutated by Hypothesis and signed with the app secret, so the
parser is what gets tested; unsigned junk; and the GET verification with hostile query values.
One long-lived server with this plugin and the Unblu sandbox. ``EXTMSG_FUZZ=long`` runs the
long profile (see :mod:`extmsg.testing.fuzz`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from whatsapp_testkit import (
    ACCESS_TOKEN,
    APP_SECRET,
    MAIN_NUMBER_ID,
    OTHER_APP_SECRET,
    OTHER_NUMBER_ID,
    SUPPORT_NUMBER_ID,
    WEBHOOK_PATH,
    hub_signature,
    load_cases,
)

from extmsg.plugins import build_hooks
from extmsg.testing.fuzz import FuzzHost, FuzzServer, FuzzSetup, fuzz_settings
from extmsg.testing.hostile import (
    classic_variants,
    encode_json,
    hostile_header_value,
    hostile_headers,
    junk_body,
    mutated_json,
    query_value,
)
from extmsg_whatsapp import plugin
from extmsg_whatsapp.fake import create_graph_fake

SEEDS: list[Any] = [
    case["request"]["body"]
    for name in ("inbound_messages.json", "inbound_statuses.json", "inbound_batch.json")
    for case in load_cases(name)
    if isinstance(case["request"].get("body"), dict)
]
VERIFY_TOKEN = "main-verify-token"
_MESSAGE = ("entry", 0, "changes", 0, "value", "messages", 0)
CLASSIC_DOCS = [
    doc
    for field in (("text", "body"), ("from",))
    for doc in classic_variants(SEEDS[0], (*_MESSAGE, *field), id_path=(*_MESSAGE, "id"))
]


def _with_classics(test: Any) -> Any:
    """Every classic hostile value in a text message's body and sender, in every run."""
    for doc in CLASSIC_DOCS:
        test = example(doc=doc, ascii_only=True, secret=APP_SECRET, extra=[])(test)
    return test


def fuzz_setup(host: FuzzHost, unblu: str) -> FuzzSetup:
    """The server under test (built in its own process, see :class:`FuzzServer`)."""
    graph = host.serve_aux(create_graph_fake(access_token=ACCESS_TOKEN, app_secret=APP_SECRET))

    def channel(name: str, number: str, secret: str, token: str) -> dict[str, Any]:
        return {
            "name": name,
            "messenger": "whatsapp",
            "webhook_secret": f"whsec-{name}",
            "settings": {
                "phone_number_id": number,
                "access_token": ACCESS_TOKEN,
                "app_secret": secret,
                "verify_token": token,
                "api_base_url": graph,
            },
        }

    config = {
        "store": {"path": str(host.folder / "store.sqlite3")},
        "unblu": {"base_url": unblu, "api_version": "v4", "username": "admin", "password": "admin"},
        "engine": {"backoff_initial": 0.05, "backoff_max": 0.5, "max_attempts": 3},
        "channels": [
            channel("wa-main", MAIN_NUMBER_ID, APP_SECRET, VERIFY_TOKEN),
            channel("wa-support", SUPPORT_NUMBER_ID, APP_SECRET, VERIFY_TOKEN),
            channel("wa-other", OTHER_NUMBER_ID, OTHER_APP_SECRET, "other-verify-token"),
        ],
    }
    return FuzzSetup(
        config=config, hooks=build_hooks(entry_points=False, extra=[plugin], disabled=())
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    with FuzzServer(f"{__name__}:fuzz_setup", tmp_path_factory.mktemp("whatsapp-fuzz")) as fuzz:
        yield fuzz


@fuzz_settings(examples=40)
@given(
    doc=mutated_json(SEEDS),
    ascii_only=st.booleans(),
    secret=st.sampled_from([APP_SECRET, OTHER_APP_SECRET]),
    extra=hostile_headers(["user-agent", "content-type"], max_count=1, max_size=2000),
)
@_with_classics
def test_signed_notifications(
    server: FuzzServer, doc: Any, ascii_only: bool, secret: str, extra: list[tuple[bytes, bytes]]
) -> None:
    body = encode_json(doc, ascii_only=ascii_only)
    headers = [
        (b"Content-Type", b"application/json"),
        (b"X-Hub-Signature-256", hub_signature(body, secret).encode()),
    ]
    server.http("webhook", "POST", WEBHOOK_PATH, headers + extra, body)


@fuzz_settings(examples=30)
@given(
    body=junk_body(),
    signature=st.one_of(
        st.none(),
        hostile_header_value(),
        st.builds(lambda v: b"sha256=" + v, hostile_header_value(max_size=200)),
    ),
)
def test_unsigned_junk(server: FuzzServer, body: bytes, signature: bytes | None) -> None:
    headers = [(b"Content-Type", b"application/json")]
    if signature is not None:
        headers.append((b"X-Hub-Signature-256", signature))
    reply = server.http("webhook-junk", "POST", WEBHOOK_PATH, headers, body)
    assert reply.code in (400, 403, 413, 431), reply


@fuzz_settings(examples=40)
@given(
    mode=st.one_of(st.just("subscribe"), query_value()),
    token=st.one_of(st.just(VERIFY_TOKEN), query_value()),
    challenge=st.one_of(st.just("1158201444"), query_value()),
    order=st.permutations(["hub.mode", "hub.verify_token", "hub.challenge"]),
    repeat=st.booleans(),
)
def test_verification_handshake(
    server: FuzzServer, mode: str, token: str, challenge: str, order: list[str], repeat: bool
) -> None:
    values = {"hub.mode": mode, "hub.verify_token": token, "hub.challenge": challenge}
    query = "&".join(f"{name}={values[name]}" for name in order)
    if repeat:
        query += f"&{order[0]}={values[order[-1]]}"
    reply = server.http("verify", "GET", f"{WEBHOOK_PATH}?{query}")
    assert reply.code in (200, 400, 403, 414), reply


def test_a_clean_notification_and_handshake_pass(server: FuzzServer) -> None:
    """The harness signs correctly: a recorded notification gets a 200, the handshake too."""
    body = encode_json(SEEDS[0])
    headers = [
        (b"Content-Type", b"application/json"),
        (b"X-Hub-Signature-256", hub_signature(body, APP_SECRET).encode()),
    ]
    assert server.http("webhook", "POST", WEBHOOK_PATH, headers, body).code == 200
    query = f"hub.mode=subscribe&hub.challenge=42&hub.verify_token={VERIFY_TOKEN}"
    reply = server.http("verify", "GET", f"{WEBHOOK_PATH}?{query}")
    assert (reply.code, reply.body) == (200, b"42")
