"""JSON log lines, the request id and the other fields a line carries, and what hook tracing
and log lines may say about a message: one JSON object per record and line, secrets and
control characters cleaned in every field, the id fields bound for a request or a job and
nothing left over after it, message texts shown only when ``log_message_text`` asks."""

from __future__ import annotations

import asyncio
import heapq
import io
import json
import logging
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from extmsg import logcontext, logsafe
from extmsg.hooktrace import describe
from extmsg.logformat import JsonFormatter
from extmsg.logsafe import install_log_escaping, message_text, register_secrets
from extmsg.models import (
    Attachment,
    Channel,
    Contact,
    InboundMessage,
    InboundRequest,
    OutboundMessage,
)
from extmsg.testing.helpers import cpu_time
from extmsg.unblu.client import UnbluClient

TOKEN = "tok-7d3e1b9c2a"
TEXT = "My card number is in the drawer"


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    logsafe.clear_secrets()
    register_secrets([TOKEN])
    logsafe.log_message_text(False)
    yield
    logsafe.clear_secrets()
    logsafe.log_message_text(False)


def capture(formatter: logging.Formatter | None = None) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter or JsonFormatter())
    install_log_escaping(handler)
    logger = logging.getLogger("extmsg.tests.format")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def records(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_record_is_one_json_line_with_time_level_logger_and_message() -> None:
    logger, out = capture()
    logger.info("job %d done", 7)
    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "INFO"
    assert record["logger"] == "extmsg.tests.format"
    assert record["message"] == "job 7 done"
    assert record["time"].endswith("Z")
    assert record["time"][10] == "T"


def test_bound_fields_are_json_fields_and_gone_after_the_block() -> None:
    logger, out = capture()
    with logcontext.bind(request_id="req-1", channel="sms", job_id=12, message_id="m1"):
        logcontext.set_field("conversation_id", "conv-9")
        logger.info("inside")
    logger.info("outside")
    inside, outside = records(out)
    assert {k: inside[k] for k in logcontext.FIELDS} == {
        "request_id": "req-1",
        "channel": "sms",
        "job_id": "12",
        "message_id": "m1",
        "conversation_id": "conv-9",
    }
    assert not set(logcontext.FIELDS) & set(outside)


def test_secrets_and_control_characters_are_cleaned_in_every_field() -> None:
    logger, out = capture()
    with logcontext.bind(conversation_id=f"c-{TOKEN}"):
        try:
            raise ValueError(f"refused {TOKEN}\nsecond line")
        except ValueError:
            logger.exception("token %s\nforged", TOKEN, extra={"ref": f"x{TOKEN}"})
    lines = out.getvalue().splitlines()
    assert len(lines) == 1  # the traceback stays inside its field
    [record] = records(out)
    assert TOKEN not in lines[0]
    assert record["message"] == "token ***\\nforged"
    assert record["ref"] == "x***"
    assert record["conversation_id"] == "c-***"
    assert "ValueError: refused ***\\nsecond line" in record["exception"]
    assert record["exception"].startswith("Traceback")


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-123", True),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", True),
        ("trace:1/2+3=4_5.6", True),
        ("", False),
        ("a" * 129, False),
        ("bad id", False),
        ("x\nERROR forged", False),
        ('"quoted"', False),
        ("-leading", False),
    ],
)
def test_an_incoming_request_id_is_kept_only_when_sane(given: str, kept: bool) -> None:
    assert (logcontext.sane_request_id(given) == given) is kept


async def test_requests_get_an_id_answered_in_x_request_id() -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        logcontext.set_field("channel", "set-during-the-request")
        seen.append(logcontext.request_id())
        return web.Response(text="ok")

    from extmsg.app import public_middleware
    from extmsg.draining import InFlight

    app = web.Application(middlewares=[public_middleware(InFlight())])
    app.router.add_get("/", handler)
    async with TestClient(TestServer(app)) as client:
        kept = await client.get("/", headers={"X-Request-Id": "abc-123"})
        made = await client.get("/", headers={"X-Request-Id": "no good <b>"})
        again = await client.get("/")
        missing = await client.get("/nowhere", headers={"X-Request-Id": "lost-1"})
    assert missing.status == 404
    assert missing.headers["X-Request-Id"] == "lost-1"  # aiohttp's own answers carry it too
    assert kept.headers["X-Request-Id"] == "abc-123"
    assert re.fullmatch("[0-9a-f]{32}", made.headers["X-Request-Id"])  # 32 hex digits
    assert made.headers["X-Request-Id"] != again.headers["X-Request-Id"]
    assert seen == ["abc-123", made.headers["X-Request-Id"], again.headers["X-Request-Id"]]
    assert logcontext.current() == {}


