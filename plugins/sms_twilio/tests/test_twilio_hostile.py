"""Hostile but signed Twilio input, end to end over HTTP: a status callback with a huge
``MessageSid`` is answered at once and never stalls the event loop, not while its job waits
for a message that matches it, not when it is dropped, not after a restart over the same
store; and a newline in a ``MessageSid`` cannot write a log line of its own."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer
from twilio_testkit import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, make_channel

from extmsg.errors import PermanentError
from extmsg.logsafe import install_log_escaping
from extmsg.models import Attachment, Contact, OutboundMessage
from extmsg.plugins import build_hooks
from extmsg.testing.helpers import cpu_time, eventually, free_port, loop_stalls, running_extmsg
from extmsg_sms_twilio import plugin
from extmsg_sms_twilio.fake import FakeTwilio, InboundResult, send_inbound
from extmsg_sms_twilio.outbound import render, split_body

CUSTOMER = "+41791234567"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@pytest.fixture
def log_text() -> Iterator[io.StringIO]:
    """extmsg's log lines as a library user writes them: a handler of their own, with the
    escaping filter ``extmsg.logsafe`` provides."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter(FORMAT))
    install_log_escaping(handler)
    logger = logging.getLogger("extmsg")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def config(tmp_path: Path, sandbox: Any, fake_url: str, port: int) -> dict[str, Any]:
    return {
        "server": {"port": port},
        "store": {"path": str(tmp_path / "store.sqlite3")},
        "unblu": {
            "base_url": sandbox.base_url,
            "api_version": "v4",
            "username": "admin",
            "password": "admin",
        },
        "engine": {"backoff_initial": 0.05, "backoff_max": 0.1, "max_attempts": 4},
        "channels": [
            {
                "name": "sms",
                "messenger": "sms_twilio",
                "webhook_secret": "whsec-123",
                "settings": {
                    "account_sid": ACCOUNT_SID,
                    "auth_token": AUTH_TOKEN,
                    "from_number": FROM_NUMBER,
                    "api_base_url": fake_url,
                },
            }
        ],
    }


def status_params(sid: str, status: str = "delivered") -> dict[str, str]:
    # SmsSid and SmsMessageSid empty, so that the body is one huge value, not three.
    return {
        "AccountSid": ACCOUNT_SID,
        "MessageSid": sid,
        "SmsSid": "",
        "SmsMessageSid": "",
        "MessageStatus": status,
        "From": FROM_NUMBER,
        "To": CUSTOMER,
    }


async def healthz_while(base: str, work: asyncio.Task[Any]) -> float:
    """Ask /healthz until ``work`` is done; the slowest answer, in seconds."""
    slowest = 0.0
    async with aiohttp.ClientSession() as session:
        while True:
            started = time.monotonic()
            async with session.get(f"{base}/healthz") as resp:
                assert resp.status == 200
            slowest = max(slowest, time.monotonic() - started)
            if work.done():
                return slowest
            await asyncio.sleep(0.005)


def lines(log: io.StringIO) -> list[str]:
    return log.getvalue().splitlines()


async def test_a_huge_signed_message_sid_never_stalls_the_loop(
    tmp_path: Path,
    unblu_sandbox: Any,
    twilio_fake: tuple[TestServer, FakeTwilio],
    log_text: io.StringIO,
) -> None:
    server, _ = twilio_fake
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    raw = config(tmp_path, unblu_sandbox, str(server.make_url("")).rstrip("/"), port)
    hooks = build_hooks(entry_points=False, extra=[plugin], disabled=())
    sid = "SM" + "0123456789" * 100_000  # a million characters, digits and all
    logging.getLogger("extmsg").setLevel(logging.DEBUG)  # the status's wait is logged at DEBUG

    async with running_extmsg(raw, hooks, port=port), loop_stalls() as stalls:
        # The server runs in this process: its CPU time is the work the sid cost, which a
        # loaded machine does not stretch as it does the wall time.
        with cpu_time() as took:
            post = asyncio.ensure_future(
                send_inbound(f"{base}/channels/sms/status", AUTH_TOKEN, status_params(sid))
            )
            slowest_health = await healthz_while(base, post)
            answer: InboundResult = await post
        assert took.seconds < 1.0
        assert answer.status == 200 or 400 <= answer.status < 500
        assert slowest_health < 1.0
        if answer.status == 200:
            # The job for it waits (no sent message matches the sid), then is dropped; the
            # restart below may find it still queued.
            await eventually(lambda: _logged(log_text, "failed on attempt 1"), timeout=5)
        assert stalls.longest < 1.0

    async with running_extmsg(raw, hooks, port=port), loop_stalls() as stalls:
        if answer.status == 200:
            await eventually(lambda: _logged(log_text, "no message extmsg sent matches"), 10)
        async with aiohttp.ClientSession() as session, session.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        assert stalls.longest < 1.0
    # Logged lines stay short: the lane is cut, not written out a million characters long.
    assert all(len(line) < 10_000 for line in lines(log_text) if "lane" in line)


