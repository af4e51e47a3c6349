"""The parts every provider fake repeats, and the sandbox's fake protocol.

A provider fake is an aiohttp application that plays the provider's API for tests and for
``extmsg serve --sandbox``. Subclass :class:`FakeProvider`, add the provider's own routes and
say how a customer's message is signed and posted; the kit brings the rest:

* recording what was sent (:meth:`FakeProvider.record`, with delivery states);
* scripted failures per recipient (:meth:`FakeProvider.fail`): ``throttled`` (429 with
  ``Retry-After``), ``forbidden`` (403, permanent), ``server_error`` (503) and ``timeout``
  (the answer is held until the caller gives up), ``times`` and ``after`` counts;
* background work (status callbacks) and an HTTP session that end with the application;
* a customer's message posted to extmsg signed the provider's way (:meth:`FakeProvider.inject`);
* the sandbox's fake protocol, which every fake speaks:

  ``POST /fake/inbound``  ``{"from": ADDRESS, "text": TEXT, "name"?: NAME, "id"?: ID,
  "files"?: [...]}``
      a customer writes. ``id`` is the provider's message id to use (the same id twice is a
      redelivery); without it the fake mints one as the provider would. ``files`` (pictures,
      documents) as :mod:`extmsg.testing.customer` describes, where the provider carries them.
      Answers
      ``{"status": <extmsg's HTTP status>, "id": <the provider's message id>, ...}``; 400 naming
      the field when the shape is wrong; 502 when extmsg cannot be reached. Fakes accept more
      fields of their own (Twilio's ``params``, WhatsApp's ``phone_number_id``, a mail's
      ``subject``).
  ``GET /fake/messages``
      ``{"messages": [...]}``, everything sent, oldest first. Every item has ``id`` (the
      provider's id), ``to`` (the contact's address), ``text``, ``at`` (epoch seconds) and
      ``state`` (``sent``, ``delivered``, ``read`` or ``failed``), beside the provider's own
      fields.
  ``POST /fake/failures``  ``{"to": ADDRESS, "failure": NAME, "times"?: N, "after"?: N}``
      script a failure for sends to ``to`` (names: :data:`GENERIC_FAILURES` plus the fake's
      own); ``DELETE /fake/failures`` clears them.
  ``GET /``
      a page to write as the customer and read the replies.
  ``GET /fake/thread``
      the customer's device for the sandbox console (:mod:`extmsg.testing.customer`): by
      default built from what the customer wrote and ``/fake/messages``'s generic fields
      (:meth:`FakeProvider.customer_thread`); a fake may serve its own.

:meth:`FakeProvider.declare` turns the class into the :class:`~extmsg.models.ProviderFake`
a plugin returns from ``extmsg_provider_fakes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import inspect
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, ClassVar, Literal

import aiohttp
import msgspec
from aiohttp import web

from ..models import MessengerType, ProviderFake
from .customer import CustomerThread, ThreadEntry, now_ms

__all__ = [
    "FAKE",
    "GENERIC_FAILURES",
    "CustomerMessage",
    "Failure",
    "FailureScript",
    "FakeProvider",
    "Posted",
    "call_factory",
    "sandbox_webhook_url",
]


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """How a scripted send fails.

    :ivar status: the HTTP status the fake answers (a fake may answer in its own protocol).
    :ivar code: the provider's error code, where it has codes.
    :ivar message: the provider's error text.
    :ivar retry_after: seconds for a ``Retry-After`` header.
    :ivar hold: keep the caller waiting this long before answering: a timeout, for a client
        with a shorter one.
    """

    status: int
    code: Any = None
    message: str = ""
    retry_after: float | None = None
    hold: float | None = None


#: The failures every fake can be told to produce, one per class of error the delivery
#: engine tells apart.
GENERIC_FAILURES: Mapping[str, Failure] = {
    "throttled": Failure(status=429, message="Too Many Requests", retry_after=2.0),
    "forbidden": Failure(status=403, message="Forbidden"),
    "server_error": Failure(status=503, message="Service Unavailable"),
    "timeout": Failure(status=504, message="Gateway Timeout", hold=30.0),
}


class _Scripted(msgspec.Struct, kw_only=True):
    failure: Any
    times: int | None
    after: int


class FailureScript:
    """Failures scripted per recipient: each is taken by the sends to that recipient."""

    def __init__(self) -> None:
        self._by_recipient: dict[str, _Scripted] = {}

    def add(self, to: str, failure: Any, *, times: int | None = None, after: int = 0) -> None:
        """Fail sends to ``to`` (``times`` of them, or until cleared) once ``after`` went
        through."""
        if times is not None and (not isinstance(times, int) or times < 1):
            raise ValueError(f"times must be a positive whole number, not {times!r}")
        if not isinstance(after, int) or after < 0:
            raise ValueError(f"after must be a whole number of sends, not {after!r}")
        self._by_recipient[to] = _Scripted(failure=failure, times=times, after=after)

    def take(self, to: str) -> Any:
        """The failure the next send to ``to`` meets, or None; counts it."""
        scripted = self._by_recipient.get(to)
        if scripted is None:
            return None
        if scripted.after > 0:
            scripted.after -= 1
            return None
        if scripted.times is not None:
            scripted.times -= 1
            if scripted.times <= 0:
                del self._by_recipient[to]
        return scripted.failure

    def clear(self) -> None:
        self._by_recipient.clear()

    def __contains__(self, to: str) -> bool:
        return to in self._by_recipient

    def __len__(self) -> int:
        return len(self._by_recipient)


class CustomerMessage(msgspec.Struct, frozen=True, kw_only=True):
    """The generic shape of ``POST /fake/inbound``: a customer writes."""

    sender: str = msgspec.field(name="from")
    text: str = ""
    name: str | None = None
    id: str | None = None


class Posted(msgspec.Struct, frozen=True, kw_only=True):
    """What extmsg answered to a request a fake posted to it."""

    status: int
    body: str = ""
    content_type: str = ""


class FakeProvider:
    """Base of a provider fake. Subclasses set :attr:`messenger` and :attr:`title` and
    implement :meth:`add_routes`, :meth:`channel_settings` and :meth:`deliver`."""

    #: The messenger type the fake plays the provider of.
    messenger: ClassVar[str] = ""
    #: Shown on the customer page and by ``extmsg serve --sandbox``.
    title: ClassVar[str] = ""
    #: Named failures ``fail`` and ``POST /fake/failures`` know, beside the generic ones.
    scenarios: ClassVar[Mapping[str, Any]] = {}
    #: The customer page's default sender.
    customer: ClassVar[str] = "+14155550123"
    #: How the sandbox console draws the customer's device: ``sms``, ``chat`` or ``email``.
    thread_kind: ClassVar[Literal["sms", "chat", "email"]] = "chat"

    def __init__(self, *, webhook_url: str | None = None, extmsg_url: str | None = None) -> None:
        #: Where customer messages are posted: the sandbox channel's webhook.
        self.webhook_url = webhook_url
        #: Where extmsg listens, for fakes that post elsewhere than ``webhook_url``.
        self.extmsg_url = extmsg_url.rstrip("/") if extmsg_url else None
        #: Everything sent, oldest first, as ``GET /fake/messages`` lists it.
        self.messages: list[dict[str, Any]] = []
        self.failures = FailureScript()
        self.session: aiohttp.ClientSession | None = None
        #: The fake's own origin as its last caller reached it (for file URLs it hands out).
        self.own_url = ""
        #: What customers wrote through ``/fake/inbound``, for :meth:`customer_thread`.
        self.written: list[ThreadEntry] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = asyncio.Event()

    # -- to implement -----------------------------------------------------------------------
    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Add the provider's API routes."""

    def channel_settings(self, base_url: str) -> dict[str, Any]:
        """The ``settings`` of a channel talking to this fake, served at ``base_url``."""
        raise NotImplementedError

    def read_customer(self, data: Mapping[str, Any]) -> CustomerMessage:
        """The customer's message in a ``/fake/inbound`` body; raise ``msgspec.ValidationError``
        or ``ValueError`` naming what is wrong. Override to fill in from the fake's own fields."""
        return msgspec.convert(data, CustomerMessage, strict=False)

    async def deliver(self, message: CustomerMessage, data: Mapping[str, Any]) -> dict[str, Any]:
        """Post ``message`` to extmsg as the provider would (see :meth:`post_signed`).
        ``data`` is the whole ``/fake/inbound`` body, for the fake's own fields. Answer at
        least ``{"status": extmsg's status, "id": the provider's message id}``."""
        raise NotImplementedError

    # -- recording --------------------------------------------------------------------------
    def record(
        self, *, id: str, to: str, text: str | None, state: str = "sent", **fields: Any
    ) -> dict[str, Any]:
        """Keep a sent message; returns the record (change it in place as it moves on)."""
        entry = {**fields, "id": id, "to": to, "text": text, "at": time.time(), "state": state}
        self.messages.append(entry)
        return entry

    # -- failures ---------------------------------------------------------------------------
    def failure(self, name: str) -> Any:
        """The named failure: one of the fake's :attr:`scenarios` or :data:`GENERIC_FAILURES`."""
        known = {**GENERIC_FAILURES, **self.scenarios}
        if name not in known:
            raise ValueError(f"unknown failure {name!r} (known: {', '.join(sorted(known))})")
        return known[name]

    def fail(
        self, to: str, failure: str | Any, *, times: int | None = None, after: int = 0
    ) -> None:
        """Make sends to ``to`` fail with ``failure`` (a name, or a failure value)."""
        self.failures.add(
            to, self.failure(failure) if isinstance(failure, str) else failure, times=times,
            after=after,
        )  # fmt: skip

    def clear_failures(self) -> None:
        self.failures.clear()

    async def take_failure(self, to: str) -> Any:
        """The failure the send to ``to`` meets (None: it goes through), after holding the
        caller as long as the failure says."""
        failure = self.failures.take(to)
        hold = getattr(failure, "hold", None)
        if hold:
            # held until the caller gave up, or the fake shuts down (not for ``hold`` more)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), hold)
        return failure

    def failure_response(self, failure: Any) -> web.Response:
        """A failure as a JSON error answer (``{"error", "code"}``, ``Retry-After`` when set);
        fakes of providers with their own error shape answer their own."""
        headers = {"Retry-After": f"{failure.retry_after:g}"} if failure.retry_after else {}
        body = {"error": failure.message, "code": failure.code}
        return web.json_response(body, status=failure.status, headers=headers)

    # -- background work --------------------------------------------------------------------
    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` in the background; it is cancelled when the fake stops."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait_idle(self) -> None:
        """Wait until the background work (status callbacks) is done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
            self.session = None

    # -- the customer -----------------------------------------------------------------------
    async def inject(self, message: CustomerMessage, **data: Any) -> dict[str, Any]:
        """A customer writes ``message`` to extmsg through this fake."""
        return await self.deliver(message, data)

    async def post_signed(
        self, url: str, *, body: bytes | None = None, data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Posted:  # fmt: skip
        """POST to extmsg (a body, or form ``data``), as the provider calls its webhooks."""
        async with contextlib.AsyncExitStack() as stack:
            session = self.session
            if session is None:
                session = await stack.enter_async_context(aiohttp.ClientSession())
            async with session.post(
                url, data=body if body is not None else data, headers=dict(headers or {}),
                timeout=aiohttp.ClientTimeout(total=30),
            ) as resp:  # fmt: skip
                text = await resp.text(errors="replace")
                return Posted(status=resp.status, body=text, content_type=resp.content_type)

    # -- the application --------------------------------------------------------------------
    def create_app(self) -> web.Application:
        """The fake's application: the provider's routes and the sandbox's fake protocol."""
        app = web.Application()
        app[FAKE] = self

        async def lifecycle(_: web.Application) -> AsyncIterator[None]:
            await self.start()
            yield
            await self.stop()

        async def closing(_: web.Application) -> None:
            self._closing.set()

        app.cleanup_ctx.append(lifecycle)
        app.on_shutdown.append(closing)
        self.add_routes(app.router)
        app.router.add_get("/fake/messages", self.http_messages)
        app.router.add_post("/fake/inbound", self.http_inbound)
        app.router.add_post("/fake/failures", self.http_fail)
        app.router.add_delete("/fake/failures", self.http_clear_failures)
        app.router.add_get("/", self.http_page)
        if not any(r.canonical == "/fake/thread" for r in app.router.resources()):
            app.router.add_get("/fake/thread", self.http_thread)
        return app

    async def http_messages(self, request: web.Request) -> web.Response:
        return web.json_response({"messages": self.messages})

    async def http_inbound(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        if isinstance(data, web.Response):
            return data
        self.own_url = str(request.url.origin())
        try:
            message = self.read_customer(data)
        except (msgspec.ValidationError, ValueError) as exc:
            return _problem(400, f"/fake/inbound: {exc} (expected {{'from', 'text'}})")
        written = ThreadEntry(
            id="", sender="customer", contact=message.sender, text=message.text or None,
            timestamp=now_ms(), state="sending",
        )  # fmt: skip
        try:
            answer = await self.deliver(message, data)
        except ValueError as exc:
            return _problem(400, f"/fake/inbound: {exc}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return _problem(502, f"extmsg could not be reached: {type(exc).__name__}: {exc}")
        status = answer.get("status")
        written.id = str(answer.get("id") or f"written-{len(self.written)}")
        written.state = "sent" if isinstance(status, int) and status < 300 else "failed"
        written.error = None if written.state == "sent" else f"extmsg answered {status}"
        self.written.append(written)
        return web.json_response(answer)

    def customer_thread(self) -> CustomerThread:
        """The customer's device for the sandbox console (``GET /fake/thread``): what they
        wrote through ``/fake/inbound`` and what was sent to them, from the generic fields.
        Fakes that show more (pictures, templates, subjects) override it or serve their own
        route."""
        entries = list(self.written)
        for m in self.messages:
            if m.get("to") is None or m.get("kind", "message") != "message":
                continue
            entries.append(
                ThreadEntry(
                    id=str(m["id"]), sender="business", contact=str(m["to"]),
                    text=m.get("text"), timestamp=int(m["at"] * 1000),
                    state=str(m.get("state") or "sent"),
                )
            )  # fmt: skip
        entries.sort(key=lambda e: e.timestamp)
        return CustomerThread(
            messenger=self.messenger, kind=self.thread_kind, business=self.title,
            contact=self.customer, entries=entries, page="/",
        )  # fmt: skip

    async def http_thread(self, request: web.Request) -> web.Response:
        return web.Response(body=self.customer_thread().encode(), content_type="application/json")

    def script_failure(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Script what a ``POST /fake/failures`` body asks for; its answer. Raise
        ``ValueError`` naming what is wrong. Override to accept a shape of the fake's own."""
        to, name = data.get("to"), data.get("failure", data.get("scenario"))
        if not isinstance(to, str) or not to or not isinstance(name, str):
            raise ValueError("give 'to' and 'failure' as strings")
        self.fail(to, name, times=data.get("times"), after=data.get("after") or 0)
        return {"to": to, "failure": name}

    async def http_fail(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        if isinstance(data, web.Response):
            return data
        try:
            return web.json_response(self.script_failure(data))
        except ValueError as exc:
            return _problem(400, f"/fake/failures: {exc}")

    async def http_clear_failures(self, request: web.Request) -> web.Response:
        self.clear_failures()
        return web.json_response({"failures": {}})

    async def http_page(self, request: web.Request) -> web.Response:
        title = html.escape(self.title or f"{self.messenger} fake")
        page = _PAGE.replace("{title}", title).replace("{customer}", html.escape(self.customer))
        return web.Response(text=page, content_type="text/html")

    # -- declaration ------------------------------------------------------------------------
    @classmethod
    def declare(
        cls, *, description: str = "", name: str | None = None, **options: Any
    ) -> ProviderFake:
        """The :class:`~extmsg.models.ProviderFake` of this class for ``extmsg_provider_fakes``:
        ``extmsg serve --sandbox`` builds it with ``extmsg_url`` and ``webhook_url`` (the
        sandbox channel's webhook) and ``options``."""

        def factory(
            *, extmsg_url: str | None = None, webhook_url: str | None = None
        ) -> web.Application:
            return cls(extmsg_url=extmsg_url, webhook_url=webhook_url, **options).create_app()

        def channel_settings(base_url: str, app: web.Application) -> dict[str, Any]:
            return app[FAKE].channel_settings(base_url)

        return ProviderFake(
            messenger=cls.messenger,
            name=name or cls.title or cls.messenger,
            factory=factory,
            channel_settings=channel_settings,
            description=description,
        )


#: Where a kit-built fake keeps its state in its application.
FAKE = web.AppKey("extmsg.testing.fake", FakeProvider)


def sandbox_webhook_url(extmsg_url: str, mtype: MessengerType | None, channel: str) -> str | None:
    """Where a provider posts a customer's message for ``channel`` of extmsg at ``extmsg_url``:
    the messenger's first ``events`` route (None: it has none)."""
    if mtype is None:
        return None
    base = extmsg_url.rstrip("/")
    for route in mtype.routes:
        if route.kind == "events":
            path = route.path.lstrip("/")
            if route.scope == "channel":
                return f"{base}/channels/{channel}/{path}"
            return f"{base}/messengers/{mtype.name}/{path}"
    return None


def call_factory(factory: Callable[..., Any], **kwargs: Any) -> Any:
    """Call a fake's factory with the keyword arguments it accepts (older factories take
    ``extmsg_url`` only)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return factory(**kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory(**kwargs)
    return factory(**{k: v for k, v in kwargs.items() if k in params})


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        data = await request.json()
    except ValueError:
        return _problem(400, f"{request.path}: the body is not JSON")
    if not isinstance(data, dict):
        return _problem(400, f"{request.path}: the body must be a JSON object")
    return data


def _problem(status: int, error: str) -> web.Response:
    return web.json_response({"error": error}, status=status)


_PAGE = """<!doctype html>
<html lang="en"><meta charset="utf-8"><title>{title}</title>
<body style="font-family: sans-serif; max-width: 40em; margin: 2em auto">
<h1>{title}</h1>
<p>Write to the sandbox channel as a customer. What the customer received:
<a href="/fake/messages">/fake/messages</a>.</p>
<form id="f"><label>From <input name="from" value="{customer}"></label>
<label>Message <input name="text" size="40" required></label> <button>Send</button></form>
<pre id="out"></pre>
<h2>Received</h2>
<ul id="received"></ul>
<script>
const form = document.getElementById("f");
form.onsubmit = async (e) => {
  e.preventDefault();
  const data = Object.fromEntries(new FormData(form));
  const r = await fetch("/fake/inbound", {method: "POST", body: JSON.stringify(data),
                                          headers: {"Content-Type": "application/json"}});
  document.getElementById("out").textContent = JSON.stringify(await r.json(), null, 2);
};
async function refresh() {
  const r = await fetch("/fake/messages");
  const who = form.elements.from.value;
  const list = document.getElementById("received");
  list.replaceChildren(...(await r.json()).messages.filter((m) => m.to === who ||
      m.to === who.replace(/^\\+/, "")).map((m) => {
    const li = document.createElement("li");
    li.textContent = `${m.text ?? "(no text)"} \u2014 ${m.state}`;
    return li;
  }));
}
setInterval(refresh, 2000);
refresh();
</script>
</body></html>
"""
