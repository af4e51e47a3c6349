"""A fake of Meta's Graph API for WhatsApp, for tests and the sandbox.

:func:`create_graph_fake` builds an aiohttp application that answers like the Cloud API:

* ``POST /{version}/{phone_number_id}/messages`` — text, template, media (by id or link),
  reactions and read receipts; real-shaped answers and errors, configurable failures per
  recipient (:meth:`GraphFake.fail`: Meta codes such as 131047 or 130429, or bare HTTP 500s);
* ``POST /{version}/{phone_number_id}/media`` — multipart upload;
* ``GET /{version}/{media_id}`` then ``GET /fake/download/{media_id}`` — the two-step media
  download, both behind the bearer token;
* the sandbox's fake protocol (:mod:`extmsg.testing.fakes`): ``GET /fake/messages`` (every
  call, in order), ``POST /fake/inbound`` (signs and posts a contact's message to
  ``webhook_url``; also ``phone_number_id``, ``reply_to``, ``files`` or a whole ``payload``),
  ``POST /fake/failures`` (generic names, or ``{"recipient", "code", "status", "times"}``) and
  the customer's page; ``POST /fake/media`` adds a contact's file; ``GET /fake/thread`` is the
  contact's phone
  (:class:`extmsg.testing.customer.CustomerThread`) and ``GET /fake/media/{id}`` opens a file
  on it.

The module also builds webhook payloads in Meta's shape and posts them signed
(:func:`send_webhook`), so tests and the sandbox can play the contact's side. It shares no code
with the plugin's parser or signature check on purpose: it is the other side of the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from extmsg.constant_time import equal
from extmsg.testing.customer import CustomerThread, ThreadEntry, ThreadFile, inbound_files
from extmsg.testing.fakes import CustomerMessage, Failure, FakeProvider

__all__ = [
    "FAKE",
    "GRAPH_FAILURES",
    "Failure",
    "GraphFake",
    "StoredMedia",
    "contact",
    "create_graph_fake",
    "create_sandbox_fake",
    "encode",
    "entry",
    "error",
    "fake_channel_settings",
    "media_message",
    "new_wamid",
    "send_webhook",
    "sign",
    "status",
    "text_message",
    "value",
    "verify_webhook",
    "webhook_payload",
]

DEFAULT_WABA_ID = "102290129340398"
#: The fake's own credentials, used when a test or the sandbox does not choose any.
FAKE_ACCESS_TOKEN = "fake-access-token"  # noqa: S105
FAKE_APP_SECRET = "fake-app-secret"  # noqa: S105
FAKE_VERIFY_TOKEN = "fake-verify-token"  # noqa: S105
DEFAULT_DISPLAY_NUMBER = "15550783881"
SANDBOX_PHONE_NUMBER_ID = "106540352242922"

#: Meta's title and details for the codes the fake can be told to fail with.
_ERRORS: Mapping[int, tuple[str, str]] = {
    1: ("An unknown error occurred", "An unknown error occurred."),
    2: ("Service temporarily unavailable", "Service temporarily unavailable."),
    100: ("Invalid parameter", "Invalid parameter."),
    190: (
        "Error validating access token: Session has expired",
        "The access token has expired.",
    ),
    130429: ("Rate limit hit", "Cloud API message throughput has been reached."),
    131026: ("Message undeliverable", "Message could not be delivered."),
    131047: (
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number.",
    ),
    131048: ("Spam rate limit hit", "Message failed to send because there are restrictions."),
    131051: ("Unsupported message type", "Message type is not currently supported."),
    131053: ("Media upload error", "Unable to upload the media used in the message."),
    131056: (
        "(Business Account, Consumer Account) pair rate limit hit",
        "Too many messages sent from the sender phone number to the same recipient phone "
        "number in a short period of time.",
    ),
    132000: (
        "Number of parameters does not match the expected number of params",
        "body: number of localizable_params (1) does not match the expected number of params (0)",
    ),
    132001: (
        "Template name does not exist in the translation",
        "template name does not exist in the translation",
    ),
}
_MEDIA_KINDS = ("image", "video", "audio", "document", "sticker")


# --- payload builders (the contact's side) -----------------------------------------------------
def new_wamid() -> str:
    """An id shaped like WhatsApp's (``wamid.`` + base64)."""
    return "wamid.HBgL" + secrets.token_urlsafe(30).replace("-", "A").replace("_", "B") + "="


