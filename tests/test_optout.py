"""The core's opt-out rules: a channel's settings over its messenger's defaults."""

from __future__ import annotations

from typing import Any

import msgspec

from extmsg.models import Channel, Contact, ContactUpdate, InboundMessage, MessengerType
from extmsg.optout import add_keyword_updates, rules

TWILIO_LIKE = MessengerType(
    name="sms",
    settings=msgspec.Struct,
    opt_out_keywords=frozenset({"STOP", "QUIT"}),
    opt_in_keywords=frozenset({"YES", "START", "UNSTOP"}),
)


def channel(**kw: Any) -> Channel:
    return Channel(
        name="c", messenger="sms", settings=None, public_url="http://x", webhook_secret="s", **kw
    )


def text(body: str, sid: str = "m1", address: str = "+41790000001") -> InboundMessage:
    return InboundMessage(provider_message_id=sid, contact=Contact(address=address), text=body)


def test_the_messenger_default_applies_until_the_channel_sets_its_own() -> None:
    default = rules(channel(), TWILIO_LIKE)
    assert default.keyword(" quit\n") == ("QUIT", True)
    assert default.keyword("Start") == ("START", False)
    assert default.keyword("stop please") is None  # the whole text, not a word in it
    assert default.first_opt_in == "START"  # named to agents; of a set, alphabetically first
    own = rules(channel(opt_out_keywords=("Halt",), opt_in_keywords=("go", "begin")), TWILIO_LIKE)
    assert own.keyword("STOP") is None
    assert own.keyword("halt") == ("HALT", True)
    assert own.first_opt_in == "GO"  # of a list, the first configured
    assert rules(channel(opt_out_keywords=()), TWILIO_LIKE).keyword("STOP") is None
    assert rules(channel(), None).keyword("STOP") is None  # no default: off


def test_an_empty_reply_sends_none() -> None:
    with_reply = MessengerType(name="wa", settings=msgspec.Struct, opt_out_reply="Bye")
    assert rules(channel(), with_reply).opt_out_reply == "Bye"
    assert rules(channel(opt_out_reply=""), with_reply).opt_out_reply is None
    assert rules(channel(opt_out_reply="Ciao"), with_reply).opt_out_reply == "Ciao"


def test_a_keyword_message_gets_one_update_in_front() -> None:
    r = rules(channel(), TWILIO_LIKE)
    events = add_keyword_updates(r, [text("Hello", "m0"), text("stop")])
    assert events[0] == text("Hello", "m0")
    assert events[1] == ContactUpdate(
        address="+41790000001", opted_out=True, reason="the customer wrote STOP"
    )
    assert events[2] == text("stop")
    # The plugin reported it already (Twilio's OptOutType): no second update.
    mine = ContactUpdate(address="+41790000001", opted_out=True, reason="the customer texted X")
    assert add_keyword_updates(r, [mine, text("stop")]) == [mine, text("stop")]
