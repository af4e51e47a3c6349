"""SIGTERM to a real ``extmsg serve`` while customers' mail arrives over SMTP.

The stop has stages: the drain (requests in flight are answered, up to ``[server]
shutdown_timeout``), the engine's stop (running jobs finish, as long again), the plugins'
shutdown, the store's close. Here an HTTP request is in flight when the signal comes (the drain
waits for it) and an agent's reply is being sent to a mail server that never answers (the
engine waits for it), while mail keeps arriving on fresh connections, on a session opened
before the signal, and in a DATA begun before it. From the moment the stop begins, the listener
must refuse mail with a temporary error (421), which senders retry; no mail may get ``250``
without being in the store, and none may be left unanswered while the server still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
from email_testkit import ADDRESS

from extmsg.testing.helpers import ServeProcess, eventually, free_port

CONFIG = """
[server]
port = {port}
public_url = "{base}"
shutdown_timeout = {grace}
log_level = "INFO"

[store]
path = "{store}"

[unblu]
base_url = "{unblu}"
username = "admin"
password = "admin"

[engine]
backoff_initial = 0.05
backoff_max = 0.5

[[channels]]
name = "email"
messenger = "email_smtp"
webhook_secret = "whsec-email-stop"
[channels.settings]
address = "{address}"
display_name = "Acme Support"
smtp_host = "127.0.0.1"
smtp_port = {tarpit}
smtp_security = "none"
smtp_timeout = 60
inbound = ["smtp"]
listen_host = "127.0.0.1"
listen_port = {listen}
"""

#: Each stage the stop holds (the drain by the request in flight, the engine by the send).
GRACE = 2.0
CUSTOMER = "jane.doe@example.org"


def _mail(n: int) -> bytes:
    return (
        f"From: Jane Doe <{CUSTOMER}>\r\nTo: {ADDRESS}\r\nSubject: Question {n}\r\n"
        f"Message-ID: <stop-{n}@example.org>\r\nDate: Tue, 04 Mar 2025 10:15:00 +0100\r\n"
        f"\r\nQuestion number {n}.\r\n"
    ).encode()


class Outcome:
    """One mail: when it was sent, its final answer (a reply line, or what broke)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.sent = time.monotonic()
        self.done = 0.0
        self.answer = "unanswered"

    @property
    def code(self) -> str:
        return self.answer[:3]

    @property
    def message_id(self) -> str:
        return f"<stop-{self.n}@example.org>"


