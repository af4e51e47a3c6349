"""The values that cross a boundary: plugin hooks, the store, the HTTP edges.

Every model is a frozen ``msgspec.Struct`` so it can be stored as JSON and passed between
plugins without copies or surprises. Plugins build them with keyword arguments.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import unquote

import msgspec

__all__ = [
    "Attachment",
    "Channel",
    "Contact",
    "ContactCheck",
    "ContactUpdate",
    "ErrorVerdict",
    "HttpReply",
    "InboundEvent",
    "InboundMessage",
    "InboundRequest",
    "MessageState",
    "MessengerType",
    "OutboundMessage",
    "ProviderFake",
    "Recipient",
    "Route",
    "RouteUrls",
    "Routing",
    "Secret",
    "SendResult",
    "StatusUpdate",
]

#: A settings field holding a secret: redacted wherever settings are shown or logged.
Secret = Annotated[str, msgspec.Meta(extra={"secret": True})]


class MessageState(enum.IntEnum):
    """Delivery state of one message; the order is the only direction a state may move."""

    PENDING = 0
    SENT = 1
    DELIVERED = 2
    READ = 3
    FAILED = 4

    @classmethod
    def parse(cls, value: str) -> MessageState:
        return cls[value.upper()]


class Struct(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of the models: keyword-only, immutable, compact when encoded."""


# --- HTTP edges -------------------------------------------------------------------------------
def _parse_form(text: str) -> list[tuple[str, str]]:
    """``application/x-www-form-urlencoded`` pairs, in order: what
    ``urllib.parse.parse_qsl(text, keep_blank_values=True)`` answers, in a fraction of its time
    (most names and values need no decoding, so they are not decoded)."""
    if "+" in text:  # never ``&`` or ``=``: replacing before splitting changes no piece
        text = text.replace("+", " ")
    pairs: list[tuple[str, str]] = []
    for piece in text.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            if "%" in piece:
                pairs.append((_unquote(name), _unquote(value)))
            else:
                pairs.append((name, value))
    return pairs


_HEX_DIGITS = "0123456789ABCDEFabcdef"
#: Each two hex digits ``unquote`` decodes, as the byte they stand for (a character below 256).
_ESCAPES = {a + b: chr(int(a + b, 16)) for a in _HEX_DIGITS for b in _HEX_DIGITS}


def _unquote(text: str) -> str:
    """``urllib.parse.unquote(text)``. An ASCII text (what form bodies are, all but always) is
    decoded here at about half the cost: each escape becomes the Latin-1 character of its
    byte, and the whole is read back as UTF-8 (invalid bytes replaced). A ``%`` without two
    hex digits after it stays as it is, as there."""
    if "%" not in text:
        return text
    if not text.isascii():
        # Raw non-ASCII: unquote decodes each ASCII run between such characters on its own.
        return unquote(text, errors="replace")
    bits = text.split("%")
    out = [bits[0]]
    for bit in bits[1:]:
        char = _ESCAPES.get(bit[:2])
        out.append("%" + bit if char is None else char + bit[2:])
    decoded = "".join(out)
    if decoded.isascii():
        return decoded
    return decoded.encode("latin-1").decode("utf-8", "replace")


class InboundRequest(Struct, frozen=True, dict=True):
    """A provider's HTTP request, as the core received it.

    :ivar url: the public URL the provider called (rebuilt from ``server.public_url`` and
        ``X-Forwarded-*`` so signatures over the URL verify behind proxies).
    :ivar headers: header names lower-cased; repeated headers joined with ``,``.
    :ivar body: the raw body, unparsed, as signatures cover it.
    """

    method: str
    url: str
    path: str
    route: str
    query: tuple[tuple[str, str], ...] = ()
    headers: Mapping[str, str] = msgspec.field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def form(self) -> list[tuple[str, str]]:
        """The body as ``application/x-www-form-urlencoded`` pairs, in order.

        Parsed once per request (verifying and parsing both need it); each call answers a
        list of its own.
        """
        cached: list[tuple[str, str]] | None = self.__dict__.get("_form")
        if cached is None:
            cached = _parse_form(self.body.decode("utf-8", "replace"))
            self.__dict__["_form"] = cached
        return list(cached)

    def query_value(self, name: str) -> str | None:
        for key, value in self.query:
            if key == name:
                return value
        return None


