"""Hostile input on the core's own routes: Unblu's calls (``POST /unblu/{channel}``, v4
outbound requests and v3 webhook events) and published media links (``GET /media/…``).

Bodies Unblu really sends (validated against the vendor spec in ``test_unblu_calls``) mutated
by Hypothesis and signed with the channel's webhook secret, so the decoder is what gets tested;
unsigned junk; and media links with hostile parts. One long-lived server with the loopback
messenger and the Unblu sandbox. ``EXTMSG_FUZZ=long`` runs the long profile (see
:mod:`extmsg.testing.fuzz`).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from extmsg.plugins import build_hooks
from extmsg.runtime import Runtime
from extmsg.store.base import MediaRow
from extmsg.testing.fuzz import FuzzHost, FuzzServer, FuzzSetup, fuzz_settings
from extmsg.testing.hostile import (
    CLASSICS,
    classic_variants,
    encode_json,
    hostile_header_value,
    hostile_text,
    junk_body,
    mutated_json,
    query_value,
)
from extmsg.unblu import signing

from . import loopback_plugin
from .loopback_fake import LoopbackProvider
from .test_unblu_calls import CASES

SECRET = "whsec-123"
CALLS: list[tuple[dict[str, str], Any]] = [(headers, body) for _, _, headers, body, _ in CASES]
SERVICES = sorted({h["x-unblu-service-name"] for h, _ in CALLS if "x-unblu-service-name" in h})
MEDIA_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
MEDIA_DATA = b"\x89PNG\r\n\x1a\n fuzz"


async def _publish(runtime: Runtime) -> None:
    row = MediaRow(
        id=MEDIA_ID,
        channel="loop",
        file_name="cat.png",
        mime_type="image/png",
        data=MEDIA_DATA,
        expires_at=time.time() + 3600,
    )
    await runtime.store.put_media(row)


def fuzz_setup(host: FuzzHost, unblu: str) -> FuzzSetup:
    """The server under test (built in its own process, see :class:`FuzzServer`)."""
    provider = host.serve_aux(LoopbackProvider().app)
    config = {
        "store": {"path": str(host.folder / "store.sqlite3")},
        "unblu": {"base_url": unblu, "api_version": "v4", "username": "admin", "password": "admin"},
        "engine": {"backoff_initial": 0.05, "backoff_max": 0.5, "max_attempts": 3},
        "channels": [
            {
                "name": "loop",
                "messenger": "loopback",
                "webhook_secret": SECRET,
                "settings": {"token": "tok", "api_url": provider},
            }
        ],
    }
    hooks = build_hooks(entry_points=False, extra=[loopback_plugin], disabled=())
    return FuzzSetup(config=config, hooks=hooks, after_start=_publish)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    with FuzzServer(f"{__name__}:fuzz_setup", tmp_path_factory.mktemp("core-fuzz")) as fuzz:
        yield fuzz


# -- Unblu's calls -----------------------------------------------------------------------------


def _signed(body: bytes, which: str) -> list[tuple[bytes, bytes]]:
    both = signing.sign_headers(SECRET, body)
    names = [signing.SIGNATURE_HEADER, signing.SIGNATURE_256_HEADER] if which == "both" else [which]
    return [(name.encode(), both[name].encode()) for name in names]


@fuzz_settings(examples=60)
@given(data=st.data())
def test_signed_unblu_calls(server: FuzzServer, data: st.DataObject) -> None:
    headers, seed = data.draw(st.sampled_from(CALLS), label="call")
    doc = data.draw(mutated_json([seed]), label="body")
    body = encode_json(doc, ascii_only=data.draw(st.booleans(), label="ascii_only"))
    sent = [(k.encode(), v.encode()) for k, v in headers.items()]
    service = data.draw(
        st.one_of(
            st.none(),
            st.sampled_from(SERVICES),
            hostile_text(max_size=2000).map(lambda t: t.encode("utf-8", "surrogatepass")),
        ),
        label="service",
    )
    if service is not None:
        sent = [
            (b"x-unblu-service-name", service.encode() if isinstance(service, str) else service)
        ]
        sent = [(k, v.replace(b"\r", b"").replace(b"\n", b"")) for k, v in sent]
    which = data.draw(
        st.sampled_from(["both", signing.SIGNATURE_HEADER, signing.SIGNATURE_256_HEADER]),
        label="signature",
    )
    sent += [(b"Content-Type", b"application/json"), *_signed(body, which)]
    server.http("unblu", "POST", "/unblu/loop", sent, body)


@fuzz_settings(examples=40)
@given(
    body=junk_body(),
    sha1=st.one_of(st.none(), hostile_header_value()),
    sha256=st.one_of(st.none(), hostile_header_value()),
    service=st.one_of(st.none(), st.sampled_from(SERVICES).map(str.encode)),
    channel=st.one_of(st.just("loop"), query_value()),
)
def test_unsigned_junk_to_unblu_endpoint(
    server: FuzzServer,
    body: bytes,
    sha1: bytes | None,
    sha256: bytes | None,
    service: bytes | None,
    channel: str,
) -> None:
    headers = [(b"Content-Type", b"application/json")]
    for name, value in (
        (signing.SIGNATURE_HEADER, sha1),
        (signing.SIGNATURE_256_HEADER, sha256),
        ("x-unblu-service-name", service),
    ):
        if value is not None:
            headers.append((name.encode(), value))
    reply = server.http("unblu-junk", "POST", f"/unblu/{channel}", headers, body)
    assert reply.code in (400, 403, 404, 413, 431), reply


_V4_TEXT = CALLS[1]
_V3_TEXT = next(
    call for call in CALLS if call[1].get("eventType") == "external_messenger.new_message"
)
_MESSAGE_ID = ("conversationMessage", "id")
CLASSIC_CALLS = [
    pytest.param(headers, doc, id=f"{version}-{'.'.join(map(str, path))}-{name}")
    for version, (headers, seed) in (("v4", _V4_TEXT), ("v3", _V3_TEXT))
    for path in (
        ("conversationMessage", "text"),
        ("conversationMessage", "conversationId"),
        ("conversationMessage", "senderPerson", "displayName"),
        *((("receivingContacts", 0, "sourceId"),) if version == "v4" else ()),
    )
    for name, doc in zip(
        [*CLASSICS, "unknown_field", "missing"],
        classic_variants(seed, path, id_path=_MESSAGE_ID),
        strict=True,
    )
]


@pytest.mark.parametrize(("headers", "doc"), CLASSIC_CALLS)
def test_classic_hostile_values_in_agent_messages(
    server: FuzzServer, headers: dict[str, str], doc: Any
) -> None:
    """Every classic hostile value in an agent message's text, conversation, sender and
    recipient, signed: in every run, however few examples the fuzzer draws."""
    body = encode_json(doc)
    sent = [(k.encode(), v.encode()) for k, v in headers.items()]
    sent += [(b"Content-Type", b"application/json"), *_signed(body, "both")]
    server.http("unblu", "POST", "/unblu/loop", sent, body)


def test_clean_unblu_calls_pass(server: FuzzServer) -> None:
    """The harness signs correctly: every recorded call is answered 200."""
    for headers, seed in CALLS:
        body = encode_json(seed)
        sent = [(k.encode(), v.encode()) for k, v in headers.items()]
        reply = server.http("unblu", "POST", "/unblu/loop", sent + _signed(body, "both"), body)
        assert reply.code == 200, (headers, reply)


# -- media links -------------------------------------------------------------------------------


def _media_signature(channel: str, media_id: str, expires: str) -> str:
    message = f"{channel}/{media_id}/{expires}".encode("utf-8", "surrogatepass")
    return hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()


def _segment(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


@fuzz_settings(examples=60)
@example(broken={"signature"}, channel="", media_id="", expires="", signature="%C3%A9")
@example(broken={"id"}, channel="", media_id="\ud800", expires="", signature="")
@given(
    broken=st.sets(st.sampled_from(["channel", "id", "expires", "signature"]), max_size=2),
    channel=hostile_text(max_size=3000),
    media_id=hostile_text(max_size=3000),
    expires=st.one_of(st.integers().map(str), query_value()),
    signature=st.one_of(query_value(), hostile_header_value(max_size=2000)),
)
def test_media_links(
    server: FuzzServer,
    broken: set[str],
    channel: str,
    media_id: str,
    expires: str,
    signature: str | bytes,
) -> None:
    """A link with some of its parts (or none) replaced by hostile ones."""
    channel = channel if "channel" in broken else "loop"
    media_id = media_id if "id" in broken else MEDIA_ID
    expires = expires if "expires" in broken else str(int(time.time()) + 600)
    if "signature" not in broken:
        signature = _media_signature(channel, media_id, expires)
    if isinstance(signature, bytes):  # sent as is, not percent-encoded
        raw_signature = signature.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"")
        raw_signature = raw_signature.replace(b"#", b"").replace(b"\x00", b"")
    else:
        raw_signature = signature.encode("utf-8", "surrogatepass")
    target = (
        f"/media/{_segment(channel)}/{_segment(media_id)}?expires={expires}&signature=".encode()
        + raw_signature
    )
    reply = server.http("media", "GET", target)
    assert reply.code in (200, 400, 404, 414), reply
    if reply.code == 200:
        assert reply.body == MEDIA_DATA
    if not broken:
        assert reply.code == 200, reply


def test_a_valid_media_link_serves_the_file(server: FuzzServer) -> None:
    expires = str(int(time.time()) + 600)
    query = f"expires={expires}&signature={_media_signature('loop', MEDIA_ID, expires)}"
    reply = server.http("media", "GET", f"/media/loop/{MEDIA_ID}?{query}")
    assert (reply.code, reply.body) == (200, MEDIA_DATA)
