"""The loopback messenger's provider: records sends and read receipts, fails on demand."""

from __future__ import annotations

import json
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
        self.app = web.Application()
        self.app.router.add_post("/send", self._send)
        self.app.router.add_post("/read", self._read)

    async def _send(self, request: web.Request) -> web.Response:
        body = await request.json()
        status = self.fail.get(body["to"])
        if self.fail_text.get(body["text"], 0) > 0:
            self.fail_text[body["text"]] -= 1
            status = 503
        if status:
            return web.json_response({"error": f"recipient refused ({status})"}, status=status)
        self.sends.append(body)
        return web.json_response({"id": f"lp-{len(self.sends)}"})

    async def _read(self, request: web.Request) -> web.Response:
        self.reads.append((await request.json())["id"])
        return web.json_response({})


def signed(token: str, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    return body, {"x-loopback-signature": sign(token, body), "content-type": "application/json"}
