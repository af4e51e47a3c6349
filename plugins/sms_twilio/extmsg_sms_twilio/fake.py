"""A fake of Twilio's Messages API for tests and the sandbox.

It answers like Twilio does (JSON shapes, status codes, error bodies), records every send, fires
signed status callbacks (``queued`` → ``sent`` → ``delivered``, or a failure with an
``ErrorCode``) to each message's ``StatusCallback``, serves MMS media behind Basic auth with
Twilio's redirect, and signs inbound webhooks it is asked to deliver.

Endpoints:

- ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``: create (Basic auth)
- ``GET  /2010-04-01/Accounts/{AccountSid}/Messages.json``: list (Basic auth), newest first,
  filtered by ``To``, ``From`` and ``DateSent`` / ``DateSent<`` / ``DateSent>`` (on, on or
  before, on or after a UTC day; messages not sent yet have no ``date_sent`` and never match a
  date filter), paged by ``PageSize`` (default 50, at most 1000) with ``next_page_uri``
- ``GET  /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json``: fetch (Basic auth)
- ``GET  /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}/Media/{MediaSid}``: media (Basic auth,
  302 to the content on another origin, as Twilio redirects to pre-signed storage: from
  ``127.0.0.1`` to ``localhost`` on the same port and the other way round)
- ``GET  /fake/media/{MediaSid}?X-Amz-Signature=…``: the "storage" answer. Like pre-signed
  storage it refuses a request that also carries an ``Authorization`` header (400), so a client
  that forwards Twilio credentials across the redirect fails here
- the sandbox's fake protocol (:mod:`extmsg.testing.fakes`): ``GET /fake/messages`` (every
  send, newest last, with its callbacks' outcome; ``callbacks`` beside), ``POST /fake/failures``
  ``{"to": "+1…", "failure": "opted_out", "times": 1, "after": 0}`` (Twilio's scenarios below
  and the generic ones; ``after``: the next ``n`` sends go through first, e.g. part two of a
  split message fails), ``POST /fake/inbound`` (a signed inbound SMS, MMS with ``files``;
  also ``body`` for the text, ``url``, ``channel``, ``params`` overriding Twilio's parameters)
  and the customer's page at ``/``
- ``GET  /fake/thread``: the customer's phone, as :class:`extmsg.testing.customer.CustomerThread`
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import aiohttp
import msgspec
from aiohttp import web

from extmsg.testing.customer import CustomerThread, ThreadEntry, ThreadFile, inbound_files
from extmsg.testing.fakes import CustomerMessage, Failure, FakeProvider

from .segments import count_segments
from .signature import compute_signature

__all__ = [
    "SANDBOX_ACCOUNT_SID",
    "SANDBOX_AUTH_TOKEN",
    "SANDBOX_CHANNEL",
    "SANDBOX_FROM_NUMBER",
    "SCENARIOS",
    "TWILIO_FAKE",
    "FakeFailure",
    "FakeTwilio",
    "InboundResult",
    "create_twilio_fake",
    "fake_channel_settings",
    "inbound_params",
    "new_sid",
    "send_inbound",
]

log = logging.getLogger("extmsg.sms_twilio.fake")

API_VERSION = "2010-04-01"
#: Credentials of the sandbox's Twilio channel (``extmsg serve --sandbox``); not secrets.
SANDBOX_ACCOUNT_SID = "AC" + "5a4d" * 8
SANDBOX_AUTH_TOKEN = "sandbox-twilio-auth-token"  # noqa: S105
SANDBOX_FROM_NUMBER = "+15005550006"
#: The channel ``extmsg serve --sandbox`` creates for this fake.
SANDBOX_CHANNEL = "sms-twilio-sandbox"
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_MAX_BODY = 1600


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two letters and 32 hex digits."""
    return prefix + uuid.uuid4().hex


def _rfc2822(at: float | None = None) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(at))


class FakeFailure(Failure, frozen=True, kw_only=True):
    """A scripted failure for one destination number.

    :ivar status: HTTP status of the create call; ``201`` means Twilio accepts the message and
        the failure comes later, in the status callback.
    :ivar code: Twilio's error code (in the error body, or the callback's ``ErrorCode``).
    :ivar message: Twilio's error message (``{to}`` is replaced by the number).
    :ivar final_status: the callback's last status for accepted-then-failed messages.
    """

    final_status: str = "undelivered"


