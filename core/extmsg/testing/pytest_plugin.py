"""pytest fixtures for people who write extmsg plugins (and for extmsg's own tests).

Installed with extmsg as the pytest plugin ``extmsg``:

* ``unblu_sandbox`` — a running Unblu sandbox (``.base_url`` for a client, ``.sandbox`` state);
* ``make_hooks`` — the typed hook facade over the core defaults plus the plugins you pass,
  without other installed plugins, exactly as the core calls them;
* ``channel_factory`` — builds :class:`~extmsg.models.Channel` values for hook calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from extmsg.models import Channel
from extmsg.plugins import Hooks, build_hooks


@pytest.fixture
def make_hooks() -> Callable[..., Hooks]:
    def make(*plugins: object) -> Hooks:
        return build_hooks(entry_points=False, extra=plugins, disabled=())

    return make


@pytest.fixture
def channel_factory() -> Callable[..., Channel]:
    def make(messenger: str, settings: Any = None, **kw: Any) -> Channel:
        fields: dict[str, Any] = {
            "name": kw.pop("name", messenger.replace("_", "-")),
            "messenger": messenger,
            "settings": settings,
            "public_url": "https://connector.example.com",
            "webhook_secret": "webhook-secret",
        }
        fields.update(kw)
        return Channel(**fields)

    return make


@pytest.fixture
async def unblu_sandbox() -> AsyncIterator[Any]:
    from extmsg.sandbox import run_sandbox

    server = await run_sandbox("127.0.0.1", 0, retry_backoff=0.05, retry_backoff_max=0.2)
    try:
        yield server
    finally:
        await server.close()
