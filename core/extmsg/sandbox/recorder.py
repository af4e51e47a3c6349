"""A stand-in channel endpoint that records what the sandbox (or Unblu) POSTs to it.

Useful in tests: serve :meth:`WebhookRecorder.app` with ``aiohttp_server``, create a channel
whose ``webhookEndpoint`` points at it, then look at :attr:`WebhookRecorder.calls`. By default it
answers like a well-behaved middleware: ``ExternalMessengerNewMessageResponse`` with a minted
``externalMessageId``, ``ExternalMessengerMessageStateResponse``, a ``PingResponse`` echoing the
``pingId``, ``CREATE`` to ``create_contact`` (the identifier without blanks as ``sourceId``)
and ``create_conversation``, and an empty 200 to legacy webhook events. :meth:`fail_next`
scripts failures.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

__all__ = ["RecordedCall", "WebhookRecorder"]


@dataclass
class RecordedCall:
    """One POST received: ``name`` is ``x-unblu-service-name`` or ``x-unblu-event``."""

    name: str
    headers: Mapping[str, str]
    raw: bytes
    body: Any
    answered: int

    @property
    def delivery_id(self) -> str | None:
        return self.headers.get("X-Unblu-Delivery")

    @property
    def retry_no(self) -> int:
        return int(self.headers.get("X-Unblu-Retry-No", "0"))


@dataclass
class _Script:
    status: int
    body: Any = None
    delay: float = 0.0


@dataclass
class WebhookRecorder:
    """Records calls; answers by default like a correct middleware endpoint."""

    calls: list[RecordedCall] = field(default_factory=list)
    _scripts: list[_Script] = field(default_factory=list)
    _minted: int = 0
    _arrived: asyncio.Condition | None = None

    def app(self, path: str = "/unblu") -> web.Application:
        app = web.Application()
        app.router.add_post(path, self._handle)
        return app

    def fail_next(self, count: int, status: int = 500, *, delay: float = 0.0) -> None:
        """Answer the next ``count`` calls with ``status`` (after ``delay`` seconds)."""
        self._scripts.extend(
            _Script(status, {"error": "scripted failure"}, delay) for _ in range(count)
        )

    def answer_next(self, status: int, body: Any = None, *, delay: float = 0.0) -> None:
        """Answer the next call with ``status`` and ``body`` (``None``: empty)."""
        self._scripts.append(_Script(status, body, delay))

    def named(self, name: str) -> list[RecordedCall]:
        return [c for c in self.calls if c.name == name]

    async def wait_for(self, count: int, name: str | None = None, *, within: float = 5.0) -> None:
        """Wait up to ``within`` seconds for ``count`` calls (named ``name``, if given)."""
        cond = self._condition()

        def enough() -> bool:
            return len(self.calls if name is None else self.named(name)) >= count

        async with asyncio.timeout(within), cond:
            await cond.wait_for(enough)

    def _condition(self) -> asyncio.Condition:
        if self._arrived is None:
            self._arrived = asyncio.Condition()
        return self._arrived

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        name = (
            request.headers.get("x-unblu-service-name")
            or request.headers.get("x-unblu-event")
            or ""
        )
        script = self._scripts.pop(0) if self._scripts else None
        if script is not None and script.delay:
            await asyncio.sleep(script.delay)
        status, answer = (
            (script.status, script.body) if script else (200, self.default_answer(name, body))
        )
        self.calls.append(RecordedCall(name, CIMultiDict(request.headers), raw, body, status))
        cond = self._condition()
        async with cond:
            cond.notify_all()
        if answer is None:
            return web.Response(status=status)
        return web.json_response(answer, status=status)

    def default_answer(self, name: str, body: Any) -> Any:
        """What a correct middleware answers to the call ``name`` with ``body``."""
        if name == "outbound.external_messenger.new_message":
            self._minted += 1
            return {
                "$_type": "ExternalMessengerNewMessageResponse",
                "externalMessageId": f"ext-{self._minted}",
            }
        if name == "outbound.external_messenger.message_state":
            return {"$_type": "ExternalMessengerMessageStateResponse"}
        if name == "outbound.external_messenger.create_contact":
            identifier = body.get("contactIdentifier") if isinstance(body, dict) else None
            person = body.get("personData") if isinstance(body, dict) else None
            return {
                "$_type": "ExternalMessengerCreateContactCreateResponse",
                "type": "CREATE",
                "name": (person or {}).get("displayName") or identifier,
                "sourceId": "".join(str(identifier or "contact").split()),
            }
        if name == "outbound.external_messenger.create_conversation":
            self._minted += 1
            return {
                "$_type": "ExternalMessengerCreateConversationCreateResponse",
                "type": "CREATE",
                "sourceId": f"conversation-{self._minted}",
            }
        if name == "outbound.ping":
            ping_id = body.get("pingId") if isinstance(body, dict) else None
            return {"$_type": "PingResponse", "pingId": ping_id}
        return None