#: Named failures, as the sandbox and the tests script them.
SCENARIOS: dict[str, FakeFailure] = {
    "invalid_number": FakeFailure(
        status=400, code=21211, message="The 'To' number {to} is not a valid phone number."
    ),
    "opted_out": FakeFailure(
        status=400, code=21610, message="Attempt to send to unsubscribed recipient"
    ),
    "not_mobile": FakeFailure(
        status=400, code=21614, message="'To' number is not a valid mobile number"
    ),
    "geo_blocked": FakeFailure(
        status=400,
        code=21408,
        message="Permission to send an SMS has not been enabled for the region indicated by "
        "the 'To' number: {to}.",
    ),
    "unknown_error": FakeFailure(
        status=400, code=21999, message="Something Twilio-specific went wrong."
    ),
    "throttled": FakeFailure(status=429, code=20429, message="Too Many Requests", retry_after=2),
    "forbidden": FakeFailure(status=403, code=20003, message="Permission Denied"),
    "server_error": FakeFailure(
        status=500, code=20500, message="An internal server error has occurred"
    ),
    "unavailable": FakeFailure(status=503, code=None, message="Service Unavailable"),
    "timeout": FakeFailure(status=504, code=None, message="Gateway Timeout", hold=30.0),
    "unreachable": FakeFailure(status=201, code=30003, message="Unreachable destination handset"),
    "unknown_destination": FakeFailure(
        status=201, code=30005, message="Unknown destination handset"
    ),
    "landline": FakeFailure(status=201, code=30006, message="Landline or unreachable carrier"),
    "carrier_filtered": FakeFailure(status=201, code=30007, message="Message filtered"),
    "carrier_failed": FakeFailure(
        status=201, code=30008, message="Unknown error", final_status="failed"
    ),
}


class InboundResult(msgspec.Struct, frozen=True, kw_only=True):
    """What the webhook receiver answered to a delivered inbound message."""

    status: int
    body: str
    content_type: str
    params: dict[str, str]


