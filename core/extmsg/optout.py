"""Opt-out and opt-in keywords: a contact who writes ``STOP`` gets no more messages.

The rule is the core's, for every messenger; the words are channel settings
(``opt_out_keywords``, ``opt_in_keywords``) whose defaults each messenger declares on its
:class:`~extmsg.models.MessengerType` (Twilio: its own keyword lists; none for a messenger that
declares none). A message whose whole text, trimmed and in any case, is one of the words is
preceded by a :class:`~extmsg.models.ContactUpdate`; the message itself still reaches the agent,
who sees why later replies fail. A plugin may report an opt-out of its own (Twilio's
``OptOutType``): then no second update is added.

``opt_out_reply`` / ``opt_in_reply`` are the confirmations extmsg sends back (empty: none; the
default is the messenger's, e.g. none for Twilio, which confirms by itself).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from .models import Channel, ContactUpdate, InboundEvent, InboundMessage, MessengerType

__all__ = ["OptOutRules", "add_keyword_updates", "rules"]

#: Texts longer than this (whitespace around the word included) are never a keyword.
_LONGEST = 200


class OptOutRules(msgspec.Struct, frozen=True):
    """A channel's opt-out settings, its messenger's defaults filled in."""

    opt_out: frozenset[str] = frozenset()
    opt_in: frozenset[str] = frozenset()
    opt_out_reply: str | None = None
    opt_in_reply: str | None = None

    def keyword(self, text: str | None) -> tuple[str, bool] | None:
        """``(WORD, opted_out)`` when ``text`` is one of the keywords, else None."""
        if not text or len(text) > _LONGEST:
            return None  # a keyword is one word: a long text is a message, read no further
        word = text.strip().upper()
        if word in self.opt_out:
            return word, True
        if word in self.opt_in:
            return word, False
        return None

    first_opt_in: str | None = None
    """The opt-in word to name to an agent: the first one configured (of a set, the first in
    alphabetical order)."""


def _words(values: Iterable[str]) -> frozenset[str]:
    return frozenset(w.strip().upper() for w in values if w.strip())


def _first(values: Iterable[str]) -> str | None:
    ordered = sorted(values) if isinstance(values, (set, frozenset)) else list(values)
    return next((w.strip().upper() for w in ordered if w.strip()), None)


def rules(channel: Channel, messenger: MessengerType | None) -> OptOutRules:
    """The opt-out rules of ``channel``: its own settings, else its messenger's defaults."""
    out: frozenset[str] | tuple[str, ...] = channel.opt_out_keywords or ()
    if channel.opt_out_keywords is None:
        out = messenger.opt_out_keywords if messenger else ()
    opt_in: frozenset[str] | tuple[str, ...] = channel.opt_in_keywords or ()
    if channel.opt_in_keywords is None:
        opt_in = messenger.opt_in_keywords if messenger else ()
    out_reply = channel.opt_out_reply
    if out_reply is None:
        out_reply = messenger.opt_out_reply if messenger else None
    in_reply = channel.opt_in_reply
    if in_reply is None:
        in_reply = messenger.opt_in_reply if messenger else None
    try:
        # Looked up on every inbound request: the words are worked out once per channel.
        return _cached_rules(out, opt_in, out_reply or None, in_reply or None)
    except TypeError:  # a word list that cannot be a key (a plugin's list)
        return _rules(out, opt_in, out_reply or None, in_reply or None)


def _rules(
    out: Iterable[str], opt_in: Iterable[str], out_reply: str | None, in_reply: str | None
) -> OptOutRules:
    return OptOutRules(
        opt_out=_words(out),
        opt_in=_words(opt_in),
        opt_out_reply=out_reply,
        opt_in_reply=in_reply,
        first_opt_in=_first(opt_in),
    )


_cached_rules = functools.lru_cache(maxsize=256)(_rules)


def add_keyword_updates(
    rules_of: OptOutRules | Mapping[str, OptOutRules],
    events: Sequence[InboundEvent],
    default_channel: str | None = None,
) -> list[InboundEvent]:
    """``events`` with a :class:`ContactUpdate` in front of each message that is a keyword,
    unless the plugin already put one for the same contact right before it.

    ``rules_of``: one channel's rules, or rules per channel name (events name their channel
    on messenger-wide routes; ``default_channel`` stands in for those that do not).
    """
    out: list[InboundEvent] = []
    for event in events:
        if isinstance(event, InboundMessage):
            channel = event.channel or default_channel
            if isinstance(rules_of, OptOutRules):
                rules_: OptOutRules | None = rules_of
            else:
                rules_ = rules_of.get(channel) if channel else None
            found = rules_.keyword(event.text) if rules_ is not None else None
            previous = out[-1] if out else None
            already = (
                isinstance(previous, ContactUpdate)
                and previous.address == event.contact.address
                and previous.channel == event.channel
            )
            if found is not None and not already:
                word, opted_out = found
                out.append(
                    ContactUpdate(
                        address=event.contact.address,
                        opted_out=opted_out,
                        reason=f"the customer wrote {word}",
                        channel=event.channel,
                    )
                )
        out.append(event)
    return out
