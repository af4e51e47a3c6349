"""The corpus: real-world-shaped mails and what each must become.

Each ``testdata/corpus/NAME.eml`` has a ``NAME.json`` beside it: the channel settings to use,
the envelope recipients, and the expected outcome — a message (text, contact, thread,
attachments), a status (from a bounce), or nothing (auto-replies, lists, loops).
"""

from __future__ import annotations

from typing import Any

import pytest
from email_testkit import channel, corpus_cases, load_case

from extmsg.models import InboundMessage, StatusUpdate
from extmsg_email_smtp.inbound import events_for
from extmsg_email_smtp.parse import parse_mail


def _outcome(name: str) -> tuple[list[Any], str, dict[str, Any]]:
    raw, expected = load_case(name)
    ch = channel(**expected.get("settings", {}))
    parsed = parse_mail(raw, ch.settings, expected.get("envelope_recipients", []))
    events, why, _ = events_for(ch, parsed)
    return events, why, expected


def test_corpus_is_complete() -> None:
    names = corpus_cases()
    assert len(names) >= 15
    for needed in ("gmail", "outlook", "apple", "thunderbird", "html_only", "dsn", "auto_reply"):
        assert any(needed in name for name in names), needed


@pytest.mark.parametrize("name", corpus_cases())
def test_corpus_case(name: str) -> None:
    events, why, expected = _outcome(name)
    kind = expected["kind"]
    if kind == "ignored":
        assert events == []
        assert expected["reason"] in why
        return
    assert len(events) == 1, why
    event = events[0]
    if kind == "status":
        assert isinstance(event, StatusUpdate)
        for key, value in expected["status"].items():
            assert getattr(event, key) == value, key
        return
    assert isinstance(event, InboundMessage)
    assert event.provider_message_id == expected["provider_message_id"]
    assert event.contact.address == expected["contact"]["address"]
    assert event.contact.email == expected["contact"]["address"]
    assert event.contact.name == expected["contact"]["name"]
    assert event.thread == expected["thread"]
    if "thread_by" in expected:
        assert why.endswith(f"thread by {expected['thread_by']}")
    assert event.text == expected["text"]
    if "reply_to" in expected:
        assert event.reply_to == expected["reply_to"]
    got = [
        {"file_name": a.file_name, "mime_type": a.mime_type, "size": len(a.data or b"")}
        for a in event.attachments
    ]
    assert got == expected["attachments"]