def inbound_params(
    *,
    from_: str,
    to: str,
    body: str = "",
    account_sid: str,
    media: Sequence[tuple[str, str]] = (),
    message_sid: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The parameters Twilio posts for an incoming SMS (``media``: ``(url, content type)``)."""
    sid = message_sid or new_sid("MM" if media else "SM")
    params = {
        "ToCountry": "US",
        "SmsMessageSid": sid,
        "NumMedia": str(len(media)),
        "SmsSid": sid,
        "SmsStatus": "received",
        "Body": body,
        "To": to,
        "NumSegments": str(count_segments(body).segments),
        "MessageSid": sid,
        "AccountSid": account_sid,
        "From": from_,
        "ApiVersion": API_VERSION,
    }
    for index, (url, content_type) in enumerate(media):
        params[f"MediaUrl{index}"] = url
        params[f"MediaContentType{index}"] = content_type
    params.update(extra or {})
    return params


async def send_inbound(
    url: str,
    auth_token: str,
    params: Mapping[str, str],
    *,
    session: aiohttp.ClientSession | None = None,
) -> InboundResult:
    """POST ``params`` to ``url`` as Twilio does: form-encoded, with ``X-Twilio-Signature``.

    Missing ``MessageSid``/``SmsSid``/``SmsMessageSid`` get one fresh SID.
    """
    params = dict(params)
    sid = params.get("MessageSid") or params.get("SmsSid") or new_sid("SM")
    for key in ("MessageSid", "SmsSid", "SmsMessageSid"):
        params.setdefault(key, sid)
    pairs = list(params.items())
    headers = {
        "X-Twilio-Signature": compute_signature(url, pairs, auth_token),
        "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
        "User-Agent": "TwilioProxy/1.1",
        "Accept": "*/*",
    }
    own = session is None
    http = session or aiohttp.ClientSession()
    try:
        async with http.post(url, data=pairs, headers=headers) as response:
            text = await response.text()
            return InboundResult(
                status=response.status,
                body=text,
                content_type=response.content_type,
                params=params,
            )
    finally:
        if own:
            await http.close()


class FakeTwilio(FakeProvider):
    """The fake's state: accounts, scripted failures, recorded sends, callbacks in flight."""

    messenger = "sms_twilio"
    title = "Twilio fake"
    scenarios = SCENARIOS

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        failures: Mapping[str, str | FakeFailure] | None = None,
        callback_delay: float = 0.01,
        callbacks: bool = True,
        extmsg_url: str | None = None,
        webhook_url: str | None = None,
        from_number: str = SANDBOX_FROM_NUMBER,
    ) -> None:
        super().__init__(webhook_url=webhook_url, extmsg_url=extmsg_url)
        self.account_sid = account_sid
        self.from_number = from_number
        self.auth_token = auth_token
        self.callback_delay = callback_delay
        self.callbacks_enabled = callbacks
        #: What customers wrote through ``/fake/inbound``, for their side of the thread.
        self.inbound: list[ThreadEntry] = []
        self.callbacks: list[dict[str, Any]] = []
        self.media: dict[str, tuple[bytes, str]] = {}
        self.storage_signatures: dict[str, str] = {}
        for number, scenario in (failures or {}).items():
            self.fail(number, scenario)

    def channel_settings(self, base_url: str) -> dict[str, Any]:
        return {
            "account_sid": self.account_sid,
            "auth_token": self.auth_token,
            "from_number": self.from_number,
            "api_base_url": base_url,
        }

    def add_media(
        self, content: bytes, content_type: str, *, message_sid: str | None = None
    ) -> str:
        """Store a file as inbound MMS media; answers its path (join it to the fake's URL)."""
        media_sid = new_sid("ME")
        self.media[media_sid] = (content, content_type)
        msid = message_sid or new_sid("MM")
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{msid}/Media/{media_sid}"

    async def send_inbound(self, url: str, params: Mapping[str, str]) -> InboundResult:
        """Deliver an inbound webhook signed with this account's token."""
        params = {"AccountSid": self.account_sid, **params}
        return await send_inbound(url, self.auth_token, params, session=self.session)

    # -- HTTP -------------------------------------------------------------------------------
    def add_routes(self, router: web.UrlDispatcher) -> None:
        base = f"/{API_VERSION}/Accounts/{{account}}/Messages"
        router.add_post(f"{base}.json", self.create_message)
        router.add_get(f"{base}.json", self.list_resource)
        router.add_get(f"{base}/{{sid}}.json", self.fetch_message)
        router.add_get(f"{base}/{{sid}}/Media/{{media}}", self.media_redirect)
        router.add_get("/fake/media/{media}", self.media_content)
        router.add_get("/fake/thread", self.thread)

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == self.account_sid and password == self.auth_token

    def _check(self, request: web.Request) -> web.Response | None:
        if not self._authorized(request):
            return _error(
                401,
                20003,
                "Authenticate",
                headers={"WWW-Authenticate": 'Basic realm="Twilio API"'},
            )
        if request.match_info["account"] != self.account_sid:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        return None

    async def create_message(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused is not None:
            return refused
        form = await request.post()
        to = str(form.get("To", "")).strip()
        sender = str(form.get("From", "")).strip()
        service = str(form.get("MessagingServiceSid", "")).strip()
        body = str(form.get("Body", ""))
        media = [str(v) for v in form.getall("MediaUrl", [])]
        callback = str(form.get("StatusCallback", "")).strip()
        if not to:
            return _error(400, 21604, "A 'To' phone number is required.")
        if not sender and not service:
            return _error(400, 21603, "A 'From' phone number is required.")
        if not body and not media:
            return _error(400, 21602, "Message body is required.")
        if len(body.encode("utf-16-le")) // 2 > _MAX_BODY:
            return _error(
                400, 21617, "The concatenated message body exceeds the 1600 character limit."
            )
        if callback and not callback.startswith(("http://", "https://")):
            return _error(400, 21609, "Invalid StatusCallback url")
        if not _E164.match(to):
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        failure = await self.take_failure(to)
        if failure is not None and failure.status != 201:
            headers = (
                {"Retry-After": f"{failure.retry_after:g}"}
                if failure.retry_after is not None
                else {}
            )
            return _error(
                failure.status, failure.code, failure.message.format(to=to), headers=headers
            )
        sid = new_sid("MM" if media else "SM")
        created = time.time()
        now = _rfc2822(created)
        record: dict[str, Any] = {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sender or None,
            "messaging_service_sid": service or None,
            "num_media": str(len(media)),
            "num_segments": "0" if service else str(count_segments(body).segments),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if service else "queued",
            "subresource_uris": {
                "media": f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}/Media.json"
            },
            "to": to,
            "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json",
        }
        response = web.json_response(record, status=201)
        kept = self.record(
            **record,
            id=sid,
            text=body,
            media_urls=media,
            status_callback=callback or None,
            callbacks=[],
            created_at=created,
            sent_at=None,
        )
        kept["at"] = created
        if callback and self.callbacks_enabled:
            self.spawn(self._run_callbacks(kept, failure))
        return response

    async def fetch_message(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused is not None:
            return refused
        sid = request.match_info["sid"]
        for message in self.messages:
            if message["sid"] == sid:
                return web.json_response(_public(message))
        return _error(404, 20404, f"The requested resource {request.path} was not found")

    async def list_resource(self, request: web.Request) -> web.Response:
        """Twilio's Messages list: filters, newest first, pages linked by ``next_page_uri``."""
        refused = self._check(request)
        if refused is not None:
            return refused
        query = request.query
        filters: list[tuple[str, str]] = [
            (key, query[key])
            for key in ("To", "From", "DateSent", "DateSent<", "DateSent>")
            if key in query
        ]
        days: dict[str, dt.date] = {}
        for key, value in filters:
            if key.startswith("DateSent"):
                day = _day(value)
                if day is None:
                    return _error(400, 20001, f"Invalid value for {key}: {value}")
                days[key] = day
        try:
            size = int(query.get("PageSize", "50"))
            page = int(query.get("Page", "0"))
        except ValueError:
            return _error(400, 20001, "Invalid PageSize or Page")
        if not 1 <= size <= 1000 or page < 0:
            return _error(400, 20001, "PageSize must be between 1 and 1000")
        to, sender = query.get("To"), query.get("From")
        found = [
            m
            for m in self.messages
            if (to is None or m["to"] == to)
            and (sender is None or m["from"] == sender)
            and _sent_on(m, days)
        ]
        # Newest first by date_sent; messages still queued (no date_sent) come first.
        order = {id(m): n for n, m in enumerate(self.messages)}
        found.sort(
            key=lambda m: (m["sent_at"] is None, m["sent_at"] or 0.0, order[id(m)]), reverse=True
        )
        start = page * size
        token = query.get("PageToken")
        if token:
            after = [n for n, m in enumerate(found) if "PA" + m["sid"] == token]
            if not after:
                return _error(400, 20001, f"Invalid PageToken {token}")
            start = after[0] + 1
        chunk = found[start : start + size]
        path = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages.json"

        def uri(page_number: int, *extra: tuple[str, str]) -> str:
            pairs = [*filters, ("PageSize", str(size)), ("Page", str(page_number)), *extra]
            return f"{path}?{urlencode(pairs)}"

        more = start + size < len(found)
        return web.json_response(
            {
                "end": start + len(chunk) - 1 if chunk else start,
                "first_page_uri": uri(0),
                "messages": [_public(m) for m in chunk],
                "next_page_uri": uri(page + 1, ("PageToken", "PA" + chunk[-1]["sid"]))
                if more and chunk
                else None,
                "page": page,
                "page_size": size,
                "previous_page_uri": uri(page - 1) if page > 0 else None,
                "start": start,
                "uri": uri(page, *([("PageToken", token)] if token else [])),
            }
        )

    async def media_redirect(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused is not None:
            return refused
        media_sid = request.match_info["media"]
        if media_sid not in self.media:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        host = request.url.host or ""
        storage = request.url.with_host(_OTHER_LOOPBACK_NAME.get(host, host))
        signature = uuid.uuid4().hex
        self.storage_signatures[media_sid] = signature
        target = storage.with_path(f"/fake/media/{media_sid}").with_query(
            {"X-Amz-Signature": signature}
        )
        raise web.HTTPFound(str(target))

    async def media_content(self, request: web.Request) -> web.Response:
        media_sid = request.match_info["media"]
        if media_sid not in self.media:
            raise web.HTTPNotFound
        if request.query.get("X-Amz-Signature") != self.storage_signatures.get(media_sid):
            return web.Response(status=403, text="SignatureDoesNotMatch")
        if "Authorization" in request.headers:
            # what pre-signed storage answers when a client forwards its own credentials too
            return web.Response(
                status=400, text="Only one auth mechanism allowed; Authorization header given"
            )
        content, content_type = self.media[media_sid]
        return web.Response(body=content, content_type=content_type)

    async def http_messages(self, request: web.Request) -> web.Response:
        return web.json_response({"messages": self.messages, "callbacks": self.callbacks})

    def read_customer(self, data: Mapping[str, Any]) -> CustomerMessage:
        # ``body`` is Twilio's name for the text; a bare ``params`` names the sender in ``From``
        given = data.get("params")
        params: Mapping[str, Any] = given if isinstance(given, dict) else {}
        return msgspec.convert(
            {
                "from": params.get("From") or self.customer,
                "text": data.get("body") or data.get("text") or "",
                **{k: v for k, v in data.items() if k != "text"},
            },
            CustomerMessage,
            strict=False,
        )

    async def deliver(self, message: CustomerMessage, data: Mapping[str, Any]) -> dict[str, Any]:
        """A signed inbound SMS (MMS with ``files``) to ``url``, or to ``webhook_url`` (the
        sandbox's channel), or to ``{extmsg_url}/channels/{channel}/inbound``; ``params``
        override Twilio's parameters."""
        url = data.get("url")
        if not url and data.get("channel") and self.extmsg_url:
            url = f"{self.extmsg_url}/channels/{data['channel']}/inbound"
        url = url or self.webhook_url
        if not url and self.extmsg_url:
            url = f"{self.extmsg_url}/channels/{SANDBOX_CHANNEL}/inbound"
        if not url:
            raise ValueError("give a url (no webhook_url known)")
        files = inbound_files(data)
        media = [(self.own_url + self.add_media(f.data, f.mime_type), f.mime_type) for f in files]
        params = inbound_params(
            from_=message.sender,
            to=self.from_number,
            body=message.text,
            account_sid=self.account_sid,
            media=media,
            message_sid=message.id,
        )
        params.update({str(k): str(v) for k, v in dict(data.get("params") or {}).items()})
        entry = ThreadEntry(
            id=params["MessageSid"],
            sender="customer",
            contact=params.get("From", message.sender),
            text=params.get("Body") or None,
            timestamp=int(time.time() * 1000),
            state="sending",
            files=[ThreadFile(name=f.name, mime_type=f.mime_type, size=len(f.data)) for f in files],
        )
        self.inbound.append(entry)
        try:
            result = await self.send_inbound(str(url), params)
        except (aiohttp.ClientError, OSError) as exc:
            entry.state, entry.error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        ok = 200 <= result.status < 300
        entry.state = "sent" if ok else "failed"
        entry.error = None if ok else f"HTTP {result.status}"
        return {**msgspec.to_builtins(result), "id": result.params["MessageSid"]}

    async def thread(self, request: web.Request) -> web.Response:
        """The customer's phone: what they texted and what reached them."""
        entries = list(self.inbound)
        for m in self.messages:
            failed = m["status"] in ("failed", "undelivered")
            entries.append(
                ThreadEntry(
                    id=m["sid"],
                    sender="business",
                    contact=m["to"],
                    text=m["body"] or None,
                    timestamp=int(m["created_at"] * 1000),
                    state=_THREAD_STATES.get(m["status"], "sending"),
                    error=(m["error_message"] or "not delivered") if failed else None,
                    files=[ThreadFile(name=u.rsplit("/", 1)[-1], url=u) for u in m["media_urls"]],
                )
            )
        entries.sort(key=lambda e: e.timestamp)
        view = CustomerThread(
            messenger="sms_twilio",
            kind="sms",
            business=self.from_number,
            contact="+14155550123",
            entries=entries,
            files=True,
            page="/",
        )
        return web.Response(body=view.encode(), content_type="application/json")

    # -- status callbacks -------------------------------------------------------------------
    async def _run_callbacks(self, message: dict[str, Any], failure: FakeFailure | None) -> None:
        steps: list[str] = ["queued", "sent"]
        if failure is None:
            steps.append("delivered")
        elif failure.final_status == "failed":
            steps = ["queued", "failed"]
        else:
            steps.append(failure.final_status)
        for status in steps:
            await asyncio.sleep(self.callback_delay)
            message["status"] = status
            message["state"] = "failed" if status in ("failed", "undelivered") else status
            updated = time.time()
            message["date_updated"] = _rfc2822(updated)
            if status == "sent":
                message["date_sent"] = message["date_updated"]
                message["sent_at"] = updated
            params = {
                "AccountSid": self.account_sid,
                "ApiVersion": API_VERSION,
                "From": message["from"] or "",
                "MessageSid": message["sid"],
                "MessageStatus": status,
                "SmsSid": message["sid"],
                "SmsStatus": status,
                "To": message["to"],
            }
            if message["messaging_service_sid"]:
                params["MessagingServiceSid"] = message["messaging_service_sid"]
            if status in ("delivered", "undelivered"):
                params["RawDlrDoneDate"] = time.strftime("%y%m%d%H%M", time.gmtime())
            if status in ("failed", "undelivered") and failure is not None:
                params["ErrorCode"] = str(failure.code)
                message["error_code"] = failure.code
                message["error_message"] = failure.message
            await self._post_callback(message, params)

    async def _post_callback(self, message: dict[str, Any], params: dict[str, str]) -> None:
        url = message["status_callback"]
        pairs = list(params.items())
        headers = {
            "X-Twilio-Signature": compute_signature(url, pairs, self.auth_token),
            "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
            "User-Agent": "TwilioProxy/1.1",
        }
        outcome: dict[str, Any] = {"sid": message["sid"], "status": params["MessageStatus"]}
        session = self.session
        if session is None:
            outcome["error"] = "the fake is not running"
        else:
            try:
                async with session.post(
                    url, data=pairs, headers=headers, timeout=aiohttp.ClientTimeout(total=15)
                ) as response:
                    outcome["http_status"] = response.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                outcome["error"] = type(exc).__name__
                log.info("fake twilio: callback for %s failed: %s", message["sid"], exc)
        message["callbacks"].append(outcome)
        self.callbacks.append(outcome)


#: Twilio's message statuses as the customer's phone shows them.
_THREAD_STATES = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "failed": "failed",
    "undelivered": "failed",
}

#: Where the media redirect points: the same server under another name (another origin).
_OTHER_LOOPBACK_NAME = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}