def contact(
    wa_id: str | None, name: str | None = None, *, user_id: str | None = None
) -> dict[str, Any]:
    """One ``value.contacts[]`` item."""
    item: dict[str, Any] = {"profile": {"name": name} if name else {}}
    if wa_id:
        item["wa_id"] = wa_id
    if user_id:
        item["user_id"] = user_id
    return item


def _message(
    sender: str | None,
    kind: str,
    *,
    wamid: str | None,
    timestamp: int | None,
    reply_to: str | None,
    user_id: str | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {}
    if reply_to:
        message["context"] = {"from": DEFAULT_DISPLAY_NUMBER, "id": reply_to}
    if sender:
        message["from"] = sender
    if user_id:
        message["from_user_id"] = user_id
    message.update(
        id=wamid or new_wamid(),
        timestamp=str(timestamp if timestamp is not None else int(time.time())),
        type=kind,
    )
    return message


def text_message(
    sender: str | None,
    body: str,
    *,
    wamid: str | None = None,
    timestamp: int | None = None,
    reply_to: str | None = None,
    user_id: str | None = None,
) -> dict[str, Any]:
    message = _message(
        sender, "text", wamid=wamid, timestamp=timestamp, reply_to=reply_to, user_id=user_id
    )
    message["text"] = {"body": body}
    return message


def media_message(
    sender: str,
    kind: str,
    media_id: str,
    *,
    mime_type: str,
    caption: str | None = None,
    filename: str | None = None,
    sha256: str | None = None,
    wamid: str | None = None,
    timestamp: int | None = None,
    reply_to: str | None = None,
) -> dict[str, Any]:
    message = _message(sender, kind, wamid=wamid, timestamp=timestamp, reply_to=reply_to)
    item: dict[str, Any] = {"mime_type": mime_type, "sha256": sha256 or "", "id": media_id}
    if caption is not None:
        item["caption"] = caption
    if filename is not None:
        item["filename"] = filename
    message[kind] = item
    return message


def error(code: int, title: str | None = None, details: str | None = None) -> dict[str, Any]:
    """An ``errors[]`` item as statuses and unsupported messages carry them."""
    known_title, known_details = _ERRORS.get(code, ("Error", "Error"))
    return {
        "code": code,
        "title": title or known_title,
        "message": title or known_title,
        "error_data": {"details": details or known_details},
        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
    }


def status(
    wamid: str,
    state: str,
    recipient_id: str,
    *,
    errors: Sequence[Mapping[str, Any]] = (),
    callback_data: str | None = None,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """One ``value.statuses[]`` item."""
    item: dict[str, Any] = {
        "id": wamid,
        "status": state,
        "timestamp": str(timestamp if timestamp is not None else int(time.time())),
        "recipient_id": recipient_id,
    }
    if callback_data is not None:
        item["biz_opaque_callback_data"] = callback_data
    if state != "failed":
        item["pricing"] = {
            "billable": True,
            "pricing_model": "PMP",
            "category": "service",
            "type": "free_customer_service",
        }
    if errors:
        item["errors"] = [dict(e) for e in errors]
    return item


def value(
    phone_number_id: str,
    *,
    messages: Sequence[Mapping[str, Any]] = (),
    statuses: Sequence[Mapping[str, Any]] = (),
    contacts: Sequence[Mapping[str, Any]] = (),
    display_phone_number: str = DEFAULT_DISPLAY_NUMBER,
) -> dict[str, Any]:
    """One change's ``value``: the events of one business number."""
    out: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": display_phone_number,
            "phone_number_id": phone_number_id,
        },
    }
    if contacts:
        out["contacts"] = [dict(c) for c in contacts]
    if messages:
        out["messages"] = [dict(m) for m in messages]
    if statuses:
        out["statuses"] = [dict(s) for s in statuses]
    return out


def entry(*values: Mapping[str, Any], waba_id: str = DEFAULT_WABA_ID) -> dict[str, Any]:
    """One ``entry[]`` item: a business account with one ``messages`` change per value."""
    return {"id": waba_id, "changes": [{"value": dict(v), "field": "messages"} for v in values]}


def webhook_payload(*entries: Mapping[str, Any]) -> dict[str, Any]:
    return {"object": "whatsapp_business_account", "entry": [dict(e) for e in entries]}


