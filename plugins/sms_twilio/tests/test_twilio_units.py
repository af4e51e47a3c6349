"""Signature vectors, segment counting, rendering and contact validation."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twilio_testkit import case_params, make_channel, text_of, twilio_sign

from extmsg.errors import PermanentError, SignatureError
from extmsg.models import Attachment, Contact, InboundRequest, OutboundMessage
from extmsg.plugins import Hooks
from extmsg_sms_twilio.outbound import form_encode
from extmsg_sms_twilio.segments import count_segments
from extmsg_sms_twilio.signature import body_sha256, compute_signature, url_variants

FORM = "application/x-www-form-urlencoded"


@case_params("signature_vectors")
def test_signature_known_answers(case: dict[str, Any]) -> None:
    """Twilio's own validator test vectors, and the independent helper the cases use."""
    params = [(k, v) for k, v in case["params"]]
    if case["computed"]:
        assert compute_signature(case["url"], params, "12345") == case["signature"]
        assert twilio_sign(case["url"], params, "12345", "HMAC_SHA1") == case["signature"]
    if "body" in case:
        assert body_sha256(case["body"].encode()) == case["body_sha256"]


@case_params("signature_vectors")
async def test_signature_vectors_verify(hooks: Hooks, case: dict[str, Any]) -> None:
    """Every vector passes the check the route runs: the request Twilio made to ``url``."""
    channel = make_channel({"auth_token": "12345"})
    json_body = "body" in case
    body = case["body"] if json_body else urlencode([(k, v) for k, v in case["params"]])
    request = InboundRequest(
        method="POST",
        url=case["url"],
        path="/myapp.php",
        route="inbound",
        query=tuple(parse_qsl(urlsplit(case["url"]).query)),
        headers={
            "x-twilio-signature": case["signature"],
            "content-type": "application/json" if json_body else FORM,
        },
        body=body.encode(),
    )
    assert await hooks.verify_inbound(channel.messenger, request, [channel])
    tampered = msgspec.structs.replace(request, headers={"x-twilio-signature": "AAAA"})
    with pytest.raises(SignatureError):
        await hooks.verify_inbound(channel.messenger, tampered, [channel])


_FORM_CASES = [
    "",
    "+15551234567",
    "Hello there, how are you? 100% sure & done = yes.",
    "http://127.0.0.1:8080/channels/sms/status?ref=01HX%2F~_-.*'()!$,;:@",
    "Grüße aus Zürich 😀 — 𝄞 bis bald!\r\n\t\x00\x7f",
    "".join(chr(i) for i in range(256)),
]


@pytest.mark.parametrize("text", _FORM_CASES)
def test_form_encode_is_urlencode(text: str) -> None:
    pairs = [("Body", text), (text, "To"), ("To", "+1 555")]
    assert form_encode(pairs) == urlencode(pairs).encode()


def test_form_encode_refuses_a_lone_surrogate_as_urlencode_does() -> None:
    pairs = [("Body", "ok \ud83d then")]
    with pytest.raises(UnicodeEncodeError) as expected:
        urlencode(pairs)
    with pytest.raises(UnicodeEncodeError) as got:
        form_encode(pairs)
    assert str(got.value) == str(expected.value)


@given(st.lists(st.tuples(st.text(), st.text()), max_size=4))
def test_form_encode_is_urlencode_for_any_text(pairs: list[tuple[str, str]]) -> None:
    try:
        expected: bytes | str = urlencode(pairs).encode()
    except UnicodeEncodeError as exc:
        expected = str(exc)
    try:
        got: bytes | str = form_encode(pairs)
    except UnicodeEncodeError as exc:
        got = str(exc)
    assert got == expected


def test_url_variants() -> None:
    assert url_variants("https://h.example/p?q=1") == [
        "https://h.example/p?q=1",
        "https://h.example:443/p?q=1",
    ]
    assert url_variants("http://h.example:80/p") == ["http://h.example:80/p", "http://h.example/p"]
    assert url_variants("http://[::1]:8080/p") == ["http://[::1]:8080/p", "http://[::1]/p"]