#: What the fake keeps beside Twilio's resource (not in its answers: Twilio does not return a
#: message's StatusCallback, so our id in its query cannot be read back).
_PRIVATE = frozenset(
    {"media_urls", "status_callback", "callbacks", "created_at", "sent_at"}
    | {"id", "text", "at", "state"}  # the sandbox protocol's fields
)


def _public(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in _PRIVATE}


def _day(value: str) -> dt.date | None:
    """A ``DateSent`` filter's UTC day: ``YYYY-MM-DD``, or an ISO 8601 time (as twilio-python
    sends it), whose UTC day counts."""
    try:
        if len(value) == 10:
            return dt.date.fromisoformat(value)
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.date()


def _sent_on(message: dict[str, Any], days: Mapping[str, dt.date]) -> bool:
    if not days:
        return True
    if message["sent_at"] is None:
        return False
    day = dt.datetime.fromtimestamp(message["sent_at"], dt.UTC).date()
    return (
        ("DateSent" not in days or day == days["DateSent"])
        and ("DateSent<" not in days or day <= days["DateSent<"])
        and ("DateSent>" not in days or day >= days["DateSent>"])
    )


#: Where the fake's state lives in its application.
TWILIO_FAKE = web.AppKey("twilio_fake", FakeTwilio)


def _error(
    status: int,
    code: int | None,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}" if code else None,
        "status": status,
    }
    return web.json_response(body, status=status, headers=dict(headers or {}))


