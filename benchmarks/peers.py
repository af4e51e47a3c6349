"""The peers of ``extmsg serve`` in a benchmark, each in a process of its own.

    python benchmarks/peers.py sandbox --port 9001
    python benchmarks/peers.py twilio  --port 9002 [--status-callbacks]

``sandbox`` is the Unblu sandbox (:func:`extmsg.sandbox.create_sandbox_app`, with the settings
``extmsg sandbox`` uses) plus a ``/bench`` API:

* every ``sendMessage`` the sandbox accepts is a receipt (its ``sourceId``, the Twilio
  MessageSid, with the arrival time);
* ``POST /bench/mint {"prefix", "start", "count"}`` lets the sandbox's agent write ``count``
  messages, round robin over the active conversations, and answers the
  ``outbound.external_messenger.new_message`` request body the sandbox would deliver for each,
  without delivering it: the load generator signs and sends them at its own pace. The
  messages exist in the sandbox, so extmsg's ``messageSentSuccessfully`` reports find them.

``twilio`` is the Twilio Messages API fake of the ``sms_twilio`` plugin; every message it
accepts is a receipt, keyed by the last word of its body. Its status callbacks are off unless
``--status-callbacks``.

Both answer ``GET /bench/count?prefix=`` (``{"count", "last"}``) and
``GET /bench/receipts?prefix=`` (``{"keys", "times"}``); times are ``time.monotonic()``
seconds, which on Linux every process of the machine shares.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ACCOUNT_SID, AUTH_TOKEN, PREFIX_LEN

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AGENT = "Anna"


class Receipts:
    """Arrivals by key prefix."""

    def __init__(self) -> None:
        self.keys: dict[str, list[str]] = defaultdict(list)
        self.times: dict[str, list[float]] = defaultdict(list)

    def add(self, key: str) -> None:
        prefix = key[:PREFIX_LEN]
        self.keys[prefix].append(key)
        self.times[prefix].append(time.monotonic())

    def routes(self, app: web.Application) -> None:
        async def count(request: web.Request) -> web.Response:
            times = self.times.get(request.query.get("prefix", ""), [])
            return web.json_response({"count": len(times), "last": times[-1] if times else None})

        async def receipts(request: web.Request) -> web.Response:
            prefix = request.query.get("prefix", "")
            return web.json_response(
                {"keys": self.keys.get(prefix, []), "times": self.times.get(prefix, [])}
            )

        app.router.add_get("/bench/count", count)
        app.router.add_get("/bench/receipts", receipts)


# -- the Unblu sandbox ---------------------------------------------------------------------------
async def run_sandbox_peer(port: int) -> Callable[[], Awaitable[None]]:
    from extmsg.sandbox import SANDBOX_KEY, create_sandbox_app
    from extmsg.sandbox import outbound as sandbox_outbound
    from extmsg.sandbox.inputs import MessageContent
    from extmsg.sandbox.state import Message

    receipts = Receipts()
    app = create_sandbox_app()
    sandbox = app[SANDBOX_KEY]

    post_messenger_message = sandbox.post_messenger_message

    def counted(*args: Any, **kwargs: Any) -> Message:
        msg = post_messenger_message(*args, **kwargs)
        if msg.source_id:
            receipts.add(msg.source_id)
        return msg

    sandbox.post_messenger_message = counted  # type: ignore[method-assign]

    captured: list[Message] = []
    capturing = False
    dispatch = sandbox._dispatch_message

    def dispatch_or_capture(msg: Message) -> None:
        if capturing:
            captured.append(msg)
        else:
            dispatch(msg)

    sandbox._dispatch_message = dispatch_or_capture  # type: ignore[method-assign]

    async def mint(request: web.Request) -> web.Response:
        nonlocal capturing
        data = await request.json()
        prefix, start, count = str(data["prefix"]), int(data["start"]), int(data["count"])
        width = int(data.get("width", 24))
        state = sandbox.state
        conversations = [
            c for c in state.conversations.values() if c.is_active and c.channel_id is not None
        ]
        if not conversations:
            return web.json_response({"error": "no active conversation"}, status=409)
        items = []
        capturing = True
        try:
            for n in range(start, start + count):
                key = f"{prefix}{n:0{width - len(prefix)}x}"
                conv = conversations[n % len(conversations)]
                captured.clear()
                sandbox.post_agent_message(
                    conv.id,
                    MessageContent("TEXT", text=f"Thanks, we are looking into it. ref {key}"),
                    sender_name=AGENT,
                )
                [msg] = captured
                channel = state.channels[conv.channel_id or ""]
                _, _, body = sandbox_outbound.new_message(state, channel, conv, msg)
                raw = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
                items.append({"key": key, "body": raw})
        finally:
            capturing = False
        return web.json_response({"items": items, "conversations": len(conversations)})

    receipts.routes(app)
    app.router.add_post("/bench/mint", mint)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner.cleanup


# -- the Twilio fake ------------------------------------------------------------------------------
async def run_twilio_peer(port: int, status_callbacks: bool) -> Callable[[], Awaitable[None]]:
    from extmsg_sms_twilio.fake import create_twilio_fake

    receipts = Receipts()

    @web.middleware
    async def count_sends(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if response.status == 201 and request.path.endswith("/Messages.json"):
            form = await request.post()
            receipts.add(str(form.get("Body", "")).rpartition(" ")[2])
        return response

    app = create_twilio_fake(
        account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, callbacks=status_callbacks
    )
    app.middlewares.append(count_sends)
    receipts.routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner.cleanup


async def serve(role: str, port: int, status_callbacks: bool) -> None:
    if role == "sandbox":
        close = await run_sandbox_peer(port)
    else:
        close = await run_twilio_peer(port, status_callbacks)
    print(f"{role} ready on port {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="a peer of extmsg serve")
    parser.add_argument("role", choices=("sandbox", "twilio"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status-callbacks", action="store_true")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.role, args.port, args.status_callbacks))


if __name__ == "__main__":
    main(sys.argv[1:])