def encode(payload: Mapping[str, Any]) -> bytes:
    """Meta's encoding: compact, non-ASCII escaped."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign(body: bytes, app_secret: str) -> str:
    """``X-Hub-Signature-256`` for ``body``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


async def send_webhook(
    url: str,
    app_secret: str,
    payload: Mapping[str, Any],
    *,
    session: aiohttp.ClientSession | None = None,
) -> int:
    """POST ``payload`` to ``url`` as Meta does (signed); the HTTP status of the answer."""
    body = encode(payload)
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": sign(body, app_secret),
        "User-Agent": "facebookexternalua",
    }
    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            session = await stack.enter_async_context(aiohttp.ClientSession())
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status


async def verify_webhook(
    url: str,
    verify_token: str,
    challenge: str = "1158201444",
    *,
    session: aiohttp.ClientSession | None = None,
) -> tuple[int, str]:
    """Meta's GET subscription handshake; (status, body) of the answer."""
    params = {"hub.mode": "subscribe", "hub.verify_token": verify_token, "hub.challenge": challenge}
    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            session = await stack.enter_async_context(aiohttp.ClientSession())
        async with session.get(url, params=params) as resp:
            return resp.status, await resp.text()


# --- the fake API ------------------------------------------------------------------------------
#: The generic failures in the Graph API's words.
GRAPH_FAILURES: Mapping[str, Failure] = {
    "throttled": Failure(status=429, code=130429, retry_after=2.0),
    "forbidden": Failure(status=403, code=200),
    "server_error": Failure(status=503, code=2),
    "timeout": Failure(status=504, code=2, hold=30.0),
}


@dataclass
class StoredMedia:
    id: str
    data: bytes
    mime_type: str
    file_name: str | None = None
    phone_number_id: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "mime_type": self.mime_type,
            "file_name": self.file_name,
            "file_size": len(self.data),
            "sha256": self.sha256,
            "phone_number_id": self.phone_number_id,
        }


