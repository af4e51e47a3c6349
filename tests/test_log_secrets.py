"""Secrets never reach a log line: the log filter writes every registered secret of the config
and every credential a URL carries as ``***``, in messages, arguments, ``extra`` fields,
exception texts and tracebacks; a config error never quotes a secret either."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from extmsg import logsafe
from extmsg.config import parse_config, secret_values
from extmsg.errors import ConfigError
from extmsg.logsafe import install_log_escaping, redact, register_secrets
from extmsg.models import MessengerType, Secret, is_secret, redacted
from extmsg.plugins import build_hooks
from extmsg.testing.helpers import cpu_time

TOKEN = "tok-4b1f9e2c7d"
PASSWORD = "pw-9a8b7c6d5e"


@pytest.fixture(autouse=True)
def secrets() -> Iterator[None]:
    logsafe.clear_secrets()
    register_secrets([TOKEN, PASSWORD, "short", None])
    yield
    logsafe.clear_secrets()


def capture() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s %(ref)s"))
    install_log_escaping(handler)
    logger = logging.getLogger("extmsg.tests.secrets")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def test_messages_arguments_and_extra_fields_are_redacted() -> None:
    logger, out = capture()
    logger.debug(f"token {TOKEN} in the message", extra={"ref": f"x{PASSWORD}y"})
    logger.info("settings %r", {"auth_token": TOKEN}, extra={"ref": "-"})
    assert out.getvalue().splitlines() == [
        "DEBUG token *** in the message x***y",
        "INFO settings {'auth_token': '***'} -",
    ]


def test_values_shorter_than_six_characters_are_not_secrets() -> None:
    assert redact("a short word") == "a short word"


def test_exception_texts_and_tracebacks_are_redacted() -> None:
    logger, out = capture()
    password = PASSWORD

    def login() -> None:
        try:
            raise KeyError(TOKEN)
        except KeyError as exc:
            raise ValueError(f"login with {password} refused") from exc

    try:
        login()
    except ValueError:
        logger.exception("Unblu said no", extra={"ref": "-"})
    text = out.getvalue()
    assert "ValueError: login with *** refused" in text
    assert "KeyError: '***'" in text
    # the quoted source line holds the value's name, not the value
    assert 'raise ValueError(f"login with {password} refused") from exc' in text
    assert TOKEN not in text
    assert PASSWORD not in text


def test_a_client_error_url_keeps_its_credentials_out() -> None:
    async def refuse(request: web.Request) -> web.Response:
        raise web.HTTPUnauthorized

    async def run() -> str:
        app = web.Application()
        app.router.add_get("/v19.0/media", refuse)
        server = TestServer(app)
        await server.start_server()
        url = server.make_url("/v19.0/media").with_query(
            access_token="EAAB-unregistered-token", page="2"
        )
        url = url.with_user("bot").with_password("unregistered-pw")
        try:
            async with aiohttp.ClientSession(raise_for_status=True) as session:
                await session.get(url)
        except aiohttp.ClientResponseError:
            logger.exception("fetch failed", extra={"ref": "-"})
        finally:
            await server.close()
        return out.getvalue()

    logger, out = capture()
    text = asyncio.run(run())
    assert "access_token=***&page=2" in text
    assert "EAAB-unregistered-token" not in text
    assert "unregistered-pw" not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET https://h/x?access_token=abc&x=1", "GET https://h/x?access_token=***&x=1"),
        ("https://h/x?a=1&hub.verify_token=abc#f", "https://h/x?a=1&hub.verify_token=***#f"),
        ("https://h/m/1?sig=abc&exp=9", "https://h/m/1?sig=***&exp=9"),
        ("postgresql://extmsg:p%40ss@db/extmsg", "postgresql://extmsg:***@db/extmsg"),
        ("https://h/x?page=2&sort=name", "https://h/x?page=2&sort=name"),
        (
            "headers=<CIMultiDictProxy('Authorization': 'Basic QUM6dG9r', 'Accept': '*/*')>",
            "headers=<CIMultiDictProxy('Authorization': 'Basic ***', 'Accept': '*/*')>",
        ),
        ('{"authorization": "Bearer EAAB-x"}', '{"authorization": "Bearer ***"}'),
        ("Authorization: token-1 and more", "Authorization: *** and more"),
        ("authorization=xyz&a=1", "authorization=***&a=1"),
    ],
)
def test_urls_lose_their_credentials(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_a_cut_never_shows_part_of_a_secret() -> None:
    text = "x" * (logsafe.REDACT_LIMIT - 3) + TOKEN + "y" * 100
    out = redact(text)
    assert TOKEN[:3] not in out
    assert out.endswith("x***…[+" + str(len(text) - logsafe.REDACT_LIMIT) + " chars]")


def test_a_normal_log_line_stays_cheap() -> None:
    register_secrets(f"secret-value-{i:04d}" for i in range(200))
    line = (
        "job 42 for sms/+417******67 sent as SM0123456789abcdef0123456789abcdef "
        "after 2 attempts (https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json)"
    )
    with cpu_time(this_thread=True) as took:
        for _ in range(10_000):
            redact(line)
    per_line = took.seconds / 10_000
    assert per_line < 50e-6  # measured: ~1.5 µs


def test_redaction_is_linear_on_hostile_text(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the cut, so that the patterns themselves are what is measured (~2 ms each).
    monkeypatch.setattr(logsafe, "REDACT_LIMIT", 10**8)
    register_secrets(f"secret-value-{i:04d}" for i in range(200))
    hostile = ("?" + "a" * 10**6, "&token" * 200_000, "://" + "a:" * 500_000)
    hostile += ("secret-value-" * 80_000, "authorization: " * 20_000)
    for text in hostile:
        with cpu_time(this_thread=True) as took:
            redact(text)
        assert took.seconds < 1.0


class _Settings(msgspec.Struct, kw_only=True, frozen=True):
    token: Secret
    backup_token: Secret | None = None

    def __post_init__(self) -> None:
        if not self.token.startswith("tok-"):
            raise ValueError(f"token {self.token!r} does not start with tok-")


MESSENGERS = {"m": MessengerType(name="m", settings=_Settings)}


def _raw(token: str, **unblu: Any) -> dict[str, Any]:
    return {
        "store": {"dsn": "postgresql://extmsg:dsn-secret-1@db/extmsg"},
        "unblu": {"password": PASSWORD, **unblu},
        "channels": [
            {
                "name": "c",
                "messenger": "m",
                "webhook_secret": "whsec-1234567",
                "settings": {"token": token, "backup_token": "backup-7654321"},
            }
        ],
    }


def test_every_declared_secret_of_a_config_is_found() -> None:
    found = set(secret_values(_raw(TOKEN), MESSENGERS))
    assert found >= {
        PASSWORD,
        "postgresql://extmsg:dsn-secret-1@db/extmsg",
        "dsn-secret-1",
        "whsec-1234567",
        TOKEN,
        "backup-7654321",
    }


def test_a_config_error_does_not_quote_a_secret() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_raw("bad-token-value", timeout="x"), MESSENGERS)
    text = str(caught.value)
    assert "token '***' does not start with tok-" in text
    assert "bad-token-value" not in text


def test_the_shipped_messengers_declare_their_secrets() -> None:
    declared = {
        name: {f.name for f in msgspec.structs.fields(m.settings) if is_secret(f.type)}
        for name, m in build_hooks().messenger_types().items()
    }
    assert declared["sms_twilio"] >= {"auth_token"}
    assert declared["whatsapp"] >= {"access_token", "app_secret", "verify_token"}
    assert declared["email_smtp"] >= {"smtp_password", "imap_password"}


def test_an_optional_secret_is_redacted_when_settings_are_shown() -> None:
    shown = redacted(_Settings(token="tok-1", backup_token="backup-7654321"))
    assert shown == {"token": "***", "backup_token": "***"}
