"""Outbound rendering: sender prefix, splitting, captions, the 24-hour window and templates."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from whatsapp_testkit import MAIN_NUMBER_ID, case_ids, load_cases, make_channel

from extmsg import errors
from extmsg.models import Attachment, Channel, Contact, OutboundMessage
from extmsg.plugins import Hooks
from extmsg_whatsapp import outbound

CASES = load_cases("outbound_render.json")
_CHANNEL_FIELDS = {"sender_prefix", "sender_fallback"}


def _channel(overrides: dict[str, Any]) -> Channel:
    channel_kw = {k: v for k, v in overrides.items() if k in _CHANNEL_FIELDS}
    settings = {k: v for k, v in overrides.items() if k not in _CHANNEL_FIELDS}
    return make_channel("wa-main", MAIN_NUMBER_ID, **channel_kw, **settings)


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
async def test_render(hooks: Hooks, monkeypatch: pytest.MonkeyPatch, case: dict[str, Any]) -> None:
    monkeypatch.setattr(outbound, "clock", lambda: float(case["now"]))
    channel = _channel(case.get("channel", {}))
    message = msgspec.convert(case["message"], OutboundMessage)
    if "error" in case:
        expected = case["error"]
        with pytest.raises(getattr(errors, expected["type"])) as info:
            await hooks.render_outbound(channel, message)
        assert info.value.code == expected["code"]
        for fragment in expected["contains"]:
            assert fragment in info.value.message
        return
    rendered = await hooks.render_outbound(channel, message)
    untouched = {
        "id",
        "unblu_message_id",
        "conversation_id",
        "contact",
        "sender_name",
        "last_inbound_at",
    }
    got = [
        {
            **{
                k: v
                for k, v in msgspec.json.decode(msgspec.json.encode(m)).items()
                if k not in untouched
            },
            "part": m.part,
        }
        for m in rendered
    ]
    assert got == case["expect"]
    assert all(m.id == message.id and m.contact == message.contact for m in rendered)


def _message(text: str, **kw: Any) -> OutboundMessage:
    return OutboundMessage(
        id="out-9",
        unblu_message_id="ub-9",
        conversation_id="c-9",
        contact=Contact(address="16505551234"),
        text=text,
        **kw,
    )


async def test_long_text_is_split_at_4096(hooks: Hooks, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbound, "clock", lambda: 1000.0)
    text = " ".join(f"word{i:05d}" for i in range(1000))  # 9999 characters
    parts = await hooks.render_outbound(
        _channel({}), _message(text, sender_name="Anna", last_inbound_at=900.0, reply_to="wamid.Q")
    )
    assert len(parts) == 3
    assert all(len(p.text or "") <= outbound.TEXT_LIMIT for p in parts)
    assert [p.part for p in parts] == [0, 1, 2]
    assert [p.reply_to for p in parts] == ["wamid.Q", None, None]
    assert " ".join(p.text or "" for p in parts) == "Anna: " + text


async def test_long_caption_goes_as_text_before_the_file(
    hooks: Hooks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbound, "clock", lambda: 1000.0)
    caption = "x" * 2000
    message = _message(
        "",
        sender_name="Anna",
        last_inbound_at=900.0,
        attachment=Attachment(
            file_name="a.pdf", mime_type="application/pdf", url="https://f/a.pdf", caption=caption
        ),
    )
    parts = await hooks.render_outbound(_channel({}), msgspec.structs.replace(message, text=None))
    assert [p.attachment is None for p in parts] == [True, False]
    assert parts[0].text == "Anna: " + caption
    assert parts[1].attachment is not None
    assert parts[1].attachment.caption is None


def test_template_parameter_is_bounded() -> None:
    param = outbound.template_parameter("a" * 5000)
    assert len(param) == outbound.TEMPLATE_PARAMETER_LIMIT
    assert param.endswith("…")


async def test_other_messengers_keep_the_core_default(hooks: Hooks) -> None:
    channel = msgspec.structs.replace(_channel({}), messenger="sms_twilio", settings=None)
    rendered = await hooks.render_outbound(channel, _message("hi", sender_name="Anna"))
    assert [m.text for m in rendered] == ["Anna: hi"]