@pytest.mark.parametrize(
    ("received", "signed"),
    [
        ("https://h.example/in", "https://h.example/in"),
        ("https://h.example/in", "https://h.example:443/in"),
        ("https://h.example:443/in", "https://h.example/in"),
    ],
)
async def test_a_signature_over_any_spelling_of_the_url_verifies(
    hooks: Hooks, received: str, signed: str
) -> None:
    """Twilio signs the URL with or without the default port: both are accepted."""
    channel = make_channel({"auth_token": "12345"})
    params = [("From", "+41791234567"), ("Body", "hi")]
    request = InboundRequest(
        method="POST",
        url=received,
        path="/in",
        route="inbound",
        headers={
            "x-twilio-signature": compute_signature(signed, params, "12345"),
            "content-type": FORM,
        },
        body=urlencode(params).encode(),
    )
    assert await hooks.verify_inbound(channel.messenger, request, [channel])
    other = compute_signature("https://other.example/in", params, "12345")
    forged = msgspec.structs.replace(
        request, headers={**request.headers, "x-twilio-signature": other}
    )
    with pytest.raises(SignatureError):
        await hooks.verify_inbound(channel.messenger, forged, [channel])


@case_params("segments")
def test_segments(case: dict[str, Any]) -> None:
    info = count_segments(text_of(case["text"]))
    assert (info.encoding, info.units, info.segments) == (
        case["encoding"],
        case["units"],
        case["segments"],
    )


def _outbound(case: dict[str, Any]) -> OutboundMessage:
    attachment = case.get("attachment")
    return OutboundMessage(
        id="msg-01HZX3",
        unblu_message_id="u-1",
        conversation_id="c-1",
        contact=Contact(address="+14155550123"),
        text=text_of(case["text"]) or None,
        attachment=msgspec.convert(attachment, Attachment) if attachment else None,
        sender_name=case.get("sender_name"),
    )


@case_params("render")
async def test_render_outbound(hooks: Hooks, case: dict[str, Any]) -> None:
    channel = make_channel(case.get("settings"), **case.get("channel", {}))
    message = _outbound(case)
    expect = case["expect"]
    if "error" in expect:
        with pytest.raises(PermanentError, match=expect["error"]):
            await hooks.render_outbound(channel, message)
        return
    parts = await hooks.render_outbound(channel, message)
    assert [p.part for p in parts] == list(range(len(parts)))
    assert all(p.id == message.id for p in parts)
    if "parts" in expect:
        assert len(parts) == len(expect["parts"])
        for got, want in zip(parts, expect["parts"], strict=True):
            assert got.text == want["text"]
            if "encoding" in want:
                info = count_segments(got.text or "")
                assert (info.encoding, info.segments) == (want["encoding"], want["segments"])
            if "caption" in want:
                assert got.attachment is not None
                assert got.attachment.caption == want["caption"]
        return
    assert len(parts) == expect["count"]
    texts = [p.text or "" for p in parts]
    assert all(len(t.encode("utf-16-le")) // 2 <= 1600 for t in texts)
    if "segments" in expect:
        assert [count_segments(t).segments for t in texts] == expect["segments"]
    original = channel.sender_prefix.replace("{sender}", message.sender_name or "Agent") + (
        message.text or ""
    )
    assert " ".join(texts).split() == original.split()  # cut on words, nothing lost
    if "attachment_on" in expect:
        assert [i for i, p in enumerate(parts) if p.attachment] == expect["attachment_on"]


@case_params("contacts", key="identifier")
async def test_validate_contact(hooks: Hooks, case: dict[str, Any]) -> None:
    channel = make_channel({"default_region": case.get("default_region")})
    check = await hooks.validate_contact(channel, case["identifier"])
    expect = case["expect"]
    assert check.valid is expect["valid"]
    if check.valid:
        assert check.address == expect["address"]
    else:
        assert expect["error"] in (check.error or "")
