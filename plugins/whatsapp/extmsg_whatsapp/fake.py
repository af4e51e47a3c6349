"""A fake of Meta's Graph API for WhatsApp, for tests and the sandbox.

:func:`create_graph_fake` builds an aiohttp application that answers like the Cloud API:

* ``POST /{version}/{phone_number_id}/messages`` — text, template, media (by id or link),
  reactions and read receipts; real-shaped answers and errors, configurable failures per
  recipient (:meth:`GraphFake.fail`: Meta codes such as 131047 or 130429, or bare HTTP 500s);
* ``POST /{version}/{phone_number_id}/media`` — multipart upload;
* ``GET /{version}/{media_id}`` then ``GET /fake/download/{media_id}`` — the two-step media
  download, both behind the bearer token;
* ``GET /fake/messages`` — everything sent, in order; ``POST /fake/media`` adds a contact's
  file; ``POST /fake/inbound`` signs and posts a contact's message to ``webhook_url``;
  ``POST /fake/failures`` configures failures; ``GET /fake/thread`` is the contact's phone
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
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from extmsg.constant_time import equal
from extmsg.testing.customer import CustomerThread, ThreadEntry, ThreadFile, inbound_files

__all__ = [
    "FAKE",
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
@dataclass
class Failure:
    """How sends to one recipient fail: a Meta error code, or a bare HTTP status.

    :ivar times: fail this many times, then succeed; None: always.
    """

    code: int | None = None
    status: int = 400
    times: int | None = None


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


@dataclass
class GraphFake:
    """The fake's state; reachable as ``app[FAKE]``."""

    access_token: str = FAKE_ACCESS_TOKEN
    app_secret: str = FAKE_APP_SECRET
    verify_token: str = FAKE_VERIFY_TOKEN
    webhook_url: str | None = None
    #: Statuses posted to ``webhook_url`` after each accepted send, e.g. ("sent", "delivered").
    auto_statuses: tuple[str, ...] = ()
    #: Template names that exist; None: any name does.
    templates: frozenset[str] | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    media: dict[str, StoredMedia] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    #: What contacts wrote through ``/fake/inbound``, for their side of the thread.
    inbound: list[ThreadEntry] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def fail(
        self,
        recipient: str,
        code: int | None = None,
        *,
        status: int = 400,
        times: int | None = None,
    ) -> None:
        """Make sends to ``recipient`` fail (``code``: Meta error code; else HTTP ``status``)."""
        self.failures[recipient.lstrip("+")] = Failure(code=code, status=status, times=times)

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

    def _take_failure(self, recipient: str) -> Failure | None:
        failure = self.failures.get(recipient)
        if failure is None:
            return None
        if failure.times is not None:
            if failure.times <= 0:
                return None
            failure.times -= 1
        return failure


FAKE: web.AppKey[GraphFake] = web.AppKey("extmsg_whatsapp.fake", GraphFake)


def _graph_error(code: int, *, status: int = 400, details: str | None = None) -> web.Response:
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
    return web.json_response(body, status=status)


def _authorized(request: web.Request) -> bool:
    fake = request.app[FAKE]
    given = request.headers.get("Authorization", "")
    return equal(given, f"Bearer {fake.access_token}")


