"""The customers' side of the sandbox: one provider fake per channel, reached over HTTP.

``extmsg serve --sandbox`` registers the fake it started for each sandbox channel
(:meth:`Customers.add`); the console then shows what the fake's customer holds
(``GET /fake/thread``, see :mod:`extmsg.testing.customer`) and writes as that customer
(``POST /fake/inbound``). Only this generic protocol is used, so a third-party messenger's fake
works the same way; a fake without ``/fake/thread`` still takes the customer's messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from .errors import ApiError

__all__ = ["CustomerSide", "Customers"]

_TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass(frozen=True)
class CustomerSide:
    """The fake behind one sandbox channel (``channel`` is the channel's name)."""

    channel: str
    messenger: str
    title: str
    url: str

    def view(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "messenger": self.messenger,
            "title": self.title,
            "url": self.url,
        }


class Customers:
    """The registered customer sides and an HTTP client to reach their fakes."""

    def __init__(self) -> None:
        self.sides: dict[str, CustomerSide] = {}
        self._session: aiohttp.ClientSession | None = None

    def add(self, channel: str, messenger: str, title: str, url: str) -> CustomerSide:
        side = CustomerSide(channel, messenger, title, url.rstrip("/"))
        self.sides[channel] = side
        return side

    def side(self, channel: str) -> CustomerSide:
        side = self.sides.get(channel)
        if side is None:
            raise ApiError.not_found(f"no customer side for channel {channel!r}")
        return side

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=_TIMEOUT)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def thread(self, channel: str) -> dict[str, Any] | None:
        """The customer's view from the fake; ``None`` when the fake has none (or is down)."""
        side = self.side(channel)
        try:
            async with self._client().get(f"{side.url}/fake/thread") as resp:
                if resp.status != 200:
                    return None
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    async def write(self, channel: str, body: dict[str, Any]) -> tuple[int, Any]:
        """Write as the customer (``POST /fake/inbound``): the fake's status and answer."""
        side = self.side(channel)
        try:
            async with self._client().post(f"{side.url}/fake/inbound", json=body) as resp:
                raw = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(502, f"the {side.title} fake did not answer: {exc}") from None
        try:
            answer: Any = json.loads(raw) if raw else None
        except ValueError:
            answer = raw
        return status, answer
