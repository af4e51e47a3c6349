"""Outbound calls against the Graph API fake over real HTTP: send, upload, mark read, media."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from whatsapp_testkit import build_request, case_ids, default_channels, load_cases, run_inbound

from extmsg import errors
from extmsg.logsafe import mask_address
from extmsg.models import Attachment, Channel, OutboundMessage
from extmsg.plugins import Hooks
from extmsg_whatsapp import media, outbound
from extmsg_whatsapp.fake import GraphFake, create_graph_fake
from extmsg_whatsapp.settings import WhatsAppSettings

CASES = load_cases("send.json")
MakeChannel = Callable[..., Channel]
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def _message(**kw: Any) -> OutboundMessage:
    base: dict[str, Any] = {
        "id": "out-1",
        "unblu_message_id": "ub-1",
        "conversation_id": "conv-1",
        "contact": {"address": "16505551234"},
    }
    return msgspec.convert({**base, **kw}, OutboundMessage)


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
async def test_send(
    started: Hooks, fake: GraphFake, graph_channel: MakeChannel, case: dict[str, Any]
) -> None:
    channel = graph_channel(**case.get("channel", {}))
    message = msgspec.convert(case["message"], OutboundMessage)
    if "fail" in case:
        fake.fail(
            message.contact.address,
            case["fail"].get("code"),
            status=case["fail"].get("status", 400),
        )
    if "templates" in case:
        fake.templates = frozenset(case["templates"])
    expected = case["expect"]
    if "error" in expected:
        want = expected["error"]
        with pytest.raises(getattr(errors, want["type"])) as info:
            await started.send(channel, message)
        if "code" in want:
            assert info.value.code == want["code"]
        if "status" in want:
            assert info.value.status == want["status"]
        assert want["contains"] in info.value.message
        return
    result = await started.send(channel, message)
    assert result.provider_message_id.startswith("wamid.")
    assert fake.calls[-1]["phone_number_id"] == channel.settings.phone_number_id
    assert fake.sent == [expected["request"]]
    assert fake.calls[-1]["wamid"] == result.provider_message_id


async def test_throttled_send_succeeds_on_retry(
    started: Hooks, fake: GraphFake, graph_channel: MakeChannel
) -> None:
    fake.fail("16505551234", 130429, times=1)
    channel, message = graph_channel(), _message(text="Anna: Hello")
    with pytest.raises(errors.RetryableError):
        await started.send(channel, message)
    result = await started.send(channel, message)
    assert [c["status"] for c in fake.calls] == [400, 200]
    assert fake.calls[1]["wamid"] == result.provider_message_id


async def test_file_with_content_is_uploaded_then_sent_by_id(
    started: Hooks, fake: GraphFake, graph_channel: MakeChannel
) -> None:
    attachment = Attachment(
        file_name="label.png", mime_type="image/png", data=PNG, caption="Anna: your label"
    )
    result = await started.send(graph_channel(), _message(attachment=attachment))
    assert result.provider_message_id.startswith("wamid.")
    (stored,) = fake.media.values()
    assert (stored.data, stored.mime_type, stored.file_name) == (PNG, "image/png", "label.png")
    assert fake.sent[0]["type"] == "image"
    assert fake.sent[0]["image"] == {"id": stored.id, "caption": "Anna: your label"}


async def test_oversized_file_fails_before_upload(
    started: Hooks, fake: GraphFake, graph_channel: MakeChannel
) -> None:
    big = Attachment(file_name="huge.jpg", mime_type="image/jpeg", data=b"\xff" * (5 * 2**20 + 1))
    with pytest.raises(errors.PermanentError, match="too large for WhatsApp"):
        await started.send(graph_channel(), _message(attachment=big))
    assert fake.media == {}
    assert fake.calls == []


async def test_mark_read(started: Hooks, fake: GraphFake, graph_channel: MakeChannel) -> None:
    wamid = "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="
    assert await started.mark_read(graph_channel(), wamid) is True
    assert fake.calls[-1]["request"] == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": wamid,
    }
    assert fake.reads == [wamid]


async def test_mark_read_can_be_switched_off(
    started: Hooks, fake: GraphFake, graph_channel: MakeChannel
) -> None:
    assert await started.mark_read(graph_channel(send_read_receipts=False), "wamid.X") is False
    assert fake.calls == []


async def test_mark_read_of_an_invalid_id(
    started: Hooks, fake: GraphFake, graph_channel: MakeChannel
) -> None:
    with pytest.raises(errors.PermanentError) as info:
        await started.mark_read(graph_channel(), "not-a-wamid")
    assert info.value.code == "131009"


async def test_contact_file_is_fetched_in_two_steps(
    started: Hooks, fake: GraphFake, graph_channel: MakeChannel
) -> None:
    media_id = fake.add_media(PNG, "image/png")
    incoming = Attachment(file_name="image-1.png", url=f"whatsapp-media:{media_id}")
    fetched = await started.fetch_attachment(graph_channel(), incoming)
    assert fetched.data == PNG
    assert fetched.mime_type == "image/png"
    assert fetched.file_name == "image-1.png"


async def test_fetch_refuses_files_over_the_limit(
    started: Hooks, fake: GraphFake, graph_channel: MakeChannel
) -> None:
    media_id = fake.add_media(PNG, "image/png")
    incoming = Attachment(file_name="a.png", url=f"whatsapp-media:{media_id}")
    with pytest.raises(errors.PermanentError, match="too large to pass on"):
        await started.fetch_attachment(graph_channel(media_max_bytes=100), incoming)


async def test_fetch_of_an_expired_media_id(started: Hooks, graph_channel: MakeChannel) -> None:
    incoming = Attachment(file_name="a.png", url="whatsapp-media:1234567890123456")
    with pytest.raises(errors.PermanentError, match="no longer available"):
        await started.fetch_attachment(graph_channel(), incoming)


async def test_fetch_with_a_revoked_token(
    started: Hooks, fake: GraphFake, graph_channel: MakeChannel
) -> None:
    media_id = fake.add_media(PNG, "image/png")
    incoming = Attachment(file_name="a.png", url=f"whatsapp-media:{media_id}")
    with pytest.raises(errors.PermanentError) as info:
        await started.fetch_attachment(graph_channel(access_token="revoked"), incoming)
    assert info.value.code == "190"


async def test_attachments_that_are_not_whatsapp_media_are_left_alone(
    started: Hooks, graph_channel: MakeChannel
) -> None:
    other = Attachment(file_name="a.png", url="https://example.com/a.png")
    assert await started.fetch_attachment(graph_channel(), other) is other


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1", True),
        ("https://LOOKASIDE.fbsbx.com:443/whatsapp_business/attachments/?mid=1", True),
        ("https://graph.facebook.com/v25.0/123", True),
        # the same host over another scheme or port, or a sibling host, gets no token
        ("http://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1", False),
        ("https://lookaside.fbsbx.com:8443/whatsapp_business/attachments/?mid=1", False),
        ("https://scontent.whatsapp.net/v/t62/abc", False),
        ("https://evil.fbsbx.com/steal", False),
        ("https://fbsbx.com.evil.example/steal", False),
        ("http://127.0.0.1:9999/fake/download/1", False),
    ],
)
def test_token_only_goes_to_configured_origins(url: str, allowed: bool) -> None:
    settings = msgspec.convert(
        {
            "phone_number_id": "10654035224",
            "access_token": "t",
            "app_secret": "s",
            "verify_token": "v",
        },
        WhatsAppSettings,
    )
    assert media.may_carry_token(url, settings) is allowed


async def test_unreachable_api_is_retryable(started: Hooks, graph_channel: MakeChannel) -> None:
    channel = graph_channel(api_base_url="http://127.0.0.1:1", timeout=2.0)
    with pytest.raises(errors.RetryableError, match="Could not reach WhatsApp"):
        await started.send(channel, _message(text="Anna: Hello"))


async def test_send_without_startup_opens_a_session(
    hooks: Hooks, fake: GraphFake, graph_channel: MakeChannel
) -> None:
    """Embedders and tools may call the hooks without ``extmsg_startup``."""
    from extmsg_whatsapp import plugin

    try:
        result = await hooks.send(graph_channel(), _message(text="Anna: Hello"))
        assert result.provider_message_id.startswith("wamid.")
    finally:
        await plugin.graph.close()


async def test_empty_message_fails_with_a_reason(
    started: Hooks, fake: GraphFake, graph_channel: MakeChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbound, "clock", lambda: 10.0)
    message = _message(last_inbound_at=0.0)
    channel = graph_channel(sender_prefix="")
    rendered = await started.render_outbound(channel, message)
    with pytest.raises(errors.PermanentError, match="empty"):
        await started.send(channel, rendered[0])
    assert fake.calls == []


def test_fake_is_declared(hooks: Hooks) -> None:
    (declared,) = hooks.provider_fakes()
    assert (declared.messenger, declared.name) == ("whatsapp", "graph")


async def test_logs_hold_no_bodies_numbers_or_secrets(
    started: Hooks,
    fake: GraphFake,
    graph_channel: MakeChannel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG", logger="extmsg.whatsapp")
    batch = load_cases("inbound_batch.json")[0]
    await run_inbound(started, build_request(batch), default_channels())
    fake.fail("33612345678", 131047)
    await started.send(graph_channel(), _message(text="Anna: secret plans"))
    with pytest.raises(errors.PermanentError):
        await started.send(
            graph_channel(), _message(text="Anna: more", contact={"address": "33612345678"})
        )
    text = caplog.text
    assert f"sent text message out-1 to {mask_address('16505551234')}" in text
    for leak in (
        "16505551234",
        "33612345678",
        "First from Sheena",
        "Bonjour",
        "secret plans",
        "test-access-token",
        "test-app-secret",
    ):
        assert leak not in text


async def test_fake_failures_given_at_creation(
    aiohttp_server: Any, started: Hooks, graph_channel: MakeChannel
) -> None:
    app = create_graph_fake(
        access_token="test-access-token", failures={"+41790000001": 131047, "41790000002": 500}
    )
    server = await aiohttp_server(app)
    channel = graph_channel(api_base_url=str(server.make_url("/")).rstrip("/"))
    with pytest.raises(errors.PermanentError) as closed:
        await started.send(channel, _message(text="x", contact={"address": "41790000001"}))
    with pytest.raises(errors.RetryableError) as down:
        await started.send(channel, _message(text="x", contact={"address": "41790000002"}))
    assert (closed.value.code, down.value.status) == ("131047", 500)
