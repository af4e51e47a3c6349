"""Text helpers messenger renderers share."""

from __future__ import annotations

import re

import msgspec

from .models import Channel, OutboundMessage

__all__ = ["next_chunk", "prefix_text", "sender_prefix", "split_text"]


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

    A single word longer than ``limit`` is cut hard; whitespace at a cut is dropped. Linear in
    the length of ``text``: each chunk looks at no more than ``limit + 1`` characters of it.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    chunks: list[str] = []
    start, end = 0, len(text)
    while end - start > limit:
        chunk, start = next_chunk(text, start, limit)
        chunks.append(chunk)
    rest = text[start:]
    if rest or not chunks:
        chunks.append(rest)
    return chunks


_NOT_SPACE = re.compile(r"\S")


def next_chunk(text: str, start: int, limit: int) -> tuple[str, int]:
    """The chunk of ``text`` that :func:`split_text` cuts at ``start`` when more than
    ``limit`` characters are left, and where the chunk after it starts."""
    stop = start + limit + 1
    cut = max(text.rfind(" ", start, stop), text.rfind("\n", start, stop)) - start
    if cut <= 0:
        cut = limit
    chunk = text[start : start + cut].rstrip()
    rest = _NOT_SPACE.search(text, start + cut)
    return chunk, len(text) if rest is None else rest.start()
