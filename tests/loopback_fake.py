"""The loopback messenger's provider: records sends and read receipts, fails on demand."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .loopback_plugin import sign


class LoopbackProvider:
    def __init__(self) -> None:
        self.sends: list[dict[str, Any]] = []
        self.reads: list[str] = []
        #: recipient → HTTP status to answer instead of accepting
        self.fail: dict[str, int] = {}
        #: text → how many more times to answer 503 for it
        self.fail_text: dict[str, int] = {}
        #: how ``/find`` answers: "answer" (what it has), "unknown" (cannot tell),
        #: or an HTTP status to fail with
        self.lookup: str | int = "answer"
        self.finds: list[dict[str, Any]] = []
        #: called with (provider id, body) before a send is answered: a receipt that outruns
        #: the send's answer
        self.before_answer: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None
        self.app = web.Application()
        self.app.router.add_post("/send", self._send)
        self.app.router.add_post("/read", self._read)
        self.app.router.add_post("/find", self._find)

    async def _send(self, request: web.Request) -> web.Response:
        body = await request.json()
        status = self.fail.get(body["to"])
        if self.fail_text.get(body["text"], 0) > 0:
            self.fail_text[body["text"]] -= 1
            status = 503
        if status:
            return web.json_response({"error": f"recipient refused ({status})"}, status=status)
        self.sends.append(body)
        provider_id = f"lp-{len(self.sends)}"
        if self.before_answer is not None:
            await self.before_answer(provider_id, body)
        return web.json_response({"id": provider_id})

    async def _find(self, request: web.Request) -> web.Response:
        """A send with this ``ref`` and ``text``: ``{"id": …}``, 404 when there is none."""
        body = await request.json()
        self.finds.append(body)
        if isinstance(self.lookup, int):
            return web.json_response({"error": "lookup refused"}, status=self.lookup)
        if self.lookup == "unknown":
            return web.json_response({"id": None})
        for index, sent in enumerate(self.sends, 1):
            if sent["ref"] == body["ref"] and sent["text"] == body["text"]:
                return web.json_response({"id": f"lp-{index}"})
        return web.json_response({"error": "no such message"}, status=404)

    async def _read(self, request: web.Request) -> web.Response:
        self.reads.append((await request.json())["id"])
        return web.json_response({})


def signed(token: str, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    return body, {"x-loopback-signature": sign(token, body), "content-type": "application/json"}