async def test_calls_to_unblu_carry_the_request_id() -> None:
    headers: list[str | None] = []

    async def channel(request: web.Request) -> web.Response:
        headers.append(request.headers.get("X-Request-Id"))
        return web.json_response({"id": "c1"})

    app = web.Application()
    app.router.add_get("/app/rest/v4/externalmessengers/{id}", channel)
    server = TestServer(app)
    await server.start_server()
    try:
        async with UnbluClient(str(server.make_url("/app/rest")), "u", "p", "v4") as client:
            with logcontext.bind(request_id="req-unblu-1"):
                await client._call("GET", "/externalmessengers/{id}", {"id": "c1"})
            await client._call("GET", "/externalmessengers/{id}", {"id": "c1"})
    finally:
        await server.close()
    assert headers == ["req-unblu-1", None]


def test_a_bound_message_text_never_reaches_a_line() -> None:
    logger, out = capture()
    with logcontext.bind(texts=[f"{TEXT}\nand the code is 4711 x", None, "ok"]):
        logger.warning("provider said: rejected %r", f"{TEXT}\nand the code is 4711 x")
        logger.warning("provider quoted one line: and the code is 4711 x")
        logger.warning("ok stays a word")
    logger.warning("outside: %s", TEXT)
    first, second, third, outside = records(out)
    assert TEXT not in first["message"]
    assert "[message text]" in first["message"]
    assert second["message"] == "provider quoted one line: [message text]"
    assert third["message"] == "ok stays a word"
    assert outside["message"] == f"outside: {TEXT}"


def test_message_text_shows_only_the_length_unless_asked() -> None:
    assert message_text(TEXT) == f"[{len(TEXT)} chars]"
    logsafe.log_message_text(True)
    assert message_text("call +41791234567") == "'call +*********67'"


def _channel() -> Channel:
    return Channel(
        name="sms",
        messenger="sms_twilio",
        settings={"auth_token": TOKEN},
        public_url="https://x.example/channels/sms",
        webhook_secret="whsec-12345678",
    )


def test_hook_tracing_describes_calls_without_texts_bodies_or_settings() -> None:
    message = InboundMessage(
        provider_message_id="SM0123456789abcdef",
        contact=Contact(address="+41791234567", name="Jane Doe"),
        text=TEXT,
        attachments=(Attachment(file_name="a.jpg", caption=TEXT, url="https://h/x?sig=1"),),
    )
    request = InboundRequest(
        method="POST",
        url=f"https://x.example/channels/sms/inbound?token={TOKEN}",
        path="/channels/sms/inbound",
        route="inbound",
        query=(("token", TOKEN),),
        headers={"authorization": TOKEN},
        body=f"Body={TEXT}".encode(),
    )
    shown = " ".join(describe(v) for v in (message, request, [_channel()], ValueError(TEXT)))
    for leaked in (TEXT, TOKEN, "whsec-12345678", "Jane Doe", "+41791234567", "sig=1"):
        assert leaked not in shown
    assert "provider_message_id='SM0123456789abcdef'" in shown
    assert f"text=[{len(TEXT)} chars]" in shown
    assert "address=+417******67" in shown
    assert "Channel(name='sms', messenger='sms_twilio'" in shown
    assert "path='/channels/sms/inbound'" in shown
    logsafe.log_message_text(True)
    assert repr(TEXT) in describe(message)


def test_hook_tracing_logs_calls_and_results(monkeypatch: pytest.MonkeyPatch) -> None:
    from extmsg.plugins import build_hooks

    monkeypatch.setenv("EXTMSG_TRACE_HOOKS", "1")
    hooks = build_hooks(entry_points=False)
    logger = logging.getLogger("extmsg.plugins")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        contact = Contact(address="+41791234567", name="Jane Doe")
        asyncio.run(hooks.map_contact(_channel(), contact))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    text = out.getvalue()
    assert "hook extmsg_map_contact(channel=Channel(name='sms'" in text
    assert "hook extmsg_map_contact returned" in text
    assert "Jane Doe" not in text
    assert "+41791234567" not in text
    assert TOKEN not in text


def test_serve_logging_keeps_statement_parameters_out() -> None:
    """aiosqlite's DEBUG lines quote each statement's parameters (addresses, texts)."""
    from extmsg import logformat

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        logformat.configure_logging("DEBUG", "text")
        assert root.isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("aiosqlite").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        logging.getLogger("aiosqlite").setLevel(logging.NOTSET)