async def _logged(log: io.StringIO, text: str) -> bool:
    return text in log.getvalue()


async def test_a_newline_in_a_message_sid_cannot_forge_a_log_line(
    tmp_path: Path,
    unblu_sandbox: Any,
    twilio_fake: tuple[TestServer, FakeTwilio],
    log_text: io.StringIO,
) -> None:
    server, _ = twilio_fake
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    raw = config(tmp_path, unblu_sandbox, str(server.make_url("")).rstrip("/"), port)
    hooks = build_hooks(entry_points=False, extra=[plugin], disabled=())
    forged = "\n2026-01-01 00:00:00,000 ERROR extmsg: forged"
    sid = "SM" + "a" * 32 + forged
    logging.getLogger("extmsg").setLevel(logging.DEBUG)  # the status's wait is logged at DEBUG
    async with running_extmsg(raw, hooks, port=port):
        url = f"{base}/channels/sms/status"
        # an unknown state is logged with the sid; a known one makes a job that retries
        ignored = await send_inbound(url, AUTH_TOKEN, status_params(sid, "teleported"))
        queued = await send_inbound(url, AUTH_TOKEN, status_params(sid + "\r\x1b[2J\u2028x"))
        assert (ignored.status, queued.status) == (200, 200)
        await eventually(lambda: _logged(log_text, "failed on attempt 2"), timeout=5)
    written = lines(log_text)
    assert not [line for line in written if "forged" in line and not line.startswith("20")]
    assert not [line for line in written if line.startswith("2026-01-01")]
    escaped = "\\n2026-01-01 00:00:00,000 ERROR extmsg: forged"
    assert any("ignored" in line and escaped in line for line in written)
    # the engine's line masks the date as a number; the escapes are there all the same
    tail = "ERROR extmsg: forged\\r\\x1b[2J\\u2028x"
    assert any("failed on attempt" in line and "\\n" in line and tail in line for line in written)


# -- a huge agent text -----------------------------------------------------------------------
THREE_MB = {
    "words": "All the details you asked for. " * 100_000,
    "emoji": "😀 " * 1_500_000,
    "one word": "x" * 3_000_000,
    "tabs between letters": "a" + "\t" * 1599,
}
THREE_MB["tabs between letters"] *= 3_000_000 // len(THREE_MB["tabs between letters"])


@pytest.mark.parametrize("shape", sorted(THREE_MB))
def test_a_three_megabyte_agent_text_is_split_or_refused_at_once(shape: str) -> None:
    text = THREE_MB[shape]
    with cpu_time(this_thread=True) as took:
        parts = split_body(text)
    assert took.seconds < 1.0
    assert all(len(part.encode("utf-16-le")) <= 2 * 1600 for part in parts)

    message = OutboundMessage(
        id="m1", unblu_message_id="u1", conversation_id="c1", contact=Contact(address=CUSTOMER)
    )
    for attachment in (None, Attachment(file_name="a.png", url="https://files.example/a.png")):
        with (
            cpu_time(this_thread=True) as took,
            pytest.raises(
                PermanentError, match=r"sent as more than 20 segments .* at most 20\. Please"
            ),
        ):
            render(
                make_channel(), msgspec.structs.replace(message, text=text, attachment=attachment)
            )
        assert took.seconds < 1.0
