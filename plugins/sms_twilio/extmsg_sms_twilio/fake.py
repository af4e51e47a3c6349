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
- ``GET  /fake/messages``: every send, newest last, with its callbacks' outcome
- ``POST /fake/failures`` ``{"to": "+1…", "scenario": "opted_out", "times": 1}``: script a failure
  for one destination (``times`` omitted: until cleared; ``"after": n``: the next ``n`` sends
  go through first, e.g. part two of a split message fails); ``DELETE /fake/failures`` clears
  them
- ``POST /fake/inbound`` ``{"url": …, "params": {…}}``: deliver a signed inbound webhook; the
  generic shape of :mod:`extmsg.testing.customer` (``from``, ``text``, ``files``) works too
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


class FakeFailure(msgspec.Struct, frozen=True, kw_only=True):
    """A scripted failure for one destination number.

    :ivar status: HTTP status of the create call; ``201`` means Twilio accepts the message and
        the failure comes later, in the status callback.
    :ivar code: Twilio's error code (in the error body, or the callback's ``ErrorCode``).
    :ivar message: Twilio's error message (``{to}`` is replaced by the number).
    :ivar retry_after: a ``Retry-After`` header, in seconds.
    :ivar final_status: the callback's last status for accepted-then-failed messages.
    """

    status: int
    code: int | None
    message: str = ""
    retry_after: float | None = None
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
    "server_error": FakeFailure(
        status=500, code=20500, message="An internal server error has occurred"
    ),
    "unavailable": FakeFailure(status=503, code=None, message="Service Unavailable"),
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


class _Scripted(msgspec.Struct, kw_only=True):
    failure: FakeFailure
    times: int | None
    after: int = 0


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


class FakeTwilio:
    """The fake's state: accounts, scripted failures, recorded sends, callbacks in flight."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        failures: Mapping[str, str | FakeFailure] | None = None,
        callback_delay: float = 0.01,
        callbacks: bool = True,
        extmsg_url: str | None = None,
        from_number: str = SANDBOX_FROM_NUMBER,
    ) -> None:
        self.account_sid = account_sid
        self.extmsg_url = extmsg_url.rstrip("/") if extmsg_url else None
        self.from_number = from_number
        self.auth_token = auth_token
        self.callback_delay = callback_delay
        self.callbacks_enabled = callbacks
        self.messages: list[dict[str, Any]] = []
        #: What customers wrote through ``/fake/inbound``, for their side of the thread.
        self.inbound: list[ThreadEntry] = []
        self.callbacks: list[dict[str, Any]] = []
        self.media: dict[str, tuple[bytes, str]] = {}
        self.storage_signatures: dict[str, str] = {}
        self._failures: dict[str, _Scripted] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        for number, scenario in (failures or {}).items():
            self.fail(number, scenario)

    # -- scripting --------------------------------------------------------------------------
    def fail(
        self, to: str, scenario: str | FakeFailure, *, times: int | None = None, after: int = 0
    ) -> None:
        """Make sends to ``to`` fail (``times`` sends, or until :meth:`clear_failures`), once
        ``after`` sends to it went through."""
        if isinstance(scenario, str):
            if scenario not in SCENARIOS:
                known = ", ".join(sorted(SCENARIOS))
                raise ValueError(f"unknown scenario {scenario!r} (known: {known})")
            scenario = SCENARIOS[scenario]
        self._failures[to] = _Scripted(failure=scenario, times=times, after=after)

    def clear_failures(self) -> None:
        self._failures.clear()

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
        return await send_inbound(url, self.auth_token, params, session=self._session)

    async def wait_idle(self) -> None:
        """Wait until every scheduled status callback was delivered (or failed)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _take_failure(self, to: str) -> FakeFailure | None:
        scripted = self._failures.get(to)
        if scripted is None:
            return None
        if scripted.after > 0:
            scripted.after -= 1
            return None
        if scripted.times is not None:
            scripted.times -= 1
            if scripted.times <= 0:
                del self._failures[to]
        return scripted.failure

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- HTTP -------------------------------------------------------------------------------
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
        failure = self._take_failure(to)
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
        self.messages.append(
            {
                **record,
                "media_urls": media,
                "status_callback": callback or None,
                "callbacks": [],
                "created_at": created,
                "sent_at": None,
            }
        )
        if callback and self.callbacks_enabled:
            task = asyncio.get_running_loop().create_task(
                self._run_callbacks(self.messages[-1], failure)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
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

    async def list_messages(self, request: web.Request) -> web.Response:
        return web.json_response({"messages": self.messages, "callbacks": self.callbacks})

    async def script_failure(self, request: web.Request) -> web.Response:
        if request.method == "DELETE":
            self.clear_failures()
            return web.json_response({"failures": {}})
        data = await request.json()
        try:
            self.fail(
                str(data["to"]),
                str(data["scenario"]),
                times=data.get("times"),
                after=int(data.get("after") or 0),
            )
        except (KeyError, ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"to": data["to"], "scenario": data["scenario"]})

    async def deliver_inbound(self, request: web.Request) -> web.Response:
        """``{"url"?, "channel"?, "from"?, "body"?, "params"?}`` → a signed inbound SMS (or MMS
        with ``files``; ``text`` stands for ``body``).

        Without ``url`` the message goes to ``{extmsg_url}/channels/{channel}/inbound`` (the
        sandbox's channel by default); ``params`` override the generated parameters.
        """
        data = await request.json()
        url = data.get("url")
        if not url:
            if not self.extmsg_url:
                return web.json_response({"error": "give a url (no extmsg_url known)"}, status=400)
            channel = data.get("channel") or SANDBOX_CHANNEL
            url = f"{self.extmsg_url}/channels/{channel}/inbound"
        try:
            files = inbound_files(data)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        origin = str(request.url.origin())
        media = [(origin + self.add_media(f.data, f.mime_type), f.mime_type) for f in files]
        sender = str(data.get("from") or "+14155550123")
        text = str(data.get("body") or data.get("text") or "")
        params = inbound_params(
            from_=sender,
            to=self.from_number,
            body=text,
            account_sid=self.account_sid,
            media=media,
        )
        params.update({str(k): str(v) for k, v in dict(data.get("params") or {}).items()})
        entry = ThreadEntry(
            id=params["MessageSid"],
            sender="customer",
            contact=params.get("From", sender),
            text=params.get("Body") or None,
            timestamp=int(time.time() * 1000),
            state="sending",
            files=[ThreadFile(name=f.name, mime_type=f.mime_type, size=len(f.data)) for f in files],
        )
        self.inbound.append(entry)
        try:
            result = await self.send_inbound(str(url), params)
        except aiohttp.ClientError as exc:
            entry.state, entry.error = "failed", f"{type(exc).__name__}: {exc}"
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=502)
        ok = 200 <= result.status < 300
        entry.state = "sent" if ok else "failed"
        entry.error = None if ok else f"HTTP {result.status}"
        return web.json_response(msgspec.to_builtins(result))

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

    async def console(self, request: web.Request) -> web.Response:
        """A tiny page to text the sandbox as a customer would."""
        return web.Response(text=_CONSOLE, content_type="text/html")

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
        session = self._session
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
_PRIVATE = frozenset({"media_urls", "status_callback", "callbacks", "created_at", "sent_at"})


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