class GraphFake(FakeProvider):
    """The fake's state; reachable as ``app[FAKE]``."""

    messenger = "whatsapp"
    title = "WhatsApp Cloud API fake"
    scenarios = GRAPH_FAILURES
    customer = "+14155550123"

    def __init__(
        self,
        *,
        access_token: str = FAKE_ACCESS_TOKEN,
        app_secret: str = FAKE_APP_SECRET,
        verify_token: str = FAKE_VERIFY_TOKEN,
        webhook_url: str | None = None,
        extmsg_url: str | None = None,
        auto_statuses: Sequence[str] = (),
        templates: frozenset[str] | None = None,
        phone_number_id: str = SANDBOX_PHONE_NUMBER_ID,
    ) -> None:
        super().__init__(webhook_url=webhook_url, extmsg_url=extmsg_url)
        self.access_token = access_token
        self.app_secret = app_secret
        self.verify_token = verify_token
        #: Statuses posted to ``webhook_url`` after each accepted send, e.g. ("sent", "delivered").
        self.auto_statuses = tuple(auto_statuses)
        #: Template names that exist; None: any name does.
        self.templates = templates
        #: The business number a customer writes to when ``/fake/inbound`` names none.
        self.phone_number_id = phone_number_id
        self.media: dict[str, StoredMedia] = {}
        #: What contacts wrote through ``/fake/inbound``, for their side of the thread.
        self.inbound: list[ThreadEntry] = []

    @property
    def calls(self) -> list[dict[str, Any]]:
        """Every API call that sends (messages, read receipts), refused ones too."""
        return self.messages

    def fail(
        self,
        recipient: str,
        code: int | str | Failure | None = None,
        *,
        status: int = 400,
        times: int | None = None,
        after: int = 0,
    ) -> None:
        """Make sends to ``recipient`` fail: ``code`` a Meta error code, a failure's name or a
        :class:`~extmsg.testing.fakes.Failure`; None: a bare HTTP ``status``."""
        if isinstance(code, str):
            failure = self.failure(code)
        elif isinstance(code, Failure):
            failure = code
        else:
            failure = Failure(status=status, code=code)
        self.failures.add(recipient.lstrip("+"), failure, times=times, after=after)

    def add_media(
        self,
        data: bytes,
        mime_type: str,
        file_name: str | None = None,
        phone_number_id: str | None = None,
    ) -> str:
        """Store a file as if a contact had sent it; its media id."""
        media_id = str(secrets.randbelow(10**15) + 10**15)
        self.media[media_id] = StoredMedia(media_id, data, mime_type, file_name, phone_number_id)
        return media_id

    @property
    def sent(self) -> list[dict[str, Any]]:
        """The accepted message requests (not read receipts), in order."""
        return [c["request"] for c in self.calls if c["kind"] == "message" and c.get("wamid")]

    @property
    def reads(self) -> list[str]:
        return [c["request"].get("message_id") for c in self.calls if c["kind"] == "read"]

    def channel_settings(self, base_url: str) -> dict[str, Any]:
        return {
            "phone_number_id": self.phone_number_id,
            "access_token": self.access_token,
            "app_secret": self.app_secret,
            "verify_token": self.verify_token,
            "api_base_url": base_url,
        }

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_delete("/fake/messages", _clear_messages)
        router.add_get("/fake/media", _list_media)
        router.add_post("/fake/media", _add_media)
        router.add_get("/fake/thread", _thread)
        router.add_get("/fake/media/{media_id}", _open_media)
        router.add_get("/fake/download/{media_id}", _download)
        router.add_post(r"/{version:v\d+\.\d+}/{phone_number_id:\d+}/messages", _messages)
        router.add_post(r"/{version:v\d+\.\d+}/{phone_number_id:\d+}/media", _upload)
        router.add_get(r"/{version:v\d+\.\d+}/{media_id:\d+}", _media_info)

    def script_failure(self, data: Mapping[str, Any]) -> dict[str, Any]:
        if "recipient" not in data:
            return super().script_failure(data)
        # the fake's own shape: a Meta error code or a bare HTTP status
        code, status_code = data.get("code"), data.get("status", 400)
        if not isinstance(code, int | None) or not isinstance(status_code, int):
            raise ValueError("'code' and 'status' must be numbers")
        self.fail(str(data["recipient"]), code, status=status_code, times=data.get("times"))
        return {"recipient": data["recipient"], "code": code, "status": status_code}

    def read_customer(self, data: Mapping[str, Any]) -> CustomerMessage:
        if "payload" in data and "from" not in data:
            return CustomerMessage(sender="", text="")
        return super().read_customer(data)

    async def deliver(self, message: CustomerMessage, data: Mapping[str, Any]) -> dict[str, Any]:
        """Play a contact: the generic shape (``phone_number_id`` defaults to the sandbox's
        number; the first of ``files`` goes as an image or document) or a full ``payload``; to
        ``webhook_url`` when given, else the fake's."""
        target = data.get("webhook_url") or self.webhook_url
        if not target:
            raise ValueError("no webhook_url configured")
        payload = data.get("payload")
        wamid = None
        written: ThreadEntry | None = None
        if payload is None:
            files = inbound_files(data)
            sender = message.sender.lstrip("+")
            if not sender.isdigit():
                raise ValueError(f"'from' must be a WhatsApp number, not {message.sender!r}")
            built, shown = self._customer_message(sender, message, files, data.get("reply_to"))
            wamid = built["id"]
            number = str(data.get("phone_number_id") or self.phone_number_id)
            payload = webhook_payload(
                entry(value(number, contacts=[contact(sender, message.name)], messages=[built]))
            )
            written = ThreadEntry(
                id=wamid,
                sender="customer",
                contact="+" + sender,
                text=message.text or None,
                timestamp=int(time.time() * 1000),
                state="sending",
                files=shown,
            )
            self.inbound.append(written)
        status_code = await send_webhook(target, self.app_secret, payload, session=self.session)
        if written is not None:
            ok = 200 <= status_code < 300
            written.state = "sent" if ok else "failed"
            written.error = None if ok else f"HTTP {status_code}"
        return {"status": status_code, "wamid": wamid, "id": wamid}

    def _customer_message(
        self, sender: str, message: CustomerMessage, files: Sequence[Any], reply_to: Any
    ) -> tuple[dict[str, Any], list[ThreadFile]]:
        if not files:
            built = text_message(sender, message.text, wamid=message.id, reply_to=reply_to)
            return built, []
        f = files[0]
        media_id = self.add_media(f.data, f.mime_type, f.name)
        kind = "image" if f.mime_type.startswith("image/") else "document"
        built = media_message(
            sender,
            kind,
            media_id,
            mime_type=f.mime_type,
            caption=message.text or None,
            filename=f.name if kind == "document" else None,
            sha256=self.media[media_id].sha256,
            wamid=message.id,
            reply_to=reply_to,
        )
        url = f"/fake/media/{media_id}"
        return built, [ThreadFile(name=f.name, mime_type=f.mime_type, size=len(f.data), url=url)]


