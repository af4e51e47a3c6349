"""Hostile mail: a sender address of 100,000 characters, end to end over SMTP, is answered at
once and never stalls the event loop (the listener, the intake, the job for it and its log
lines share the loop with every other request); bodies built to make text patterns slow are
read in bounded time."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Iterator

import aiosmtplib
import msgspec
import pytest
from email_testkit import ADDRESS
from test_email_e2e import World, new_mail_rule, world  # noqa: F401 (fixtures)

from extmsg.logsafe import install_log_escaping
from extmsg.testing.helpers import cpu_time, eventually, loop_stalls
from extmsg_email_smtp.parse import parse_mail
from extmsg_email_smtp.quotes import extract_reply
from extmsg_email_smtp.settings import EmailSettings


@pytest.fixture
def log_text() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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


def hostile_mail() -> bytes:
    """A mail whose From is a quoted local part of 100,000 characters, folded at its spaces
    (a header line stays short, as SMTP wants)."""
    words = ["a" * 70] * 1420
    local = '"' + " ".join(words) + '"'
    sender = f"{local}@example.org"
    assert len(sender) > 100_000
    head = f"From: Jane <{sender}>".replace(" ", "\r\n ")
    return (
        f"{head}\r\nTo: {ADDRESS}\r\nSubject: hello\r\n"
        "Message-ID: <hostile.1@example.org>\r\nDate: Tue, 04 Mar 2025 10:15:00 +0100\r\n"
        "\r\nHello, are you there?\r\n"
    ).encode()


@pytest.mark.parametrize("world", ["v4"], indirect=True)
async def test_a_huge_sender_address_never_stalls_the_loop(
    world: World,  # noqa: F811
    log_text: io.StringIO,
) -> None:
    async with loop_stalls() as stalls:
        # The server runs in this process: its CPU time is the work the address cost, which a
        # loaded machine does not stretch as it does the wall time.
        with cpu_time() as took:
            send = asyncio.ensure_future(
                aiosmtplib.send(
                    hostile_mail(),
                    sender="jane@example.org",
                    recipients=[ADDRESS],
                    hostname="127.0.0.1",
                    port=world.listen_port,
                    start_tls=False,
                    timeout=10,
                )
            )
            slowest = 0.0
            while not send.done():
                asked = time.monotonic()
                async with world.session.get(f"{world.sandbox.url}/sandbox/") as resp:
                    assert resp.status < 500
                slowest = max(slowest, time.monotonic() - asked)
                await asyncio.sleep(0.005)
        # refused (an SMTP 4xx/5xx answer) is fine, if said at once
        refused = send.exception()
        assert refused is None or isinstance(refused, aiosmtplib.SMTPResponseException)
        accepted = refused is None
        assert took.seconds < 1.0
        assert slowest < 1.0
        if accepted:
            # The intake decides (today: no valid sender, ignored); a conversation for it, or
            # a dead letter, would come after that.
            async def decided() -> bool:
                return "mail from" in log_text.getvalue()

            await eventually(decided, timeout=10)
    assert stalls.longest < 1.0
    lines = log_text.getvalue().splitlines()
    assert all(len(line) < 10_000 for line in lines)


#: Bodies that made a pattern on the text path take quadratic time or worse.
HOSTILE_BODIES = {
    "one long 'On' line": "On " * 60_000,
    "'schrieb' lines": ("Am schrieb " * 15)[:160] + "\n",
    "a '>' line": ">" * 199_000,
    "'[cid:' repeated": "[cid:" * 60_000,
    "blanks before text": " " * 200_000 + "x",
}
HOSTILE_BODIES["'schrieb' lines"] *= 1200


@pytest.mark.parametrize("shape", sorted(HOSTILE_BODIES))
async def test_a_hostile_body_is_read_without_stalling_the_loop(shape: str) -> None:
    raw = (
        f"From: jane@example.org\r\nTo: {ADDRESS}\r\nSubject: hello\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n" + HOSTILE_BODIES[shape]
    ).encode()
    settings = msgspec.convert({"address": ADDRESS, "smtp_host": "127.0.0.1"}, EmailSettings)
    async with loop_stalls() as stalls:
        # as the intake reads a mail: in a worker thread, which still holds the interpreter
        # for as long as one pattern search takes (so the process's CPU time, not the thread's)
        with cpu_time() as took:
            await asyncio.to_thread(parse_mail, raw, settings, [ADDRESS])
        assert took.seconds < 2.0
    assert stalls.longest < 1.0


def test_the_history_is_still_cut_after_a_long_reply() -> None:
    reply = "Thanks for the quick answer.\n" + "x" * 5_000 + "\n"
    header = "On Mon, Mar 3, 2025 at 10:15 AM Acme Support <support@acme.example> wrote:\n"
    assert extract_reply(reply + header + "> Our opening hours are 9 to 5.\n", ["en"]) == (
        reply.strip()
    )