_CONSOLE = """<!doctype html>
<html lang="en"><meta charset="utf-8"><title>Twilio fake</title>
<body style="font-family: sans-serif; max-width: 40em; margin: 2em auto">
<h1>Twilio fake</h1>
<p>Text the sandbox channel as a customer.
Sent messages: <a href="/fake/messages">/fake/messages</a>.
<form id="f"><label>From <input name="from" value="+14155550123"></label>
<label>Message <input name="body" size="40" required></label> <button>Send</button></form>
<pre id="out"></pre>
<script>
document.getElementById("f").onsubmit = async (e) => {
  e.preventDefault();
  const data = Object.fromEntries(new FormData(e.target));
  const r = await fetch("/fake/inbound", {method: "POST", body: JSON.stringify(data),
                                          headers: {"Content-Type": "application/json"}});
  document.getElementById("out").textContent = JSON.stringify(await r.json(), null, 2);
};
</script>
</body></html>
"""

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
    """The settings of a channel talking to a fake started with the sandbox credentials."""
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
) -> web.Application:
    """Build the fake's application; its state is ``app[TWILIO_FAKE]``.

    :param failures: destination number → scenario name (see :data:`SCENARIOS`) or failure.
    :param callback_delay: seconds between two status callbacks of one message.
    :param callbacks: fire status callbacks at all.
    :param extmsg_url: where extmsg listens, for inbound messages sent without a URL.
    """
    fake = FakeTwilio(
        account_sid=account_sid,
        auth_token=auth_token,
        failures=failures,
        callback_delay=callback_delay,
        callbacks=callbacks,
        extmsg_url=extmsg_url,
    )
    app = web.Application()
    app[TWILIO_FAKE] = fake

    async def lifecycle(_: web.Application) -> Any:
        await fake.start()
        yield
        await fake.stop()

    app.cleanup_ctx.append(lifecycle)
    base = f"/{API_VERSION}/Accounts/{{account}}/Messages"
    app.router.add_post(f"{base}.json", fake.create_message)
    app.router.add_get(f"{base}.json", fake.list_resource)
    app.router.add_get(f"{base}/{{sid}}.json", fake.fetch_message)
    app.router.add_get(f"{base}/{{sid}}/Media/{{media}}", fake.media_redirect)
    app.router.add_get("/fake/media/{media}", fake.media_content)
    app.router.add_get("/fake/messages", fake.list_messages)
    app.router.add_post("/fake/failures", fake.script_failure)
    app.router.add_delete("/fake/failures", fake.script_failure)
    app.router.add_post("/fake/inbound", fake.deliver_inbound)
    app.router.add_get("/fake/thread", fake.thread)
    app.router.add_get("/", fake.console)
    return app