FAKE: web.AppKey[GraphFake] = web.AppKey("extmsg_whatsapp.fake", GraphFake)


def _graph_error(
    code: int, *, status: int = 400, details: str | None = None, retry_after: float | None = None
) -> web.Response:
    title, known_details = _ERRORS.get(code, ("Error", "Error"))
    body: dict[str, Any] = {
        "error": {
            "message": f"(#{code}) {title}",
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details or known_details},
            "fbtrace_id": "A" + secrets.token_hex(10),
        }
    }
    if code in (1, 2):
        body["error"]["is_transient"] = True
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
    return web.json_response(body, status=status, headers=headers)


def _authorized(request: web.Request) -> bool:
    fake = request.app[FAKE]
    given = request.headers.get("Authorization", "")
    return equal(given, f"Bearer {fake.access_token}")


def _unauthorized() -> web.Response:
    return _graph_error(190, status=401)


def _text_of(body: Mapping[str, Any]) -> str | None:
    kind = body.get("type", "text")
    item = body.get(kind)
    if not isinstance(item, Mapping):
        return None
    if kind == "text":
        return str(item.get("body", ""))
    if kind == "template":
        return f"[template {item.get('name')}]"
    caption = item.get("caption")
    return str(caption) if caption is not None else None


async def _messages(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    if not _authorized(request):
        return _unauthorized()
    phone_number_id = request.match_info["phone_number_id"]
    try:
        body = await request.json()
    except ValueError:
        return _graph_error(100, details="The request body is not JSON.")
    if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
        return _graph_error(100, details="The parameter messaging_product is required.")
    kind = "read" if body.get("status") == "read" else "message"
    recipient = str(body.get("to") or body.get("recipient") or "").lstrip("+")
    record = fake.record(
        id=str(body.get("message_id", "")) if kind == "read" else None,  # type: ignore[arg-type]
        to=recipient,
        text=_text_of(body) if kind == "message" else None,
        state="failed",
        kind=kind,
        phone_number_id=phone_number_id,
        request=body,
    )
    if kind == "read":
        if not str(body.get("message_id", "")).startswith("wamid."):
            record["status"] = 400
            return _graph_error(131009, details="message_id is not valid")
        record["status"], record["state"] = 200, "read"
        for written in fake.inbound:
            if written.id == body.get("message_id") and written.state != "failed":
                written.state = "read"
        return web.json_response({"success": True})

    if not recipient:
        record["status"] = 400
        return _graph_error(100, details="The parameter to is required.")
    problem = _check_message(fake, body)
    if problem is not None:
        record["status"], record["error_code"] = problem.status, problem.code
        return _graph_error(problem.code or 100, status=problem.status)
    failure = await fake.take_failure(recipient)
    if failure is not None:
        record["status"], record["error_code"] = failure.status, failure.code
        return _graph_error(
            failure.code if failure.code is not None else 2,
            status=failure.status,
            retry_after=failure.retry_after,
        )
    wamid = new_wamid()
    record["status"], record["wamid"], record["id"], record["state"] = 200, wamid, wamid, "sent"
    if fake.webhook_url and fake.auto_statuses:
        fake.spawn(_post_statuses(fake, phone_number_id, wamid, recipient, body, record))
    answer: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "contacts": [{"input": body.get("to") or recipient, "wa_id": recipient}],
        "messages": [{"id": wamid}],
    }
    if body.get("type") == "template":
        answer["messages"][0]["message_status"] = "accepted"
    return web.json_response(answer)


@dataclass
class _Problem:
    code: int | None
    status: int = 400


def _check_message(fake: GraphFake, body: Mapping[str, Any]) -> _Problem | None:
    kind = body.get("type", "text")
    item = body.get(kind)
    if not isinstance(item, Mapping):
        return _Problem(100)
    if kind == "text":
        text = item.get("body")
        if not isinstance(text, str) or not text or len(text) > 4096:
            return _Problem(100)
    elif kind == "template":
        name = item.get("name")
        if not isinstance(name, str) or not isinstance(item.get("language"), Mapping):
            return _Problem(100)
        if fake.templates is not None and name not in fake.templates:
            return _Problem(132001)
    elif kind in _MEDIA_KINDS:
        if "id" in item:
            if str(item["id"]) not in fake.media:
                return _Problem(131053)
        elif not isinstance(item.get("link"), str):
            return _Problem(100)
        if "caption" in item and kind in ("audio", "sticker"):
            return _Problem(100)
    elif kind != "reaction":
        return _Problem(100)
    return None


