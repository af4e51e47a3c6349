"""Shared fixtures for the core's tests."""

from __future__ import annotations

import pytest

from extmsg.models import Channel


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see a developer's plugin switches or config location."""
    for name in ("EXTMSG_DISABLE_PLUGINS", "EXTMSG_TRACE_HOOKS", "EXTMSG_CONFIG", "EXTMSG_PLUGINS"):
        monkeypatch.delenv(name, raising=False)


def make_channel(name: str = "sms", messenger: str = "sms_twilio", **kw: object) -> Channel:
    fields: dict[str, object] = {
        "name": name,
        "messenger": messenger,
        "settings": None,
        "public_url": "https://connector.example.com",
        "webhook_secret": "s3cret",
    }
    fields.update(kw)
    return Channel(**fields)  # type: ignore[arg-type]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name the folder the browser tests saved their screenshots in."""
    from .browser import SAVED

    if SAVED:
        terminalreporter.write_sep("-", "console screenshots")
        terminalreporter.write_line(f"{len(SAVED)} PNG screenshots in {SAVED[0].parent}")