def _unauthorized() -> web.Response:
    return _graph_error(190, status=401)


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
    record: dict[str, Any] = {
        "kind": "read" if body.get("status") == "read" else "message",
        "phone_number_id": phone_number_id,
        "request": body,
        "at": time.time(),
    }
    fake.calls.append(record)
    if record["kind"] == "read":
        if not str(body.get("message_id", "")).startswith("wamid."):
            record["status"] = 400
            return _graph_error(131009, details="message_id is not valid")
        record["status"] = 200
        for entry in fake.inbound:
            if entry.id == body.get("message_id") and entry.state != "failed":
                entry.state = "read"
        return web.json_response({"success": True})

    recipient = str(body.get("to") or body.get("recipient") or "").lstrip("+")
    if not recipient:
        record["status"] = 400
        return _graph_error(100, details="The parameter to is required.")
    problem = _check_message(fake, body)
    if problem is not None:
        record["status"], record["error_code"] = problem.status, problem.code
        return _graph_error(problem.code or 100, status=problem.status)
    failure = fake._take_failure(recipient)
    if failure is not None:
        record["status"], record["error_code"] = failure.status, failure.code
        if failure.code is None:
            return _graph_error(2, status=failure.status)
        return _graph_error(failure.code, status=failure.status)
    wamid = new_wamid()
    record["status"], record["wamid"] = 200, wamid
    if fake.webhook_url and fake.auto_statuses:
        task = asyncio.get_running_loop().create_task(
            _post_statuses(fake, phone_number_id, wamid, recipient, body)
        )
        fake._tasks.add(task)
        task.add_done_callback(fake._tasks.discard)
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
    fake: GraphFake, phone_number_id: str, wamid: str, recipient: str, body: Mapping[str, Any]
) -> None:
    assert fake.webhook_url is not None
    record = next((c for c in fake.calls if c.get("wamid") == wamid), {})
    for state in fake.auto_statuses:
        await asyncio.sleep(0.01)
        record["delivery_status"] = state
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
        with contextlib.suppress(aiohttp.ClientError, OSError):
            await send_webhook(fake.webhook_url, fake.app_secret, payload)


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


async def _list_messages(request: web.Request) -> web.Response:
    return web.json_response({"messages": request.app[FAKE].calls})


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


async def _set_failure(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    body = await request.json()
    fake.fail(
        str(body["recipient"]),
        body.get("code"),
        status=int(body.get("status", 400)),
        times=body.get("times"),
    )
    return web.Response(status=204)


async def _clear_failures(request: web.Request) -> web.Response:
    request.app[FAKE].failures.clear()
    return web.Response(status=204)


async def _inbound(request: web.Request) -> web.Response:
    """Play a contact: ``{"phone_number_id"?, "from", "name"?, "text", "files"?}`` or a full
    ``payload``."""
    fake = request.app[FAKE]
    body = await request.json()
    target = body.get("webhook_url") or fake.webhook_url
    if not target:
        return web.json_response({"error": "no webhook_url configured"}, status=400)
    payload = body.get("payload")
    wamid = None
    written: ThreadEntry | None = None
    if payload is None:
        try:
            files = inbound_files(body)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        sender = str(body.get("from") or "14155550123").lstrip("+")
        text = str(body.get("text", ""))
        if files:
            f = files[0]
            media_id = fake.add_media(f.data, f.mime_type, f.name)
            kind = "image" if f.mime_type.startswith("image/") else "document"
            message = media_message(
                sender,
                kind,
                media_id,
                mime_type=f.mime_type,
                caption=text or None,
                filename=f.name if kind == "document" else None,
                sha256=fake.media[media_id].sha256,
                reply_to=body.get("reply_to"),
            )
            shown = [
                ThreadFile(
                    name=f.name,
                    mime_type=f.mime_type,
                    size=len(f.data),
                    url=f"/fake/media/{media_id}",
                )
            ]
        else:
            message = text_message(sender, text, reply_to=body.get("reply_to"))
            shown = []
        wamid = message["id"]
        payload = webhook_payload(
            entry(
                value(
                    str(body.get("phone_number_id") or SANDBOX_PHONE_NUMBER_ID),
                    contacts=[contact(sender, body.get("name"))],
                    messages=[message],
                )
            )
        )
        written = ThreadEntry(
            id=wamid,
            sender="customer",
            contact="+" + sender,
            text=text or None,
            timestamp=int(time.time() * 1000),
            state="sending",
            files=shown,
        )
        fake.inbound.append(written)
    status_code = await send_webhook(target, fake.app_secret, payload)
    if written is not None:
        ok = 200 <= status_code < 300
        written.state = "sent" if ok else "failed"
        written.error = None if ok else f"HTTP {status_code}"
    return web.json_response({"status": status_code, "wamid": wamid})


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
        contact="+14155550123",
        entries=entries,
        files=True,
    )
    return web.Response(body=view.encode(), content_type="application/json")


