"""Shared test helpers: channels, the corpus loader, thread tokens from the test secret."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from extmsg.models import Channel, InboundEvent, InboundMessage
from extmsg.store.base import IntakeResult
from extmsg_email_smtp import threads
from extmsg_email_smtp.settings import EmailSettings

TESTDATA = Path(__file__).parent / "testdata"
CORPUS = TESTDATA / "corpus"
SECRET = "test-webhook-secret"
ADDRESS = "support@acme.example"

IMAP_USER = "support@acme.example"
IMAP_PASSWORD = "imap-test-password"


class Dovecot:
    def __init__(self, port: int, maildir: Path) -> None:
        self.port = port
        self.maildir = maildir


class SmtpSink:
    """The recording SMTP server process and the mail it has written."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.folder = folder

    def clear(self) -> None:
        for path in self.folder.iterdir():
            path.unlink()

    def messages(self) -> list[tuple[bytes, dict[str, Any]]]:
        out = []
        for eml in sorted(self.folder.glob("*.eml")):
            info = json.loads(eml.with_suffix(".json").read_text())
            out.append((eml.read_bytes(), info))
        return out


_PLACEHOLDER = re.compile(r"\{\{(TOKEN|NEWTOKEN) ([^ }]+) ([^ }]+)\}\}")


def settings(**overrides: Any) -> EmailSettings:
    base: dict[str, Any] = {
        "address": ADDRESS,
        "display_name": "Acme Support",
        "smtp_host": "127.0.0.1",
        "smtp_port": 2525,
        "smtp_security": "none",
    }
    base.update(overrides)
    return msgspec.convert(base, EmailSettings)


def channel(name: str = "email", **overrides: Any) -> Channel:
    channel_fields = {
        k: overrides.pop(k) for k in ("sender_prefix", "sender_fallback") if k in overrides
    }
    return Channel(
        name=name,
        messenger="email_smtp",
        settings=settings(**overrides),
        public_url="https://connector.example.com",
        webhook_secret=SECRET,
        **channel_fields,
    )


def fill(text: str) -> str:
    """Replace ``{{TOKEN contact seed}}`` / ``{{NEWTOKEN contact message-id}}`` with the thread
    tokens the test secret gives, so the corpus holds no precomputed MACs."""

    def token(match: re.Match[str]) -> str:
        return threads.new_token(SECRET, match.group(2), match.group(3))

    return _PLACEHOLDER.sub(token, text)


def corpus_cases() -> list[str]:
    return sorted(p.stem for p in CORPUS.glob("*.eml"))


def load_case(name: str) -> tuple[bytes, dict[str, Any]]:
    raw = (CORPUS / f"{name}.eml").read_bytes()
    raw = fill(raw.decode("latin-1")).encode("latin-1")
    expected = json.loads(fill((CORPUS / f"{name}.json").read_text("utf-8")))
    return raw, expected


class MemoryThreadStore:
    """The thread-memory part of the core's store, in a dict."""

    def __init__(self) -> None:
        self.meta: dict[tuple[str, str], dict[str, str]] = {}

    async def thread_meta(self, channel: str, thread: str) -> dict[str, str]:
        return dict(self.meta.get((channel, thread), {}))

    async def put_thread_meta(self, channel: str, thread: str, meta: dict[str, str]) -> None:
        current = self.meta.setdefault((channel, thread), {})
        for key, value in meta.items():
            if value:
                current[key] = value
            else:
                current.pop(key, None)


class FakeRuntime:
    """Stands in for ``extmsg.runtime.Runtime.accept``: records, dedups, fails on demand."""

    def __init__(self) -> None:
        self.store = MemoryThreadStore()
        self.accepted: list[tuple[str, list[InboundEvent]]] = []
        self.fail: BaseException | None = None
        self.delay = 0.0
        self.calls = 0
        self._seen: set[tuple[str, str]] = set()

    async def accept(self, channel: str, events: Sequence[InboundEvent]) -> list[IntakeResult]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        results = []
        fresh = []
        for event in events:
            key = (channel, getattr(event, "provider_message_id", None) or "")
            duplicate = isinstance(event, InboundMessage) and key in self._seen
            self._seen.add(key)
            results.append(IntakeResult(accepted=not duplicate))
            if not duplicate:
                fresh.append(event)
        if fresh:
            self.accepted.append((channel, fresh))
        return results

    def messages(self) -> list[InboundMessage]:
        return [e for _, events in self.accepted for e in events if isinstance(e, InboundMessage)]
