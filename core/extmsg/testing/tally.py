"""Counting what arrived where, for end-to-end runs that kill or freeze ``extmsg serve``: the
Unblu sandbox's conversations and messages, the order things were first seen in, a metric's
value in a ``/metrics`` text."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp

__all__ = [
    "agent_writes",
    "first_seen",
    "inbound_by_contact",
    "metric_total",
    "out_of_order",
    "sandbox_conversations",
    "sandbox_drain",
    "sandbox_messages",
]


def first_seen(items: Iterable[str]) -> list[str]:
    """``items`` without repeats, each where it first appeared: what a reader sees in order."""
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def out_of_order(arrived: Iterable[str], wanted: Iterable[str]) -> bool:
    """Whether what arrived (first appearances) came in another order than ``wanted``, judged
    on what arrived only: a message still missing is lost (or late), not out of order, and
    what is not in ``wanted`` is not counted."""
    want = list(wanted)
    known = set(want)
    seen = [item for item in first_seen(arrived) if item in known]
    present = set(seen)
    return seen != [item for item in want if item in present]


async def sandbox_conversations(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    """Every conversation of the Unblu sandbox at ``url`` (its agent API)."""
    async with session.get(f"{url}/sandbox/api/conversations") as resp:
        data = await resp.json()
    return list(data["conversations"] if isinstance(data, dict) else data)


async def sandbox_messages(
    session: aiohttp.ClientSession, url: str, conversation_id: str
) -> list[dict[str, Any]]:
    """One sandbox conversation's messages, in Unblu's order."""
    async with session.get(f"{url}/sandbox/api/conversations/{conversation_id}/messages") as resp:
        data = await resp.json()
    return list(data["messages"] if isinstance(data, dict) else data)


async def agent_writes(
    session: aiohttp.ClientSession, url: str, conversation_id: str, texts: Iterable[str]
) -> None:
    """An agent writes ``texts`` into a sandbox conversation, one after another."""
    endpoint = f"{url}/sandbox/api/conversations/{conversation_id}/messages"
    for text in texts:
        async with session.post(endpoint, json={"text": text}) as resp:
            assert resp.status == 201, await resp.text()
        await asyncio.sleep(0.002)  # as a person types: other writers get their turn


async def sandbox_drain(session: aiohttp.ClientSession, url: str, timeout: float = 10) -> None:  # noqa: ASYNC109
    """Wait (up to ``timeout`` seconds) until the sandbox delivered what it has queued."""
    async with session.post(f"{url}/sandbox/api/drain", json={"timeout": timeout}) as resp:
        await resp.read()


async def inbound_by_contact(session: aiohttp.ClientSession, url: str) -> dict[str, list[str]]:
    """Each contact's messages that reached Unblu (their provider ids, the sandbox's
    ``sourceId``), by the conversation's ``sourceId`` (the contact), in Unblu's order."""
    out: dict[str, list[str]] = defaultdict(list)
    for conv in await sandbox_conversations(session, url):
        messages = await sandbox_messages(session, url, conv["id"])
        out[conv["sourceId"]] += [
            m["sourceId"] for m in messages if m.get("fromMessenger") and m.get("sourceId")
        ]
    return out


_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_]+)="(?P<value>(?:[^"\\]|\\.)*)"')


def metric_total(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The sum of a Prometheus metric's samples in an exposition text; with ``labels``, only
    the samples carrying all of them."""
    wanted = dict(labels or {})
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match["name"] != name:
            continue
        have = {m["key"]: m["value"] for m in _LABEL.finditer(match["labels"] or "")}
        if all(have.get(k) == v for k, v in wanted.items()):
            total += float(match["value"])
    return total
