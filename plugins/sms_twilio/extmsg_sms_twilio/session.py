"""The one HTTP client session the plugin shares between its channels."""

from __future__ import annotations

import asyncio
import base64

import aiohttp

from extmsg import sendguard

__all__ = ["SessionHolder", "basic_auth"]

USER_AGENT = "extmsg-sms-twilio/0.1"


class SessionHolder:
    """Opens the session at start-up (or on first use, for callers without a lifecycle, such
    as tests) and closes it at shutdown. A session belongs to one event loop; a call from
    another loop gets a fresh one."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # A send that would go out long after its job's hold is refused.
            self._session = sendguard.client_session(
                headers={"User-Agent": USER_AGENT},
                connector=aiohttp.TCPConnector(limit=100, limit_per_host=50),
            )
            self._loop = loop
        return self._session

    async def close(self) -> None:
        session, self._session, self._loop = self._session, None, None
        if session is not None and not session.closed:
            await session.close()


def basic_auth(user: str, password: str) -> str:
    """An ``Authorization`` header value for HTTP Basic auth (aiohttp drops it on a redirect
    to another origin)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