async def _post_statuses(
    fake: GraphFake,
    phone_number_id: str,
    wamid: str,
    recipient: str,
    body: Mapping[str, Any],
    record: dict[str, Any],
) -> None:
    assert fake.webhook_url is not None
    for state in fake.auto_statuses:
        await asyncio.sleep(0.01)
        payload = webhook_payload(
            entry(
                value(
                    phone_number_id,
                    statuses=[
                        status(
                            wamid,
                            state,
                            recipient,
                            callback_data=body.get("biz_opaque_callback_data"),
                        )
                    ],
                )
            )
        )
        record["state"] = record["delivery_status"] = state
        with contextlib.suppress(aiohttp.ClientError, OSError):
            await send_webhook(fake.webhook_url, fake.app_secret, payload, session=fake.session)


async def _upload(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    if not _authorized(request):
        return _unauthorized()
    try:
        form = await request.post()
    except ValueError:
        return _graph_error(100, details="Expected a multipart body.")
    upload = form.get("file")
    if form.get("messaging_product") != "whatsapp" or not isinstance(upload, web.FileField):
        return _graph_error(100, details="messaging_product and file are required.")
    data = upload.file.read()
    mime = str(form.get("type") or upload.content_type or "application/octet-stream")
    media_id = fake.add_media(
        data, mime, upload.filename, phone_number_id=request.match_info["phone_number_id"]
    )
    return web.json_response({"id": media_id})


async def _media_info(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    if not _authorized(request):
        return _unauthorized()
    stored = fake.media.get(request.match_info["media_id"])
    owner = request.query.get("phone_number_id")
    if stored is None or (owner and stored.phone_number_id and owner != stored.phone_number_id):
        return _graph_error(
            100,
            details=f"Unsupported get request. Object with ID "
            f"'{request.match_info['media_id']}' does not exist.",
        )
    url = (
        request.url.origin()
        .with_path(f"/fake/download/{stored.id}")
        .with_query(mid=stored.id, ext=str(int(time.time())))
    )
    return web.json_response(
        {
            "messaging_product": "whatsapp",
            "url": str(url),
            "mime_type": stored.mime_type,
            "sha256": stored.sha256,
            "file_size": len(stored.data),
            "id": stored.id,
        }
    )


async def _download(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    if not _authorized(request):
        # what Meta's lookaside host does without the token: no file
        return web.Response(status=404, text="Not Found")
    stored = fake.media.get(request.match_info["media_id"])
    if stored is None:
        return web.Response(status=404, text="Not Found")
    return web.Response(body=stored.data, content_type=stored.mime_type.split(";")[0])


async def _clear_messages(request: web.Request) -> web.Response:
    request.app[FAKE].calls.clear()
    return web.Response(status=204)


async def _list_media(request: web.Request) -> web.Response:
    return web.json_response({"media": [m.describe() for m in request.app[FAKE].media.values()]})


async def _add_media(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    data = await request.read()
    media_id = fake.add_media(
        data,
        request.content_type or "application/octet-stream",
        request.query.get("filename"),
    )
    return web.json_response({"id": media_id, "sha256": fake.media[media_id].sha256})


async def _open_media(request: web.Request) -> web.Response:
    """A file as the contact's phone shows it (no token: it is on the phone)."""
    stored = request.app[FAKE].media.get(request.match_info["media_id"])
    if stored is None:
        return web.Response(status=404, text="Not Found")
    return web.Response(body=stored.data, content_type=stored.mime_type.split(";")[0])


_TICKS = {"sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed"}


def _shown(request_body: Mapping[str, Any]) -> tuple[str | None, str | None, list[ThreadFile]]:
    """Text, template name and files of a message request, as the phone shows them."""
    kind = str(request_body.get("type", "text"))
    item = request_body.get(kind)
    if not isinstance(item, Mapping):
        return None, None, []
    if kind == "text":
        return str(item.get("body") or ""), None, []
    if kind == "template":
        language = item.get("language")
        code = language.get("code") if isinstance(language, Mapping) else None
        name = f"{item.get('name')}" + (f" ({code})" if code else "")
        return None, name, []
    if kind in _MEDIA_KINDS:
        url = f"/fake/media/{item['id']}" if "id" in item else item.get("link")
        name = str(item.get("filename") or kind)
        return item.get("caption"), None, [ThreadFile(name=name, url=url)]
    if kind == "reaction":
        return str(item.get("emoji") or ""), None, []
    return None, None, []


async def _thread(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    entries = list(fake.inbound)
    for n, call in enumerate(fake.calls):
        if call["kind"] != "message":
            continue
        req = call["request"]
        text, template, files = _shown(req)
        ok = bool(call.get("wamid"))
        state = _TICKS.get(str(call.get("delivery_status")), "sent") if ok else "failed"
        for f in files:
            media = fake.media.get((f.url or "").rsplit("/", 1)[-1])
            if media is not None:
                files = [
                    ThreadFile(
                        name=media.file_name or f.name,
                        mime_type=media.mime_type,
                        size=len(media.data),
                        url=f.url,
                    )
                ]
        entries.append(
            ThreadEntry(
                id=str(call.get("wamid") or f"refused-{n}"),
                sender="business",
                contact="+" + str(req.get("to") or "").lstrip("+"),
                text=text,
                template=template,
                timestamp=int(call.get("at", 0) * 1000),
                state=state,
                error=None if ok else f"refused by the Cloud API (code {call.get('error_code')})",
                files=files,
            )
        )
    entries.sort(key=lambda e: e.timestamp)
    view = CustomerThread(
        messenger="whatsapp",
        kind="chat",
        business="+" + DEFAULT_DISPLAY_NUMBER,
        contact=fake.customer,
        entries=entries,
        files=True,
    )
    return web.Response(body=view.encode(), content_type="application/json")


def create_graph_fake(
    *,
    access_token: str = FAKE_ACCESS_TOKEN,
    app_secret: str = FAKE_APP_SECRET,
    verify_token: str = FAKE_VERIFY_TOKEN,
    webhook_url: str | None = None,
    auto_statuses: Sequence[str] = (),
    templates: Sequence[str] | None = None,
    failures: Mapping[str, int | Failure] | None = None,
    extmsg_url: str | None = None,
) -> web.Application:
    """The fake Graph API as an aiohttp application.

    :param access_token: the bearer token every API call must carry.
    :param app_secret: signs the webhooks the fake posts.
    :param webhook_url: where ``/fake/inbound`` and automatic statuses are posted.
    :param auto_statuses: statuses to post after each accepted send.
    :param templates: the template names that exist (None: any).
    :param failures: recipient → Meta error code (131047, 130429, …), a bare HTTP status
        (500 to 599), or a :class:`~extmsg.testing.fakes.Failure`.
    """
    fake = GraphFake(
        access_token=access_token,
        app_secret=app_secret,
        verify_token=verify_token,
        webhook_url=webhook_url,
        extmsg_url=extmsg_url,
        auto_statuses=tuple(auto_statuses),
        templates=None if templates is None else frozenset(templates),
    )
    for recipient, failure in (failures or {}).items():
        if isinstance(failure, Failure):
            fake.fail(recipient, failure)
        elif 500 <= failure <= 599:
            fake.fail(recipient, status=failure)
        else:
            fake.fail(recipient, failure)
    app = fake.create_app()
    app[FAKE] = fake
    return app


def create_sandbox_fake(
    extmsg_url: str | None = None, webhook_url: str | None = None
) -> web.Application:
    """The fake as ``extmsg serve --sandbox`` runs it: contacts written through
    ``POST /fake/inbound`` reach the sandbox channel's ``webhook_url`` (by default extmsg's
    WhatsApp webhook), and every send gets sent/delivered statuses."""
    if webhook_url is None and extmsg_url:
        webhook_url = f"{extmsg_url.rstrip('/')}/messengers/whatsapp/webhook"
    return create_graph_fake(
        webhook_url=webhook_url, extmsg_url=extmsg_url, auto_statuses=("sent", "delivered")
    )


def fake_channel_settings(base_url: str, app: web.Application | None = None) -> dict[str, Any]:
    """The settings of a channel talking to the fake ``app`` (by default one started with the
    default credentials)."""
    fake = app[FAKE] if app is not None and FAKE in app else GraphFake()
    return fake.channel_settings(base_url)