class Session:
    """A minimal SMTP client: each step's reply is read before the next is sent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Session:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def reply(self) -> str:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 30)).decode()
            if not line:
                raise ConnectionResetError("closed without a reply")
            lines.append(line.rstrip())
            if line[3:4] != "-":
                return lines[-1]

    async def command(self, line: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def envelope(self) -> str:
        """Greeting, EHLO, MAIL, RCPT, DATA: the first answer that is not the expected one,
        or the ``354`` that asks for the content."""
        for step in (None, "EHLO client.example.org", f"MAIL FROM:<{CUSTOMER}>",
                     f"RCPT TO:<{ADDRESS}>", "DATA"):  # fmt: skip
            answer = await self.reply() if step is None else await self.command(step)
            if not answer.startswith(("2", "3")):
                return answer
        return answer

    async def content(self, raw: bytes) -> str:
        self.writer.write(raw + b".\r\n")
        await self.writer.drain()
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def _send(port: int, outcome: Outcome) -> None:
    try:
        session = await Session.open(port)
    except OSError as exc:
        outcome.answer = f"refused: {type(exc).__name__}"
        outcome.done = time.monotonic()
        return
    try:
        answer = await session.envelope()
        if answer.startswith("354"):
            answer = await session.content(_mail(outcome.n))
        outcome.answer = answer
    except (OSError, TimeoutError) as exc:
        outcome.answer = f"cut off: {type(exc).__name__}"
    finally:
        outcome.done = time.monotonic()
        await session.close()


async def _stream(port: int, outcomes: list[Outcome], until: list[float]) -> None:
    n = 1000
    while time.monotonic() < until[0]:
        n += 1
        outcome = Outcome(n)
        outcomes.append(outcome)
        await _send(port, outcome)
        await asyncio.sleep(0.02)


class Tarpit:
    """A mail server that takes the connection and never says a word."""

    def __init__(self) -> None:
        self.held: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.held.append(writer)

        self.server = await asyncio.start_server(silent, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def holding(self) -> bool:
        return bool(self.held)

    def close(self) -> None:
        for writer in self.held:
            writer.close()
        if self.server is not None:
            self.server.close()


async def _half_request(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A webhook whose handler runs, waiting for the rest of its body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /unblu/email HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
    )
    await writer.drain()
    return reader, writer


def _stored(store: Path) -> set[str]:
    db = sqlite3.connect(store)
    try:
        return {row[0] for row in db.execute("SELECT provider_message_id FROM messages")}
    finally:
        db.close()


async def test_sigterm_refuses_new_mail_with_421_and_acknowledges_only_what_is_stored(
    tmp_path: Path, unblu_sandbox: Any
) -> None:
    port, listen = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    store = tmp_path / "store.sqlite3"
    tarpit = Tarpit()
    tarpit_port = await tarpit.start()
    config = tmp_path / "extmsg.toml"
    config.write_text(
        CONFIG.format(
            port=port, base=base, grace=GRACE, store=store, unblu=unblu_sandbox.base_url,
            address=ADDRESS, tarpit=tarpit_port, listen=listen,
        ),
        encoding="utf-8",
    )  # fmt: skip
    proc = ServeProcess(config)
    proc.start()
    assert proc.proc is not None
    try:
        await proc.wait_ready(base, limit=30)
        # A conversation, and an agent's reply to it that hangs on its way out: the engine's
        # stop waits for it.
        first = Outcome(1)
        await _send(listen, first)
        assert first.code == "250", first.answer
        api = f"{unblu_sandbox.url}/sandbox/api"
        async with aiohttp.ClientSession() as http:

            async def conversation() -> str | None:
                async with http.get(f"{api}/conversations") as resp:
                    data = await resp.json()
                convs = data["conversations"] if isinstance(data, dict) else data
                return str(convs[0]["id"]) if convs else None

            conv = await eventually(conversation)
            async with http.post(
                f"{api}/conversations/{conv}/messages",
                json={"text": "On its way", "senderName": "Anna"},
            ) as resp:
                assert resp.status < 300, await resp.text()

        await eventually(tarpit.holding)  # the reply's send waits for the silent server

        # A session opened before the stop, and a DATA begun before it.
        idle = await Session.open(listen)
        assert (await idle.reply()).startswith("220")
        assert (await idle.command("EHLO early.example.org")).startswith("250")
        begun = await Session.open(listen)
        assert (await begun.envelope()).startswith("354")
        begun.writer.write(_mail(2)[:40])
        await begun.writer.drain()

        http_reader, http_writer = await _half_request(port)
        outcomes: list[Outcome] = [first]
        until = [float("inf")]
        stream = asyncio.create_task(_stream(listen, outcomes, until))
        await eventually(lambda: _some(outcomes, 5))

        stop = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        stages = asyncio.create_task(_stages(proc, stop))
        await eventually(lambda: _seen(proc, "shutting down"))
        late = Outcome(2)  # the rest of the DATA begun before the stop
        with contextlib.suppress(OSError):
            begun.writer.write(_mail(2)[40:])
        late.answer = await _safe(begun.content(b""))
        late.done = time.monotonic()
        idle_out = Outcome(3)
        idle_out.answer = await _safe(idle.command(f"MAIL FROM:<{CUSTOMER}>"))
        code = await asyncio.to_thread(proc.proc.wait, 60)
        stopped_in = time.monotonic() - stop
        until[0] = time.monotonic() + 0.3  # and a little after it exited
        await stream
        marks = await stages
        # The request that held the drain was cut off at its timeout, unanswered.
        assert await asyncio.wait_for(http_reader.read(), 5) == b""
        http_writer.close()
        await begun.close()
        await idle.close()
    finally:
        proc.kill()
        tarpit.close()

    log = proc.log()
    assert code == 0, log
    stored = _stored(store)
    after = [o for o in outcomes if o.sent > stop + 0.2]
    table = "\n".join(f"{o.sent - stop:+.2f}s {o.message_id} {o.answer}" for o in outcomes)
    # Nothing acknowledged is lost.
    lost = [
        o.message_id for o in [*outcomes, late] if o.code == "250" and o.message_id not in stored
    ]
    assert not lost, f"acknowledged but not stored: {lost}\n{log}"
    # Both stages were held: the drain by the request, the engine by the send.
    assert marks["delivery engine stopped"] >= 2 * GRACE, marks
    # From the moment the stop began: a temporary refusal, never a 250, never left hanging.
    assert not [o for o in after if o.code == "250"], table
    assert not [o for o in [*outcomes, late] if o.answer == "unanswered"], table
    assert late.code == "421", late.answer
    assert idle_out.code == "421", idle_out.answer
    # Through the drain and the engine's stop the refusal is an explicit 421; once the
    # listener closed (the plugins' shutdown, before the store's close), the connection is
    # refused. Neither is ever answered late.
    closed = next(i for i, o in enumerate(after) if o.answer.startswith("refused"))
    running, gone = after[:closed], after[closed:]
    assert len(running) > 10, table
    assert {o.code for o in running} == {"421"}, table
    assert all(o.answer.startswith("refused") for o in gone), table
    assert after[closed].sent - stop >= 2 * GRACE, (marks, table)
    assert max(o.done - o.sent for o in after) < 2.0, table
    assert stopped_in < 2 * GRACE + 7, f"stopped in {stopped_in:.1f}s"
    print(f"stopped in {stopped_in:.2f}s; stages {marks}; {len(running)} mails refused 421")


async def _stages(proc: ServeProcess, stop: float) -> dict[str, float]:
    """When each stage of the stop showed in the log, in seconds after the signal."""
    marks: dict[str, float] = {}
    texts = ("shutting down", "waiting for", "stopped with", "delivery engine stopped",
             "extmsg stopped")  # fmt: skip
    while proc.proc is not None and proc.proc.poll() is None:
        log = proc.log()
        for text in texts:
            if text in log and text not in marks:
                marks[text] = time.monotonic() - stop
        await asyncio.sleep(0.01)
    return marks


async def _some(outcomes: list[Outcome], n: int) -> bool:
    return sum(o.code == "250" for o in outcomes) >= n


async def _seen(proc: ServeProcess, text: str) -> bool:
    return text in proc.log()


async def _safe(step: Any) -> str:
    try:
        return str(await step)
    except (OSError, TimeoutError) as exc:
        return f"cut off: {type(exc).__name__}"
