"""Async client for the parts of the Unblu web API a custom external messenger channel uses.

One :class:`UnbluClient` speaks one dialect: ``v4`` (Unblu 8) or ``v3`` (Unblu 6/7). Every public
method takes the same arguments in both dialects and hides the differences (paths with or
without ``{channelId}``, contacts versus persons, ``failState`` versus ``failedState``, …); where
a v3 server has nothing equivalent the docstring says what happens instead.

All HTTP goes through :meth:`UnbluClient._call`, which maps failures to
:class:`~extmsg.unblu.errors.UnbluError` and can record each exchange for contract tests.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec
import yarl

from extmsg import logcontext, sendguard
from extmsg.errors import FetchRefused, FetchTooLarge, RetryableError
from extmsg.fetch import fetch
from extmsg.unblu import wire
from extmsg.unblu.errors import UnbluError, UnbluNotFound, parse_retry_after
from extmsg.unblu.wire import Channel, ContactIdentifierFieldType, Conversation, RecipientType

__all__ = [
    "MESSAGE_LOG_ROLE",
    "ApiVersion",
    "CallObserver",
    "ChannelSpec",
    "ContactRef",
    "LookupAccess",
    "Recipient",
    "RecordedCall",
    "UnbluClient",
    "WebhookSpec",
    "call_name",
    "virtual_person_source_id",
]

ApiVersion = Literal["v3", "v4"]
T = TypeVar("T")

CallObserver = Callable[[str, BaseException | None, float], None]
"""Told of every call the client made: its :func:`call_name`, what it raised (None when it
succeeded) and how long it took in seconds (the runtime counts them as metrics)."""

log = logging.getLogger("extmsg.unblu")

_PATH_PARAM = re.compile(r"\{([^}]+)\}")
_USER_AGENT = "extmsg"
_BARE_TOKEN = re.compile(rb"[A-Za-z0-9_.:-]{1,200}")
_V3_RECIPIENT_TYPES: dict[
    str, Literal["AccountData", "TeamData", "NamedAreaData", "PersonData"]
] = {
    "AGENT": "PersonData",
    "TEAM": "TeamData",
    "NAMED_AREA": "NamedAreaData",
    "ACCOUNT": "AccountData",
}
_NOT_FOUND_HINTS = ("not found", "no active", "does not exist", "doesn't exist", "not exist")

#: The role the v4 spec requires for ``conversationHistoryExportMessageLog``
#: (``x-required-role: ADMIN``), the call that finds a message by its ``externalMessageId``.
MESSAGE_LOG_ROLE = "ADMIN"
_MESSAGE_LOG = "/conversationhistory/{conversationId}/exportMessageLog"
#: A conversation id that does not exist: the access probe only learns whether the role check
#: lets the call through (404 behind it) or not (403).
_PROBE_CONVERSATION = "extmsg-access-probe"


class ChannelSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The desired state of a custom channel, as extmsg manages it.

    ``None`` in an optional field means "not managed": provisioning neither sends nor compares
    it and an update keeps the server's value. Fields that v3 does not know
    (``outbound_*``, ``contact_identifier_*``) are not sent to a v3 server.
    """

    name: str
    webhook_endpoint: str
    webhook_secret: str | None = None
    description: str | None = None
    message_state_handled_externally: bool = True
    outbound_supported: bool = False
    outbound_timeout_millis: int = 10_000
    contact_identifier_field_name: str = "id"
    contact_identifier_field_type: ContactIdentifierFieldType = "OTHER"
    metadata: dict[str, str] | None = None
    webhook_status: Literal["ACTIVE", "INACTIVE"] | None = "ACTIVE"

    def __repr__(self) -> str:
        secret = "None" if self.webhook_secret is None else "'***'"
        return (
            f"ChannelSpec(name={self.name!r}, webhook_endpoint={self.webhook_endpoint!r}, "
            f"webhook_secret={secret}, outbound_supported={self.outbound_supported!r})"
        )


class WebhookSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The desired state of a webhook registration (``WebhookRegistration``): Unblu POSTs the
    ``events`` to ``endpoint``, signed with ``secret``, serialized for the client's API
    version."""

    name: str
    endpoint: str
    events: tuple[str, ...]
    secret: str | None = None
    description: str | None = None

    def __repr__(self) -> str:
        secret = "None" if self.secret is None else "'***'"
        return (
            f"WebhookSpec(name={self.name!r}, endpoint={self.endpoint!r}, secret={secret}, "
            f"events={self.events!r})"
        )


class ContactRef(msgspec.Struct, frozen=True):
    """Who writes on the messenger side: the Unblu person, and (v4 only) the
    ExternalMessengerContact linking that person to the channel."""

    person_id: str
    contact_id: str | None = None


class Recipient(msgspec.Struct, frozen=True):
    """Where a new conversation is routed: an agent, team, named area or the whole account."""

    type: RecipientType
    id: str


class LookupAccess(msgspec.Struct, frozen=True):
    """Whether the client can find a posted message by its ``externalMessageId``.

    ``available`` is None when that cannot be told now (Unblu unreachable, credentials refused);
    ``detail`` says why, in words for a log line or ``extmsg check``.
    """

    available: bool | None
    detail: str


class RecordedCall(msgspec.Struct, frozen=True, kw_only=True):
    """One HTTP exchange, as recorded for contract tests (``path`` is the spec template)."""

    method: str
    path: str
    url_path: str
    query: dict[str, str]
    request: Any
    status: int | None
    response: Any


def virtual_person_source_id(channel_id: str, source_id: str) -> str:
    """The stable ``sourceId`` of the virtual person standing for a messenger contact.

    Scoped by channel so the same phone number on two channels maps to two persons; hashed when
    it would exceed Unblu's 250-character limit.
    """
    plain = f"extmsg:{channel_id}:{source_id}"
    if wire.text_length(plain) <= wire.MAX_PERSON_FIELD:
        return plain
    digest = hashlib.sha256(source_id.encode()).hexdigest()
    return f"extmsg:{channel_id[:150]}:sha256:{digest}"


def _normalize_base(base_url: str, api_version: ApiVersion) -> str:
    base = base_url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"Unblu base_url must be an http(s) URL, got {base_url!r}")
    match = re.search(r"/(v\d+)$", base)
    if match:
        if match.group(1) != api_version:
            raise ValueError(
                f"Unblu base_url {base_url!r} ends in /{match.group(1)} but api_version is "
                f"{api_version!r}; give the prefix without the version (e.g. .../app/rest)"
            )
        base = base[: match.start()]
    return f"{base}/{api_version}"


class UnbluClient:
    """Client for one Unblu server, speaking web API ``v4`` (Unblu 8) or ``v3`` (Unblu 6/7).

    ``base_url`` is the web API prefix without the version, e.g.
    ``https://unblu.example.com/app/rest`` (a trailing ``/v4`` matching ``api_version`` is
    accepted). Authentication is HTTP basic. Use as ``async with UnbluClient(...) as client`` or
    call :meth:`close`; a ``session`` passed in is used as is and never closed here.

    ``recorder``, when given, receives a :class:`RecordedCall` per request (the last
    ``record_limit`` are kept) so tests can validate every body against the vendor spec.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        api_version: ApiVersion = "v4",
        *,
        timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        recorder: list[RecordedCall] | None = None,
        record_limit: int = 1000,
        observer: CallObserver | None = None,
    ) -> None:
        if api_version not in ("v3", "v4"):
            raise ValueError(f"api_version must be 'v3' or 'v4', got {api_version!r}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._root = _normalize_base(base_url, api_version)
        self._api_version: ApiVersion = api_version
        self._username = username
        self.__password = password
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self.__authorization = f"Basic {token}"
        # The same on every call: built once.
        self._headers = {
            "Accept": "application/json",
            "Authorization": self.__authorization,
            "User-Agent": _USER_AGENT,
        }
        self._timeout = timeout
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None
        self.recorder = recorder
        self._record_limit = record_limit
        self._observer = observer

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def api_version(self) -> ApiVersion:
        return self._api_version

    @property
    def base_url(self) -> str:
        """The versioned web API root, e.g. ``https://host/app/rest/v4``."""
        return self._root

    def __repr__(self) -> str:
        return (
            f"UnbluClient(base_url={self._root!r}, username={self._username!r}, "
            f"api_version={self._api_version!r})"
        )

    async def __aenter__(self) -> UnbluClient:
        self._http()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            # A send that would go out long after its job's hold is refused (sendguard).
            self._session = sendguard.client_session()
            self._owns_session = True
        return self._session

    @property
    def _v4(self) -> bool:
        return self._api_version == "v4"

    # -- transport -----------------------------------------------------------------------------
    async def _call(
        self,
        method: str,
        path_template: str,
        path_params: Mapping[str, str] | None = None,
        body: msgspec.Struct | None = None,
        query: Mapping[str, str | None] | None = None,
    ) -> Any:
        """Do one HTTP call (see :meth:`_exchange`), told to the observer by its call name."""
        if self._observer is None:
            return await self._exchange(method, path_template, path_params, body, query)
        started = time.monotonic()
        try:
            result = await self._exchange(method, path_template, path_params, body, query)
        except BaseException as exc:
            self._tell(call_name(path_template), exc, started)
            raise
        self._tell(call_name(path_template), None, started)
        return result

    async def _observed(self, call: str, work: Awaitable[T]) -> T:
        started = time.monotonic()
        try:
            result = await work
        except BaseException as exc:
            self._tell(call, exc, started)
            raise
        self._tell(call, None, started)
        return result

    def _tell(self, call: str, error: BaseException | None, started: float) -> None:
        """Tell the observer of a call that ended; not of one stopped here (cancelled: the
        remote said nothing) nor of one refused before it was written (no call was made)."""
        if isinstance(error, asyncio.CancelledError) or (
            error is not None and sendguard.caused_by_lost_lease(error)
        ):
            return
        assert self._observer is not None
        self._observer(call, error, time.monotonic() - started)

    async def _exchange(
        self,
        method: str,
        path_template: str,
        path_params: Mapping[str, str] | None,
        body: msgspec.Struct | None,
        query: Mapping[str, str | None] | None,
    ) -> Any:
        """Do one HTTP call; return the decoded JSON (``None`` for an empty answer).

        Raises :class:`UnbluError` (:class:`UnbluNotFound` for 404) for network errors,
        timeouts, redirects, non-2xx answers and 2xx answers that are not JSON.
        """
        operation = f"{method} {path_template}"
        url_path = _fill_path(path_template, path_params or {})
        params = {k: v for k, v in query.items() if v is not None} if query else {}
        payload = msgspec.json.encode(body) if body is not None else None
        headers = self._headers.copy()
        if payload is not None:
            headers["Content-Type"] = "application/json"
        rid = logcontext.request_id()
        if rid is not None:
            headers[logcontext.REQUEST_ID_HEADER] = rid
        started = time.monotonic()
        status: int | None = None
        data: Any = None
        try:
            async with self._http().request(
                method,
                self._root + url_path,
                params=params or None,
                data=payload,
                headers=headers,
                timeout=self._client_timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                raw = await resp.read()
                reason = resp.reason
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError as exc:
            self._record(method, path_template, url_path, params, body, None, None)
            raise UnbluError(
                operation, error_message=f"timed out after {self._timeout:g}s"
            ) from exc
        except aiohttp.ClientError as exc:
            if isinstance(exc.__cause__, sendguard.StaleHold):
                raise exc.__cause__ from None  # refused before the body was written
            self._record(method, path_template, url_path, params, body, None, None)
            raise UnbluError(operation, error_message=_describe_network_error(exc)) from exc

        log.debug(
            "unblu %s -> %s in %.0f ms", operation, status, (time.monotonic() - started) * 1000
        )
        if raw.strip():
            try:
                data = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                data = None
                if 200 <= status < 300:
                    # Parsed only here: most answers are JSON, and it costs on every call.
                    content_type = resp.content_type
                    if content_type == "text/plain" or _BARE_TOKEN.fullmatch(raw.strip()):
                        data = raw.decode("utf-8", "replace").strip()
                    else:
                        self._record(method, path_template, url_path, params, body, status, None)
                        raise UnbluError(
                            operation,
                            status=status,
                            error_message=(
                                f"expected JSON, got {content_type or 'no content type'}; "
                                "is base_url the web API prefix (e.g. https://host/app/rest)?"
                            ),
                            retryable=False,
                        ) from None
        self._record(method, path_template, url_path, params, body, status, data)

        if 200 <= status < 300:
            return data
        if 300 <= status < 400:
            raise UnbluError(
                operation,
                status=status,
                error_message=(
                    "unexpected redirect; base_url must point at the web API on the internal "
                    "entry path (e.g. https://host/app/rest)"
                ),
                retryable=False,
            )
        message = self._error_message(data) or reason or None
        cls = UnbluNotFound if status == 404 else UnbluError
        raise cls(
            operation,
            status=status,
            error_message=message,
            retry_after=parse_retry_after(retry_after),
        )

    def _error_message(self, data: Any) -> str | None:
        if not isinstance(data, dict):
            return None
        try:
            err = msgspec.convert(data, wire.ErrorBody)
        except msgspec.ValidationError:
            return None
        text = err.error_message or err.status_description
        if text and len(self.__password) >= 4:
            text = text.replace(self.__password, "***")
        return text

    def _record(
        self,
        method: str,
        template: str,
        url_path: str,
        query: dict[str, str],
        body: msgspec.Struct | None,
        status: int | None,
        response: Any,
    ) -> None:
        if self.recorder is None:
            return
        self.recorder.append(
            RecordedCall(
                method=method,
                path=template,
                url_path=url_path,
                query=dict(query),
                request=msgspec.to_builtins(body) if body is not None else None,
                status=status,
                response=response,
            )
        )
        overflow = len(self.recorder) - self._record_limit
        if overflow > 0:
            del self.recorder[:overflow]

    @staticmethod
    def _decode(data: Any, into: type[T], operation: str) -> T:
        try:
            return msgspec.convert(data, into)
        except msgspec.ValidationError as exc:
            raise UnbluError(
                operation, error_message=f"unexpected response: {exc}", retryable=False
            ) from None

    # -- channels ------------------------------------------------------------------------------
    async def get_channel_by_name(self, name: str) -> Channel | None:
        """The channel called ``name`` (with its metadata), or None when there is none."""
        path = "/externalmessengers/getByName"
        try:
            data = await self._call("GET", path, query={"name": name, "expand": "metadata"})
        except UnbluNotFound:
            return None
        if data is None:
            return None
        return self._decode(data, Channel, f"GET {path}")

    async def create_channel(self, spec: ChannelSpec) -> Channel:
        """Create a custom channel from ``spec``."""
        path = "/externalmessengers/create"
        data = await self._call(
            "POST", path, body=self._channel_body(spec, None), query={"expand": "metadata"}
        )
        return self._decode(data, Channel, f"POST {path}")

    async def update_channel(self, spec: ChannelSpec, current: Channel | None = None) -> Channel:
        """Apply ``spec`` to the existing channel of the same name.

        ``current`` is the channel as last read (its id, version and accountId are carried, as
        are the fields extmsg does not manage); it is fetched by name when not given.
        """
        if current is None:
            current = await self.get_channel_by_name(spec.name)
            if current is None:
                raise UnbluNotFound(
                    "GET /externalmessengers/getByName",
                    status=404,
                    error_message="no channel with that name",
                )
        path = "/externalmessengers/update"
        data = await self._call(
            "POST", path, body=self._channel_body(spec, current), query={"expand": "metadata"}
        )
        return self._decode(data, Channel, f"POST {path}")

    async def provision_channel(self, spec: ChannelSpec) -> Channel:
        """Make sure a channel matching ``spec`` exists; idempotent by name.

        Creates it when absent, updates it only when a managed field differs, else returns it
        untouched (no write at all).
        """
        current = await self.get_channel_by_name(spec.name)
        if current is None:
            channel = await self.create_channel(spec)
            log.info("unblu channel %r created (id %s)", spec.name, channel.id)
            return channel
        differing = self.channel_differences(current, spec)
        if not differing:
            log.debug("unblu channel %r up to date (id %s)", spec.name, current.id)
            return current
        channel = await self.update_channel(spec, current)
        log.info(
            "unblu channel %r updated (id %s): %s", spec.name, channel.id, ", ".join(differing)
        )
        return channel

    def channel_differences(self, current: Channel, spec: ChannelSpec) -> list[str]:
        """Names of the managed fields (JSON names) where ``current`` differs from ``spec``."""
        diffs: list[str] = []
        for attr, wanted in self._managed_fields(spec).items():
            if wanted is None:
                continue
            if getattr(current, attr) != wanted:
                diffs.append(_camel(attr))
        return diffs

    def _managed_fields(self, spec: ChannelSpec) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "type": "CUSTOM",
            "description": spec.description,
            "webhook_endpoint": spec.webhook_endpoint,
            "webhook_api_version": "V4" if self._v4 else "V3",
            "webhook_secret": spec.webhook_secret,
            "webhook_status": spec.webhook_status,
            "message_state_handled_externally": spec.message_state_handled_externally,
            "metadata": spec.metadata,
        }
        if self._v4:
            fields.update(
                outbound_supported=spec.outbound_supported,
                outbound_timeout_millis=spec.outbound_timeout_millis,
                contact_identifier_field_name=spec.contact_identifier_field_name,
                contact_identifier_field_type=spec.contact_identifier_field_type,
            )
        return fields

    def _channel_body(
        self, spec: ChannelSpec, current: Channel | None
    ) -> wire.CustomExternalMessengerChannel:
        fields = self._managed_fields(spec)
        fields["name"] = spec.name
        if current is not None:
            fields.update(id=current.id, version=current.version, account_id=current.account_id)
            fields["source_id"] = current.source_id
            if isinstance(current.channel_icon, str):
                fields["channel_icon"] = current.channel_icon
            for attr in ("description", "webhook_secret", "webhook_status", "metadata"):
                if fields[attr] is None:
                    fields[attr] = getattr(current, attr)
            if self._v4:
                fields["supports_multiple_conversations_per_contact"] = (
                    current.supports_multiple_conversations_per_contact
                )
                fields["contact_identifier_translations"] = current.contact_identifier_translations
        return wire.CustomExternalMessengerChannel(**fields)

    # -- webhook registrations -------------------------------------------------------------
    async def get_webhook_by_name(self, name: str) -> wire.WebhookRegistrationIn | None:
        """The webhook registration called ``name``, or None (v4 answers 404, v3 ``null``)."""
        path = "/webhookregistrations/getByName"
        try:
            data = await self._call("GET", path, query={"name": name})
        except UnbluNotFound:
            return None
        if data is None:
            return None
        return self._decode(data, wire.WebhookRegistrationIn, f"GET {path}")

    async def provision_webhook(self, spec: WebhookSpec) -> wire.WebhookRegistrationIn:
        """Make sure a registration matching ``spec`` exists; idempotent by name, like
        :meth:`provision_channel` (``webhookRegistrationsCreate`` / ``…Update``): created when
        absent, updated only when a managed field differs, else left alone."""
        current = await self.get_webhook_by_name(spec.name)
        wanted = self._webhook_body(spec, current)
        if current is None:
            path = "/webhookregistrations/create"
            data = await self._call("POST", path, body=wanted)
            created = self._decode(data, wire.WebhookRegistrationIn, f"POST {path}")
            log.info("unblu webhook registration %r created (id %s)", spec.name, created.id)
            return created
        differing = self.webhook_differences(current, spec)
        if not differing:
            log.debug("unblu webhook registration %r up to date (id %s)", spec.name, current.id)
            return current
        path = "/webhookregistrations/update"
        data = await self._call("POST", path, body=wanted)
        updated = self._decode(data, wire.WebhookRegistrationIn, f"POST {path}")
        log.info(
            "unblu webhook registration %r updated (id %s): %s",
            spec.name,
            updated.id,
            ", ".join(differing),
        )
        return updated

    async def remove_webhook(self, name: str) -> bool:
        """Delete the registration called ``name`` if there is one; True when one was deleted
        (``webhookRegistrationsDelete``: v4 takes the id in the path, v3 as ``?id=``)."""
        current = await self.get_webhook_by_name(name)
        if current is None:
            return False
        try:
            if self._v4:
                await self._call(
                    "DELETE",
                    "/webhookregistrations/{registrationId}/delete",
                    {"registrationId": current.id},
                )
            else:
                await self._call("DELETE", "/webhookregistrations/delete", query={"id": current.id})
        except UnbluNotFound:
            return False
        log.info("unblu webhook registration %r deleted (id %s)", name, current.id)
        return True

    def webhook_differences(
        self, current: wire.WebhookRegistrationIn, spec: WebhookSpec
    ) -> list[str]:
        """JSON names of the managed fields where ``current`` differs from ``spec``."""
        wanted = self._webhook_fields(spec)
        diffs = [
            _camel(attr)
            for attr, value in wanted.items()
            if attr != "events" and value is not None and getattr(current, attr) != value
        ]
        if sorted(current.events or []) != sorted(spec.events):
            diffs.append("events")
        return diffs

    def _webhook_fields(self, spec: WebhookSpec) -> dict[str, Any]:
        return {
            "status": "ACTIVE",
            "description": spec.description,
            "endpoint": spec.endpoint,
            "api_version": "V4" if self._v4 else "V3",
            "secret": spec.secret,
            "events": list(spec.events),
        }

    def _webhook_body(
        self, spec: WebhookSpec, current: wire.WebhookRegistrationIn | None
    ) -> wire.WebhookRegistration:
        fields = self._webhook_fields(spec)
        fields["name"] = spec.name
        if current is not None:
            fields.update(id=current.id, version=current.version, account_id=current.account_id)
            for attr in ("description", "secret"):
                if fields[attr] is None:
                    fields[attr] = getattr(current, attr)
        return wire.WebhookRegistration(**fields)

    # -- contacts ------------------------------------------------------------------------------
    async def ensure_contact(
        self,
        channel_id: str,
        source_id: str,
        *,
        name: str | None,
        phone: str | None = None,
        email: str | None = None,
    ) -> ContactRef:
        """The Unblu identity of messenger contact ``source_id`` on ``channel_id``.

        A virtual visitor person (stable ``sourceId`` from :func:`virtual_person_source_id`) is
        created or updated with the name, phone and email, so calling this again after a name
        change updates Unblu. v4 then reuses the channel's ExternalMessengerContact with that
        ``sourceId`` (keeping the person it is linked to, which differs when Unblu created it
        for an agent-initiated conversation) or creates one. v3 has no contacts: the person is
        the identity and ``contact_id`` is None.
        """
        person_id = await self._upsert_person(channel_id, source_id, name, phone, email)
        if not self._v4:
            return ContactRef(person_id, None)
        existing = await self._find_contact(channel_id, source_id)
        if existing is not None and existing.id:
            return ContactRef(existing.person_id or person_id, existing.id)
        path = "/externalmessengercontacts/create"
        body = wire.ExternalMessengerContact(
            name=wire.fit(name or source_id, wire.MAX_CONTACT_NAME),
            external_messenger_channel_id=channel_id,
            source_id=source_id,
            person_id=person_id,
        )
        contact = self._decode(await self._call("POST", path, body=body), wire.Contact, path)
        if not contact.id:
            raise UnbluError(
                f"POST {path}", error_message="response has no contact id", retryable=False
            )
        return ContactRef(contact.person_id or person_id, contact.id)

    async def get_contact(self, contact_id: str) -> wire.Contact:
        """Read an ExternalMessengerContact (v4 only; v3 has no contacts)."""
        path = "/externalmessengercontacts/{externalMessengerContactId}/read"
        if not self._v4:
            raise UnbluError(
                f"GET {path}",
                error_message="web API v3 has no external messenger contacts",
                retryable=False,
            )
        data = await self._call("GET", path, {"externalMessengerContactId": contact_id})
        return self._decode(data, wire.Contact, f"GET {path}")

    async def _find_contact(self, channel_id: str, source_id: str) -> wire.Contact | None:
        path = "/externalmessengercontacts/search"
        query = wire.ExternalMessengerContactQuery(
            search_filters=[
                wire.ExternalMessengerChannelIdExternalMessengerContactSearchFilter(
                    field="EXTERNAL_MESSENGER_CHANNEL_ID",
                    operator=wire.EqualsIdOperator(type="EQUALS", value=channel_id),
                ),
                wire.SourceIdExternalMessengerContactSearchFilter(
                    field="SOURCE_ID",
                    operator=wire.EqualsStringOperator(type="EQUALS", value=source_id),
                ),
            ],
            limit=2,
        )
        data = await self._call("POST", path, body=query)
        result = self._decode(data, wire.ContactSearchResult, f"POST {path}")
        for item in result.items:
            if item.source_id in (None, source_id) and item.external_messenger_channel_id in (
                None,
                channel_id,
            ):
                return item
        return None

    async def _upsert_person(
        self,
        channel_id: str,
        source_id: str,
        name: str | None,
        phone: str | None,
        email: str | None,
    ) -> str:
        path = "/persons/createOrUpdateVirtual"
        body = wire.PersonData(
            person_source="VIRTUAL",
            person_type="VISITOR",
            source_id=virtual_person_source_id(channel_id, source_id),
            nickname=wire.fit(name, wire.MAX_PERSON_FIELD) or None,
            phone=phone,
            email=email,
        )
        person = self._decode(await self._call("POST", path, body=body), wire.Person, path)
        if not person.id:
            raise UnbluError(
                f"POST {path}", error_message="response has no person id", retryable=False
            )
        return person.id

    # -- conversations -------------------------------------------------------------------------
    async def find_active_conversation(
        self, channel_id: str, source_id: str
    ) -> Conversation | None:
        """The active (not ended) conversation of ``source_id`` on the channel, else None."""
        path = "/conversations/getBySourceIdAndChannelId"
        try:
            data = await self._call(
                "GET", path, query={"sourceId": source_id, "externalMessengerChannelId": channel_id}
            )
        except UnbluNotFound:
            return None
        except UnbluError as exc:
            text = (exc.error_message or "").lower()
            if exc.status in (400, 422) and any(hint in text for hint in _NOT_FOUND_HINTS):
                return None
            raise
        if data is None:
            return None
        conversation = self._decode(data, Conversation, f"GET {path}")
        return None if conversation.state == "ENDED" else conversation

    async def create_conversation(
        self,
        channel_id: str,
        source_id: str,
        contact: ContactRef,
        *,
        engagement_type: str = "CHAT_REQUEST",
        recipient: Recipient | None = None,
        topic: str | None = None,
        locale: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Conversation:
        """Open a conversation on the channel with ``contact`` as the context person.

        ``source_id`` links it to the messenger-side thread; Unblu keeps it unique among the
        channel's active conversations.
        """
        path = "/conversations/create"
        body: msgspec.Struct
        if self._v4:
            if not contact.contact_id:
                raise ValueError("v4 conversations need an ExternalMessengerContact id")
            body = wire.ConversationCreationData(
                topic=topic,
                recipient=(
                    wire.ConversationCreationRecipientData(type=recipient.type, id=recipient.id)
                    if recipient
                    else None
                ),
                external_participants=[
                    wire.ConversationCreationExternalParticipantData(
                        external_messenger_contact_id=contact.contact_id,
                        participation_type="CONTEXT_PERSON",
                    )
                ],
                initial_engagement_type=engagement_type,
                locale=locale,
                external_messenger_channel_id=channel_id,
                source_id=source_id,
                metadata=metadata,
            )
        else:
            body = wire.ConversationData(
                topic=topic,
                recipient=(
                    wire.ConversationRecipientRef(
                        type_=_V3_RECIPIENT_TYPES[recipient.type], id=recipient.id
                    )
                    if recipient
                    else None
                ),
                participants=[
                    wire.ParticipantData(
                        person_id=contact.person_id, connected_via_external_messenger=True
                    )
                ],
                context_person_id=contact.person_id,
                initial_engagement_type=engagement_type,
                locale=locale,
                external_messenger_channel_id=channel_id,
                source_id=source_id,
                metadata=metadata,
            )
        data = await self._call("POST", path, body=body)
        return self._decode(data, Conversation, f"POST {path}")

    async def get_conversation(self, conversation_id: str) -> Conversation:
        """Read one conversation (raises :class:`UnbluNotFound` when it does not exist)."""
        if self._v4:
            path = "/conversations/{conversationId}/read"
            data = await self._call("GET", path, {"conversationId": conversation_id})
        else:
            path = "/conversations/read"
            data = await self._call("GET", path, query={"id": conversation_id})
        return self._decode(data, Conversation, f"GET {path}")

    async def end_conversation(
        self,
        conversation_id: str,
        reason: str = "EXTERNAL_CHANNEL_CLOSED",
        *,
        comment: str | None = None,
    ) -> Conversation:
        """End a conversation, by default because the messenger side closed it."""
        path = "/conversations/{conversationId}/end"
        data = await self._call(
            "POST",
            path,
            {"conversationId": conversation_id},
            body=wire.ConversationsEndBody(reason=reason, comment=comment),
        )
        return self._decode(data, Conversation, f"POST {path}")

    # -- messages ------------------------------------------------------------------------------
    async def send_text(
        self,
        channel_id: str,
        conversation_id: str,
        sender: ContactRef,
        source_id: str,
        text: str,
        *,
        reply_to_message_id: str | None = None,
        external_message_id: str | None = None,
    ) -> str:
        """Post a messenger user's text into the conversation; return Unblu's id for it.

        ``source_id`` is the provider's message id (read receipts refer to it). v3 returns the
        message's *action* id (Unblu 6/7 do not return the message id) and has no
        ``externalMessageId``, which is then not sent. Text is sent as SIMPLE_TEXT, so a
        messenger user's ``*`` and ``_`` are not read as Markdown.
        """
        data = wire.TextPostMessageData(type="TEXT", text=text, text_type="SIMPLE_TEXT")
        return await self._send(
            channel_id,
            conversation_id,
            sender,
            source_id,
            data,
            reply_to_message_id=reply_to_message_id,
            external_message_id=external_message_id,
        )

    async def send_file(
        self,
        channel_id: str,
        conversation_id: str,
        sender: ContactRef,
        source_id: str,
        *,
        file_name: str,
        mime_type: str,
        data: bytes,
        caption: str | None = None,
        reply_to_message_id: str | None = None,
        external_message_id: str | None = None,
    ) -> str:
        """Post a file (sent inline as an RFC 2397 base64 data URL); return Unblu's id for it."""
        media_type = "".join(mime_type.split()) or "application/octet-stream"
        if "," in media_type:
            raise ValueError(f"invalid MIME type {mime_type!r}")
        file_data = f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"
        message = wire.FilePostMessageData(
            type="FILE",
            file_name=file_name,
            file_data=file_data,
            caption=caption or None,
            fallback_text=caption or file_name,
        )
        return await self._send(
            channel_id,
            conversation_id,
            sender,
            source_id,
            message,
            reply_to_message_id=reply_to_message_id,
            external_message_id=external_message_id,
        )

    async def _send(
        self,
        channel_id: str,
        conversation_id: str,
        sender: ContactRef,
        source_id: str,
        data: wire.TextPostMessageData | wire.FilePostMessageData,
        *,
        reply_to_message_id: str | None,
        external_message_id: str | None,
    ) -> str:
        if self._v4:
            if not sender.contact_id:
                raise ValueError("v4 sendMessage needs the sender's ExternalMessengerContact id")
            path = "/externalmessengers/{channelId}/sendMessage"
            body = wire.ExternalMessengerPostMessage(
                conversation_id=conversation_id,
                message_data=data,
                sender_external_messenger_contact_id=sender.contact_id,
                source_id=source_id,
                reply_to_message_id=reply_to_message_id,
                external_message_id=external_message_id,
            )
            result = await self._call("POST", path, {"channelId": channel_id}, body=body)
            return self._decode(result, wire.SendMessageResult, f"POST {path}").message_id
        path = "/externalmessengers/sendMessage"
        body = wire.ExternalMessengerPostMessage(
            conversation_id=conversation_id,
            message_data=data,
            external_messenger_channel_id=channel_id,
            sender_person_id=sender.person_id,
            source_id=source_id,
            reply_to_message_id=reply_to_message_id,
        )
        result = await self._call("POST", path, body=body)
        return self._decode(result, str, f"POST {path}")

    # -- finding posted messages ---------------------------------------------------------------
    @property
    def can_find_posted(self) -> bool:
        """True for v4, whose message log carries each message's ``externalMessageId``. v3's
        ``ConversationHistoryMessageData`` has neither that nor the ``sourceId``."""
        return self._v4

    async def find_posted(
        self,
        conversation_id: str,
        external_ids: Collection[str],
        *,
        since: float | None = None,
        page_size: int = 100,
        max_pages: int = 20,
    ) -> dict[str, str]:
        """Which of ``external_ids`` (``externalMessageId`` values given to sendMessage) the
        conversation holds: a dict from each one found to Unblu's message id.

        v4 only (:attr:`can_find_posted`). Reads ``exportMessageLog`` newest first, from
        ``since`` (epoch seconds) on when given, page by page until all are found or the log
        ends. Needs role ``ADMIN`` (403 without it). Raises :class:`UnbluError` after
        ``max_pages`` pages without an end, rather than reading on without bound.
        """
        if not self._v4:
            raise ValueError("finding a message by externalMessageId needs web API v4")
        wanted = set(external_ids)
        found: dict[str, str] = {}
        filters = (
            [
                wire.SendTimestampMessageExportFilter(
                    field="SEND_TIMESTAMP",
                    operator=wire.GreaterThanTimestampOperator(
                        type="GREATER_THAN", value=int(since * 1000)
                    ),
                )
            ]
            if since is not None and since > 0
            else None
        )
        # Newest first: a message posted while we page pushes the rest down, so a page may
        # repeat an entry but never skips one.
        offset = 0
        operation = f"POST {_MESSAGE_LOG}"
        for _ in range(max_pages):
            query = wire.MessageExportQuery(
                search_filters=filters,
                order_by=[wire.MessageExportOrderBy(field="SEND_TIMESTAMP", order="DESCENDING")],
                offset=offset or None,
                limit=page_size,
            )
            data = await self._call(
                "POST", _MESSAGE_LOG, {"conversationId": conversation_id}, body=query
            )
            page = self._decode(data, wire.MessageExportResult, operation)
            for item in page.items:
                if item.external_message_id in wanted:
                    found[item.external_message_id] = item.id
            if len(found) == len(wanted) or not page.has_more_items or not page.items:
                return found
            offset = page.next_offset if page.next_offset is not None else offset + len(page.items)
        raise UnbluError(
            operation,
            error_message=f"more than {max_pages * page_size} messages to read; gave up",
            retryable=False,
        )

    async def check_message_lookup(self) -> LookupAccess:
        """Whether :meth:`find_posted` can work for this server and API user.

        One ``exportMessageLog`` call for a conversation that does not exist: 403 means the
        user lacks the role; 404 (or another answer from behind the role check) means it has it.
        """
        if not self._v4:
            return LookupAccess(
                False,
                "web API v3 lists no message's externalMessageId or sourceId, so a message "
                "cannot be found by our id",
            )
        try:
            await self._call(
                "POST",
                _MESSAGE_LOG,
                {"conversationId": _PROBE_CONVERSATION},
                body=wire.MessageExportQuery(limit=1),
            )
        except UnbluError as exc:
            if exc.status == 403:
                said = f": {exc.error_message}" if exc.error_message else ""
                return LookupAccess(
                    False,
                    f"the Unblu API user lacks the role {MESSAGE_LOG_ROLE} that "
                    f"{_MESSAGE_LOG} needs (HTTP 403{said})",
                )
            if exc.status is None or exc.status == 401 or exc.retryable:
                return LookupAccess(None, f"cannot tell now: {exc}")
        return LookupAccess(True, f"{_MESSAGE_LOG} is allowed")

    # -- message states ------------------------------------------------------------------------
    async def message_sent(self, channel_id: str, conversation_id: str, message_id: str) -> None:
        """Report that an agent's message reached the messenger (not yet delivered)."""
        body = wire.ExternalMessengersMessageSentSuccessfullyBody(
            conversation_id=conversation_id,
            message_id=message_id,
            external_messenger_channel_id=None if self._v4 else channel_id,
        )
        await self._channel_call("messageSentSuccessfully", channel_id, body)

    async def message_delivered(
        self,
        channel_id: str,
        conversation_id: str,
        message_id: str,
        *,
        contact: ContactRef | None = None,
    ) -> None:
        """Report an agent's message as delivered (to ``contact``, or to every external
        participant when None)."""
        body = wire.ExternalMessengersMessageDeliveredBody(
            conversation_id=conversation_id,
            message_id=message_id,
            **self._state_ids(channel_id, contact),
        )
        await self._channel_call("messageDelivered", channel_id, body)

    async def message_read(
        self,
        channel_id: str,
        conversation_id: str,
        message_id: str,
        *,
        contact: ContactRef | None = None,
    ) -> None:
        """Report an agent's message as read (which implies delivered)."""
        body = wire.ExternalMessengersMessageReadBody(
            conversation_id=conversation_id,
            message_id=message_id,
            **self._state_ids(channel_id, contact),
        )
        await self._channel_call("messageRead", channel_id, body)

    async def message_send_failed(
        self,
        channel_id: str,
        conversation_id: str,
        message_id: str,
        *,
        terminal: bool,
        failure_text: str,
    ) -> None:
        """Report that an agent's message could not be sent; ``failure_text`` is shown to the
        agent, and a non-terminal failure lets them retry."""
        state: wire.SendFailState = "TERMINAL" if terminal else "RETRYABLE"
        body = wire.ExternalMessengersMessageSendFailedBody(
            conversation_id=conversation_id,
            message_id=message_id,
            failure_text=failure_text,
            **(
                {"fail_state": state}
                if self._v4
                else {"failed_state": state, "external_messenger_channel_id": channel_id}
            ),
        )
        await self._channel_call("messageSendFailed", channel_id, body)

    def _state_ids(self, channel_id: str, contact: ContactRef | None) -> dict[str, str | None]:
        if self._v4:
            return {"external_messenger_contact_id": contact.contact_id if contact else None}
        return {
            "external_messenger_channel_id": channel_id,
            "person_id": contact.person_id if contact else None,
        }

    async def _channel_call(self, operation: str, channel_id: str, body: msgspec.Struct) -> None:
        if self._v4:
            await self._call(
                "POST",
                f"/externalmessengers/{{channelId}}/{operation}",
                {"channelId": channel_id},
                body,
            )
        else:
            await self._call("POST", f"/externalmessengers/{operation}", body=body)

    # -- ping ----------------------------------------------------------------------------------
    async def ping(self, channel_id: str) -> str | None:
        """Ask Unblu to ping the channel's endpoint.

        v4 returns the ``pingId`` our endpoint echoed; v3 (``pingCustomChannel``, 204) returns
        None because Unblu 6/7 only emit a ``ping`` webhook event and report nothing back.
        """
        if self._v4:
            path = "/externalmessengers/{channelId}/sendPing"
            data = await self._call("POST", path, {"channelId": channel_id})
            return self._decode(data, wire.PingResult, f"POST {path}").ping_id
        await self._call(
            "POST",
            "/externalmessengers/pingCustomChannel",
            body=wire.ExternalMessengersPingCustomChannelBody(
                external_messenger_channel_id=channel_id
            ),
        )
        return None

    # -- files ---------------------------------------------------------------------------------
    async def download(
        self,
        url: str,
        *,
        max_bytes: int = 100 * 1024 * 1024,
        time_limit: float | None = None,
    ) -> tuple[bytes, str | None]:
        """Fetch a file an agent sent; see :meth:`_download` (told to the observer as
        ``download``)."""
        if self._observer is None:
            return await self._download(url, max_bytes, time_limit)
        return await self._observed("download", self._download(url, max_bytes, time_limit))

    async def _download(
        self, url: str, max_bytes: int, time_limit: float | None
    ) -> tuple[bytes, str | None]:
        """Fetch a file an agent sent (its WEB_API download link); return data and MIME type.

        Credentials only ever go to the origin of ``base_url``. A link to another origin whose
        path lies under the web API prefix (Unblu building links from its public URL behind a
        proxy) is fetched from ``base_url``'s origin instead; any other link is refused.
        While file interceptors review an upload Unblu answers 403, reported as retryable.
        ``time_limit`` defaults to the client timeout, but at least 60 s. The request goes
        through :func:`extmsg.fetch.fetch` (the configured origin is exempt from its address
        check: Unblu is often on the internal network); redirects are not followed.
        """
        operation = "GET <file download link>"
        base = yarl.URL(self._root)
        target = base.join(yarl.URL(url))
        if target.origin() != base.origin():
            prefix = base.path.rsplit("/", 1)[0] + "/"
            if not target.path.startswith(prefix):
                raise UnbluError(
                    operation,
                    error_message=(
                        f"refusing to send Unblu credentials to {target.origin()}; "
                        f"the link is outside {base.origin()}{prefix}"
                    ),
                    retryable=False,
                )
            target = base.origin().join(yarl.URL(target.raw_path_qs, encoded=True))
        try:
            fetched = await fetch(
                str(target),
                max_bytes=max_bytes,
                time_limit=time_limit or max(self._timeout, 60.0),
                credentials={"Authorization": self.__authorization},
                credential_origins=[str(base.origin())],
                headers={"User-Agent": _USER_AGENT},
                max_redirects=0,  # a link is answered by Unblu itself, never elsewhere
            )
        except FetchTooLarge as exc:
            raise UnbluError(
                operation,
                status=exc.status,
                error_message=f"file is larger than {max_bytes} bytes",
                retryable=False,
            ) from None
        except FetchRefused as exc:
            raise UnbluError(operation, error_message=exc.message, retryable=False) from None
        except RetryableError as exc:
            raise UnbluError(operation, error_message=exc.message) from exc
        if fetched.status != 200:
            raw = fetched.data
            try:
                data: Any = msgspec.json.decode(raw) if raw.strip() else None
            except msgspec.DecodeError:
                data = None
            message = self._error_message(data) or fetched.reason or None
            if fetched.status == 403:
                message = f"file not available (yet): {message or 'forbidden'}"
            cls = UnbluNotFound if fetched.status == 404 else UnbluError
            raise cls(
                operation,
                status=fetched.status,
                error_message=message,
                retry_after=parse_retry_after(fetched.headers.get("Retry-After")),
                retryable=True if fetched.status == 403 else None,
            )
        return fetched.data, fetched.content_type or None


@functools.lru_cache(maxsize=256)
def call_name(path_template: str) -> str:
    """A call's short, stable name for metrics: its path template without the path parameters,
    e.g. ``/externalmessengers/{channelId}/sendMessage`` -> ``externalmessengers/sendMessage``
    (the same name on web API v3 and v4)."""
    return "/".join(part for part in path_template.split("/") if part and part[0] != "{")


def _fill_path(template: str, params: Mapping[str, str]) -> str:
    pieces = _path_pieces(template)
    if len(pieces) == 1:
        return template
    if len(pieces) == 3:
        return _filled_once(template, _path_param(template, params, pieces[1]))
    filled = list(pieces)
    for index in range(1, len(pieces), 2):
        filled[index] = quote(_path_param(template, params, pieces[index]), safe="")
    return "".join(filled)


def _path_param(template: str, params: Mapping[str, str], name: str) -> str:
    try:
        value = params[name]
    except KeyError:
        raise ValueError(f"missing path parameter {name!r} for {template}") from None
    if not value:
        raise ValueError(f"empty path parameter {name!r} for {template}")
    return value


@functools.lru_cache(maxsize=1024)
def _filled_once(template: str, value: str) -> str:
    """``template`` of one parameter filled with ``value``, kept: a channel's paths come back
    with every message posted and every state reported, and ``quote`` is dear."""
    head, _, tail = _path_pieces(template)
    return head + quote(value, safe="") + tail


@functools.lru_cache(maxsize=256)
def _path_pieces(template: str) -> tuple[str, ...]:
    """``template`` split at its parameters: text, name, text, name, …, text."""
    return tuple(_PATH_PARAM.split(template))


def _describe_network_error(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return f"cannot connect to {exc.host}:{exc.port} ({reason})"
    return type(exc).__name__


def _camel(attr: str) -> str:
    head, *rest = attr.split("_")
    return head + "".join(part.title() for part in rest)