async def test_calls_to_providers_carry_the_request_id() -> None:
    from extmsg_sms_twilio import outbound
    from extmsg_sms_twilio.settings import TwilioSettings
    from extmsg_whatsapp.graph import Graph
    from extmsg_whatsapp.settings import WhatsAppSettings

    seen: list[tuple[str, str | None]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("X-Request-Id")))
        return web.json_response({"sid": "SM" + "0" * 32, "id": "1"}, status=201)

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    server = TestServer(app)
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    twilio = Channel(
        name="sms",
        messenger="sms_twilio",
        settings=TwilioSettings(
            account_sid="AC" + "1" * 32,
            auth_token=TOKEN,
            from_number="+15005550006",
            api_base_url=base,
        ),
        public_url=base,
        webhook_secret="whsec-12345678",
    )
    message = OutboundMessage(
        id="m1",
        unblu_message_id="u1",
        conversation_id="c1",
        contact=Contact(address="+41791234567"),
        text="hello",
    )
    wa_settings = WhatsAppSettings(
        phone_number_id="106540352242922",
        access_token=TOKEN,
        app_secret="app-secret-1",
        verify_token="verify-1",
        api_base_url=base,
    )
    graph = Graph()
    try:
        async with aiohttp.ClientSession() as session:
            with logcontext.bind(request_id="req-provider-1"):
                await outbound.send(session, twilio, message)
                await graph.call(wa_settings, "POST", f"{base}/v25.0/1/messages", json_body={})
            await outbound.send(session, twilio, message)
    finally:
        await graph.close()
        await server.close()
    assert [rid for _, rid in seen] == ["req-provider-1", "req-provider-1", None]


def test_a_failed_start_says_why_in_json_when_json_is_asked(tmp_path: Path) -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "extmsg", "serve", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )

    flagged = serve("--log-format", "json", "-c", str(tmp_path / "missing.toml"))
    assert flagged.returncode == 2
    [line] = flagged.stderr.splitlines()
    assert json.loads(line)["level"] == "ERROR"
    assert "missing.toml: no such file" in json.loads(line)["message"]
    config = tmp_path / "extmsg.toml"
    config.write_text('[server]\nlog_format = "json"\nport = "x"\n')
    from_file = serve("-c", str(config))
    assert from_file.returncode == 2
    assert json.loads(from_file.stderr)["message"] == "server.port: expected `int`, got `str`"


def test_a_long_text_costs_a_job_and_its_lines_little() -> None:
    text = "\n".join(f"line number {i} of a long mail" for i in range(100_000))
    with cpu_time(this_thread=True) as took, logcontext.bind(texts=[text]):
        for _ in range(100):
            logcontext.scrub_texts("the provider said: line number 7 of a long mail")
    assert took.seconds < 0.5  # measured: ~3 ms


def _reference_pieces(texts: list[str | None]) -> tuple[str, ...]:
    """The texts kept out of log lines, as first specified: each text, and the longest lines
    of each, longest first, at most ``MAX_PIECES`` of at least ``MIN_TEXT`` characters."""
    out: set[str] = set()
    for text in texts:
        if text:
            out.add(text.strip())
            lines = (line.strip() for line in text[: logcontext._LINES_FROM].splitlines())
            out.update(heapq.nlargest(logcontext.MAX_PIECES, lines, key=len))
    kept = (t for t in out if len(t) >= logcontext.MIN_TEXT)
    return tuple(heapq.nlargest(logcontext.MAX_PIECES, kept, key=len))


def test_the_texts_kept_out_are_the_longest_lines_longest_first() -> None:
    rng = random.Random(7)
    breaks = ["\n", "\r\n", "\r", "\u2028", "\x0c", "\n\n"]
    for _ in range(2000):
        texts: list[str | None] = []
        for _ in range(rng.randrange(4)):
            if rng.random() < 0.2:
                texts.append(rng.choice([None, "", "  "]))
                continue
            # Lines of equal length that differ, and more than MAX_PIECES of them.
            lines = [
                " " * rng.randrange(2)
                + "".join(rng.choice("ab") for _ in range(rng.randrange(20)))
                + " " * rng.randrange(2)
                for _ in range(rng.choice([1, 1, 2, 5, 31, 32, 33, 70]))
            ]
            text = "".join(line + rng.choice(breaks) for line in lines)
            texts.append(text[: rng.randrange(1, len(text) + 2)])
        pieces = logcontext._pieces(texts)
        assert pieces == _reference_pieces(texts), texts
        assert len(pieces) <= logcontext.MAX_PIECES
        assert [len(p) for p in pieces] == sorted((len(p) for p in pieces), reverse=True)
