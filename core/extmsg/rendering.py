"""Text helpers messenger renderers share."""

from __future__ import annotations

import msgspec

from .models import Channel, OutboundMessage

__all__ = ["prefix_text", "sender_prefix", "split_text"]


def sender_prefix(channel: Channel, sender_name: str | None) -> str:
    """The channel's prefix template with ``{sender}`` filled in.

    An agent without a display name gets ``channel.sender_fallback``; an empty template means
    no prefix at all.
    """
    name = (sender_name or "").strip() or channel.sender_fallback
    return channel.sender_prefix.replace("{sender}", name)


def prefix_text(channel: Channel, message: OutboundMessage) -> OutboundMessage:
    """``message`` with the sender prefix in front of its text (or its attachment caption)."""
    prefix = sender_prefix(channel, message.sender_name)
    if not prefix:
        return message
    if message.text:
        return msgspec.structs.replace(message, text=prefix + message.text)
    if message.attachment is not None:
        caption = prefix + (message.attachment.caption or "")
        attachment = msgspec.structs.replace(message.attachment, caption=caption.rstrip())
        return msgspec.structs.replace(message, attachment=attachment)
    return message


def split_text(text: str, limit: int) -> list[str]:
    """Split ``text`` into chunks of at most ``limit`` characters, on word boundaries.

    A single word longer than ``limit`` is cut hard; whitespace at a cut is dropped.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    chunks: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind(" ", 0, limit + 1)
        newline = rest.rfind("\n", 0, limit + 1)
        cut = max(cut, newline)
        if cut <= 0:
            cut = limit
        chunks.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not chunks:
        chunks.append(rest)
    return chunks