def fake_channel_settings(base_url: str, app: web.Application | None = None) -> dict[str, Any]:
    """The settings of a channel talking to the fake ``app`` (by default one started with the
    sandbox credentials)."""
    if app is not None and TWILIO_FAKE in app:
        return app[TWILIO_FAKE].channel_settings(base_url)
    return {
        "account_sid": SANDBOX_ACCOUNT_SID,
        "auth_token": SANDBOX_AUTH_TOKEN,
        "from_number": SANDBOX_FROM_NUMBER,
        "api_base_url": base_url,
    }


def create_twilio_fake(
    *,
    account_sid: str = SANDBOX_ACCOUNT_SID,
    auth_token: str = SANDBOX_AUTH_TOKEN,
    failures: Mapping[str, str | FakeFailure] | None = None,
    callback_delay: float = 0.01,
    callbacks: bool = True,
    extmsg_url: str | None = None,
    webhook_url: str | None = None,
) -> web.Application:
    """Build the fake's application; its state is ``app[TWILIO_FAKE]``.

    :param failures: destination number → scenario name (see :data:`SCENARIOS`) or failure.
    :param callback_delay: seconds between two status callbacks of one message.
    :param callbacks: fire status callbacks at all.
    :param extmsg_url: where extmsg listens, for inbound messages to a named ``channel``.
    :param webhook_url: where inbound messages sent without a URL go (the sandbox's channel).
    """
    fake = FakeTwilio(
        account_sid=account_sid,
        auth_token=auth_token,
        failures=failures,
        callback_delay=callback_delay,
        callbacks=callbacks,
        extmsg_url=extmsg_url,
        webhook_url=webhook_url,
    )
    app = fake.create_app()
    app[TWILIO_FAKE] = fake
    return app