async def _stop_tasks(app: web.Application) -> None:
    tasks = list(app[FAKE]._tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def create_graph_fake(
    *,
    access_token: str = FAKE_ACCESS_TOKEN,
    app_secret: str = FAKE_APP_SECRET,
    verify_token: str = FAKE_VERIFY_TOKEN,
    webhook_url: str | None = None,
    auto_statuses: Sequence[str] = (),
    templates: Sequence[str] | None = None,
    failures: Mapping[str, int | Failure] | None = None,
) -> web.Application:
    """The fake Graph API as an aiohttp application.

    :param access_token: the bearer token every API call must carry.
    :param app_secret: signs the webhooks the fake posts.
    :param webhook_url: where ``/fake/inbound`` and automatic statuses are posted.
    :param auto_statuses: statuses to post after each accepted send.
    :param templates: the template names that exist (None: any).
    :param failures: recipient → Meta error code (131047, 130429, …), a bare HTTP status
        (500 to 599), or a :class:`Failure`.
    """
    fake = GraphFake(
        access_token=access_token,
        app_secret=app_secret,
        verify_token=verify_token,
        webhook_url=webhook_url,
        auto_statuses=tuple(auto_statuses),
        templates=None if templates is None else frozenset(templates),
    )
    for recipient, failure in (failures or {}).items():
        if isinstance(failure, Failure):
            fake.failures[recipient.lstrip("+")] = failure
        elif 500 <= failure <= 599:
            fake.fail(recipient, status=failure)
        else:
            fake.fail(recipient, failure)
    app = web.Application()
    app[FAKE] = fake
    app.router.add_get("/fake/messages", _list_messages)
    app.router.add_delete("/fake/messages", _clear_messages)
    app.router.add_get("/fake/media", _list_media)
    app.router.add_post("/fake/media", _add_media)
    app.router.add_post("/fake/failures", _set_failure)
    app.router.add_delete("/fake/failures", _clear_failures)
    app.router.add_post("/fake/inbound", _inbound)
    app.router.add_get("/fake/thread", _thread)
    app.router.add_get("/fake/media/{media_id}", _open_media)
    app.router.add_get("/fake/download/{media_id}", _download)
    app.router.add_post(r"/{version:v\d+\.\d+}/{phone_number_id:\d+}/messages", _messages)
    app.router.add_post(r"/{version:v\d+\.\d+}/{phone_number_id:\d+}/media", _upload)
    app.router.add_get(r"/{version:v\d+\.\d+}/{media_id:\d+}", _media_info)
    app.on_cleanup.append(_stop_tasks)
    return app


def create_sandbox_fake(extmsg_url: str | None = None) -> web.Application:
    """The fake as ``extmsg serve --sandbox`` runs it: contacts written through
    ``POST /fake/inbound`` reach extmsg's webhook, and every send gets sent/delivered statuses."""
    webhook = f"{extmsg_url.rstrip('/')}/messengers/whatsapp/webhook" if extmsg_url else None
    return create_graph_fake(webhook_url=webhook, auto_statuses=("sent", "delivered"))


def fake_channel_settings(base_url: str, app: web.Application | None = None) -> dict[str, str]:
    """The settings of a channel talking to a fake started with the default credentials."""
    return {
        "phone_number_id": SANDBOX_PHONE_NUMBER_ID,
        "access_token": FAKE_ACCESS_TOKEN,
        "app_secret": FAKE_APP_SECRET,
        "verify_token": FAKE_VERIFY_TOKEN,
        "api_base_url": base_url,
    }