class HttpReply(Struct, frozen=True):
    """What the core answers to a provider's request."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"
    headers: Mapping[str, str] = msgspec.field(default_factory=dict)


RouteScope = Literal["channel", "messenger"]


class Route(Struct, frozen=True):
    """An HTTP route a messenger needs.

    Channel routes are served at ``/channels/{channel}/{path}``: the core knows the channel from
    the URL. Messenger routes are served at ``/messengers/{messenger}/{path}`` for providers
    that call one URL for several accounts (Meta's webhook); the parser then names the channel
    of each event.

    :ivar name: identifies the route in hook calls (``"inbound"``, ``"status"``, ``"verify"``).
    :ivar kind: ``"events"`` requests go through verify → parse → durable write → ack;
        ``"handler"`` requests are answered directly by ``handler(request, channels)`` (e.g. a
        GET handshake or a media download link) and write nothing; ``channels`` is the route's
        channel, or every channel of the messenger for a messenger route.
    """

    name: str
    path: str
    method: str = "POST"
    scope: RouteScope = "channel"
    kind: Literal["events", "handler"] = "events"
    handler: Callable[[InboundRequest, Sequence[Channel]], Awaitable[HttpReply]] | None = None


# --- messenger declaration ---------------------------------------------------------------------
ContactIdentifierType = Literal["PHONE_NUMBER", "EMAIL", "NUMBER", "OTHER"]


class MessengerType(Struct, frozen=True):
    """A kind of messenger a plugin provides.

    :ivar name: the ``messenger`` value channels use in the config (``"sms_twilio"``).
    :ivar settings: the msgspec Struct type that validates a channel's ``settings`` table;
        mark secrets with :data:`Secret`.
    :ivar contact_identifier_type: what identifies a contact (Unblu
        ``contactIdentifierFieldType``).
    :ivar routes: the HTTP routes the messenger's provider calls.
    :ivar max_text_length: longest text one send carries; longer texts are split by the
        messenger's renderer.
    :ivar media_by_url: the provider fetches files from a URL: the core publishes an agent's
        file at a signed, expiring link of its own and puts it in ``attachment.url``.
    :ivar opt_out_keywords: the default of a channel's ``opt_out_keywords``: a message that is
        one of these words (any case) opts its contact out (see :mod:`extmsg.optout`).
    :ivar opt_in_keywords: the default of ``opt_in_keywords``: opts the contact back in.
    :ivar opt_out_reply: the default confirmation sent for an opt-out (None: none, e.g. where
        the provider confirms by itself).
    :ivar opt_in_reply: the default confirmation sent for an opt-in.
    :ivar config_example: a commented ``[[channels]]`` table of this messenger, which
        ``extmsg init`` adds to the example configuration it writes.
    """

    name: str
    settings: type[msgspec.Struct]
    description: str = ""
    contact_identifier_type: ContactIdentifierType = "OTHER"
    contact_identifier_name: str = "id"
    routes: Sequence[Route] = ()
    max_text_length: int | None = None
    media_by_url: bool = False
    opt_out_keywords: frozenset[str] | tuple[str, ...] = ()
    opt_in_keywords: frozenset[str] | tuple[str, ...] = ()
    opt_out_reply: str | None = None
    opt_in_reply: str | None = None
    config_example: str = ""


class Recipient(Struct, frozen=True):
    """Who a new conversation is addressed to (Unblu ``EConversationRecipientType``)."""

    type: Literal["AGENT", "TEAM", "NAMED_AREA", "ACCOUNT"]
    id: str


class Channel(Struct, frozen=True):
    """One configured account of a messenger, mirrored by one Unblu channel.

    :ivar settings: the validated instance of the messenger's settings Struct.
    :ivar public_url: the URL under which this channel's routes are reachable from outside.
    :ivar fetch_allowed_networks: non-public networks a provider's file URL may point into
        (``[server] fetch_allowed_networks``); pass it to :func:`extmsg.fetch.fetch`.
    :ivar ended_text: sent to the contact when Unblu ends the conversation (None: nothing).
    :ivar opt_out_keywords: words that opt a contact out; None: the messenger's default
        (:mod:`extmsg.optout`). Likewise ``opt_in_keywords``, ``opt_out_reply`` and
        ``opt_in_reply`` (an empty reply: none).
    """

    name: str
    messenger: str
    settings: Any
    public_url: str
    webhook_secret: str
    engagement_type: str = "CHAT_REQUEST"
    recipient: Recipient | None = None
    sender_prefix: str = "{sender}: "
    sender_fallback: str = "Agent"
    topic: str | None = None
    verify_signatures: bool = True
    fetch_allowed_networks: tuple[str, ...] = ()
    ended_text: str | None = None
    opt_out_keywords: tuple[str, ...] | None = None
    opt_in_keywords: tuple[str, ...] | None = None
    opt_out_reply: str | None = None
    opt_in_reply: str | None = None

    def route_url(self, path: str) -> str:
        return f"{self.public_url.rstrip('/')}/channels/{self.name}/{path.lstrip('/')}"


# --- inbound (messenger → Unblu) ---------------------------------------------------------------
class Contact(Struct, frozen=True):
    """A person on the messenger side.

    :ivar address: the normalized identifier (E.164 number, lower-cased mailbox, WhatsApp id);
        with the channel it identifies the contact.
    """

    address: str
    name: str | None = None
    phone: str | None = None
    email: str | None = None


class Attachment(Struct, frozen=True):
    """A file in a message: its bytes, or a URL the messenger plugin can fetch them from."""

    file_name: str
    mime_type: str = "application/octet-stream"
    data: bytes | None = None
    url: str | None = None
    caption: str | None = None


class InboundMessage(Struct, frozen=True, tag="message"):
    """A message a contact wrote.

    :ivar provider_message_id: the provider's id (MessageSid, wamid, Message-ID); the dedup key
        together with the channel, and Unblu's ``sourceId`` for the message.
    :ivar thread: the messenger-side conversation; defaults to the contact's address. With the
        channel it is the conversation's ``sourceId`` in Unblu and the ordering lane.
    :ivar channel: only for messenger-scoped routes: the channel the message belongs to.
    """

    provider_message_id: str
    contact: Contact
    text: str | None = None
    attachments: tuple[Attachment, ...] = ()
    thread: str | None = None
    reply_to: str | None = None
    sent_at: float | None = None
    channel: str | None = None

    @property
    def thread_id(self) -> str:
        return self.thread or self.contact.address


class StatusUpdate(Struct, frozen=True, tag="status"):
    """The provider's word on a message we sent.

    Correlated by ``message_ref`` (our own id, when the provider echoes it, e.g. in a status
    callback URL) first, then by ``provider_message_id``.
    """

    state: Literal["sent", "delivered", "read", "failed"]
    provider_message_id: str | None = None
    message_ref: str | None = None
    error_code: str | None = None
    error_text: str | None = None
    channel: str | None = None


class ContactUpdate(Struct, frozen=True, tag="contact"):
    """A change of a contact's standing, e.g. an SMS ``STOP`` (opted out) or ``START``."""

    address: str
    opted_out: bool
    reason: str | None = None
    channel: str | None = None


InboundEvent = InboundMessage | StatusUpdate | ContactUpdate


class Routing(Struct, frozen=True):
    """How a new Unblu conversation is opened for a contact."""

    engagement_type: str = "CHAT_REQUEST"
    recipient: Recipient | None = None
    topic: str | None = None
    locale: str | None = None


# --- outbound (Unblu → messenger) ---------------------------------------------------------------
class OutboundMessage(Struct, frozen=True):
    """A message an agent wrote, on its way to a contact.

    :ivar id: our id for the message (Unblu's ``externalMessageId``); providers that echo a
        reference get this one.
    :ivar text: the text to send; after rendering, exactly what the contact will read.
    :ivar part: index when rendering split one agent message into several sends.
    :ivar last_inbound_at: when the contact last wrote on this thread (epoch seconds), for
        messengers with a reply window.
    :ivar accepted_at: when extmsg accepted the agent's message (epoch seconds): no attempt to
        send it is older, so a provider lookup (:func:`~extmsg.hookspecs.extmsg_find_sent`)
        need not search before it. None when the caller does not know.
    """

    id: str
    unblu_message_id: str
    conversation_id: str
    contact: Contact
    text: str | None = None
    attachment: Attachment | None = None
    sender_name: str | None = None
    thread: str | None = None
    reply_to: str | None = None
    template: str | None = None
    template_params: tuple[str, ...] = ()
    part: int = 0
    last_inbound_at: float | None = None
    accepted_at: float | None = None


class SendResult(Struct, frozen=True):
    """What the provider said when it accepted a send."""

    provider_message_id: str
    state: Literal["sent", "delivered"] = "sent"


class ErrorVerdict(Struct, frozen=True):
    """A classification of a failure for the delivery engine."""

    retryable: bool
    reason: str
    retry_after: float | None = None
    code: str | None = None


class ContactCheck(Struct, frozen=True):
    """A plugin's answer to an agent-entered contact identifier (outbound conversations)."""

    valid: bool
    address: str = ""
    name: str | None = None
    error: str | None = None


class RouteUrls(Struct, frozen=True):
    """Where the listening server's provider routes are reached from outside, as
    :func:`~extmsg.hookspecs.extmsg_listening` hands them over.

    :ivar base: the server's public base URL (``server.public_url``, or the listener's address).
    :ivar channels: channel name → route name → URL, for every channel route of every channel.
    :ivar messengers: messenger name → route name → URL, for messenger routes.
    """

    base: str
    channels: Mapping[str, Mapping[str, str]] = msgspec.field(default_factory=dict)
    messengers: Mapping[str, Mapping[str, str]] = msgspec.field(default_factory=dict)

    def of(self, channel: str, route: str) -> str:
        """The URL of ``channel``'s route named ``route`` (``KeyError`` when it has none)."""
        return self.channels[channel][route]


class ProviderFake(Struct, frozen=True):
    """A fake of a provider's API a messenger ships for tests and the sandbox.

    :ivar factory: ``factory(extmsg_url=...)`` builds the fake's aiohttp application, working
        with the credentials ``channel_settings`` returns; ``extmsg_url`` is where extmsg
        listens (``http://127.0.0.1:8080``), for fakes that call back (webhooks, statuses).
    :ivar channel_settings: ``channel_settings(base_url, app)``: given where the started fake
        is served (``http://127.0.0.1:PORT``) and its application, the ``settings`` table of a
        channel that talks to it; ``extmsg serve --sandbox`` uses it.
    """

    messenger: str
    name: str
    factory: Callable[..., Any]
    channel_settings: Callable[[str, Any], dict[str, Any]] | None = None
    description: str = ""


def redacted(settings: msgspec.Struct) -> dict[str, Any]:
    """``settings`` as a dict with every :data:`Secret` field replaced by ``"***"``."""
    out: dict[str, Any] = {}
    for field in msgspec.structs.fields(type(settings)):
        value = getattr(settings, field.name)
        out[field.encode_name] = "***" if is_secret(field.type) and value else value
    return out


def is_secret(annotation: Any) -> bool:
    """Whether a field's type is :data:`Secret`, also as ``Secret | None``."""
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, msgspec.Meta) and (meta.extra or {}).get("secret"):
            return True
    return any(is_secret(arg) for arg in typing.get_args(annotation) if arg is not type(None))
