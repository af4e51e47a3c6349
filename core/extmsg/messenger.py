"""A messenger as one small unit: a class whose methods are called for its own channels only.

A plugin author subclasses :class:`Messenger`, names it, gives it a settings Struct and its
routes, and writes the methods the messenger needs; every method is optional. The core turns the
unit into ordinary pluggy hook implementations (:func:`hookimpls_for`) that check, once and in
one place, that the call concerns the unit's messenger — the unit never sees another
messenger's channel or route. Raw hooks (:mod:`extmsg.hookspecs`) stay available beside it.

Each method is the hook of the same name without ``extmsg_`` and without the argument that
said whose call it is:

=================================  ==============================================================
method                             hook (and when it is called for this unit)
=================================  ==============================================================
``verify_inbound(request, chs)``   ``extmsg_verify_inbound``: a request on one of its routes
``parse_inbound(request, chs)``    ``extmsg_parse_inbound``: idem, once verified
``render_ack(request, events)``    ``extmsg_render_ack``: idem, once stored
``fetch_attachment(ch, att)``      ``extmsg_fetch_attachment``: its channel's file, URL only
``validate_contact(ch, ident)``    ``extmsg_validate_contact``: an agent typed a contact
``render_outbound(ch, msg)``       ``extmsg_render_outbound``: an agent's message to render
``send(ch, msg)``                  ``extmsg_send``
``find_sent(ch, msg)``             ``extmsg_find_sent``
``mark_read(ch, provider_id)``     ``extmsg_mark_read``
``classify_error(ch, error)``      ``extmsg_classify_error``: a job of its channel failed
``startup(ctx)`` / ``shutdown``    ``extmsg_startup`` / ``extmsg_shutdown``: always
``listening(ctx, urls)``           ``extmsg_listening``: once the server listens (its URLs)
``provider_fakes()``               ``extmsg_provider_fakes``
=================================  ==============================================================

Methods may be ``async def`` or return a value; a first-result method of the unit always
answers for its channels (``None`` from ``find_sent`` still means "cannot tell"). Two
exceptions decline with a synchronous ``None`` so the next implementation (the core's default)
answers: ``classify_error`` (must be a plain ``def``) and ``fetch_attachment`` when it returns
``None`` without awaiting. A method left out is not registered at all: the core's default
applies (``render_outbound``: the sender prefix; ``render_ack``: an empty ``200``;
``mark_read``: no read receipts; ``validate_contact``: any non-empty identifier).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import msgspec

from .appkeys import RUNTIME
from .draining import IN_FLIGHT
from .errors import PluginError
from .hookspecs import hookimpl
from .models import (
    Attachment,
    Channel,
    ContactCheck,
    ContactIdentifierType,
    ErrorVerdict,
    HttpReply,
    InboundEvent,
    InboundRequest,
    MessengerType,
    OutboundMessage,
    ProviderFake,
    Route,
    RouteScope,
    RouteUrls,
    SendResult,
)

if TYPE_CHECKING:
    from aiohttp import web

    from .config import Config

__all__ = ["Messenger", "MessengerContext", "handler_route", "hookimpls_for"]

Handler = Callable[[InboundRequest, Sequence[Channel]], Awaitable[HttpReply]]


class Intake(Protocol):
    """What a unit needs of the running core (the core's runtime, or a test's stand-in)."""

    store: Any

    def channels_of(self, messenger: str) -> list[Channel]: ...

    def accept(self, channel: str, events: Sequence[InboundEvent]) -> Awaitable[Sequence[Any]]: ...


class MessengerContext:
    """What :meth:`Messenger.startup`, :meth:`~Messenger.listening` and
    :meth:`~Messenger.shutdown` get: the running server, seen from one messenger.

    :ivar app: the aiohttp application (keep long-lived objects on the unit itself).
    :ivar config: the validated configuration (``None`` in tests that start a unit bare).
    :ivar channels: the configured channels of this messenger (possibly none).
    """

    def __init__(self, app: web.Application, config: Config | None, messenger: str) -> None:
        self.app = app
        self.config = config
        self._core: Intake | None = app.get(RUNTIME)
        self.channels: list[Channel] = (
            self._core.channels_of(messenger) if self._core is not None else []
        )

    @property
    def store(self) -> Any:
        """The core's store (``thread_meta``/``put_thread_meta`` keep small per-thread
        memory across restarts)."""
        return self._require().store

    async def accept(self, channel: str, events: Sequence[InboundEvent]) -> Sequence[Any]:
        """Store events that did not come through an HTTP route (mail from SMTP or IMAP).

        Returns one result per event (``.accepted`` is False for a duplicate) once they and
        their jobs are committed: only then may the source be acknowledged.
        """
        return await self._require().accept(channel, events)

    @property
    def stopping(self) -> bool:
        """Whether the server began to stop (SIGTERM): from then on a source that is not an
        HTTP route (an SMTP listener) refuses new work with a temporary error, as the HTTP
        listener answers 503."""
        in_flight = self.app.get(IN_FLIGHT)
        return in_flight is not None and not in_flight.taking()

    def in_flight(self) -> contextlib.AbstractContextManager[None]:
        """``with ctx.in_flight():`` counts the work inside (a mail being stored and
        acknowledged) as a request in flight: the stop's drain waits for it, up to ``[server]
        shutdown_timeout``, before the engine and the store stop. Enter it in the same step
        as the check of :attr:`stopping` (no ``await`` between), so no work slips past the
        drain."""
        in_flight = self.app.get(IN_FLIGHT)
        return in_flight.hold() if in_flight is not None else contextlib.nullcontext()

    def _require(self) -> Intake:
        if self._core is None:
            raise RuntimeError("the messenger is not running inside extmsg serve")
        return self._core


def handler_route(
    path: str, *, method: str = "GET", scope: RouteScope = "channel", name: str | None = None
) -> Callable[[Callable[..., Awaitable[HttpReply]]], Callable[..., Awaitable[HttpReply]]]:
    """Declare a method as a route answered directly (a GET handshake, a download link):
    ``async def verify(self, request, channels) -> HttpReply``. Nothing is stored for it."""

    def mark(fn: Callable[..., Awaitable[HttpReply]]) -> Callable[..., Awaitable[HttpReply]]:
        fn.__dict__["extmsg_route"] = Route(
            name=name or fn.__name__, path=path, method=method, scope=scope, kind="handler"
        )
        return fn

    return mark


class Messenger:
    """Base class of a messenger unit. Set the class attributes; write the methods you need.

    :cvar name: the ``messenger`` value channels use in the config (``"telegram"``).
    :cvar settings: the msgspec Struct validating a channel's ``settings`` (mark secrets with
        :data:`~extmsg.models.Secret`); its instance is ``channel.settings``.
    :cvar routes: the provider's webhook routes (``Route(name="inbound", path="inbound")``);
        handler routes are declared with :func:`handler_route` on a method.
    :cvar opt_out_keywords: the default of a channel's ``opt_out_keywords`` (the core applies
        them, :mod:`extmsg.optout`); likewise ``opt_in_keywords``, ``opt_out_reply`` and
        ``opt_in_reply`` (None: no confirmation, e.g. where the provider sends one itself).
    :cvar config_example: a commented ``[[channels]]`` table for ``extmsg init``'s example.
    """

    name: ClassVar[str]
    settings: ClassVar[type[msgspec.Struct]]
    description: ClassVar[str] = ""
    contact_identifier_type: ClassVar[ContactIdentifierType] = "OTHER"
    contact_identifier_name: ClassVar[str] = "id"
    routes: ClassVar[Sequence[Route]] = ()
    max_text_length: ClassVar[int | None] = None
    media_by_url: ClassVar[bool] = False
    opt_out_keywords: ClassVar[frozenset[str] | tuple[str, ...]] = ()
    opt_in_keywords: ClassVar[frozenset[str] | tuple[str, ...]] = ()
    opt_out_reply: ClassVar[str | None] = None
    opt_in_reply: ClassVar[str | None] = None
    config_example: ClassVar[str] = ""

    # Every hook method below is optional; the ones a subclass leaves out are not registered.
    def messenger_type(self) -> MessengerType:
        """The declaration the core validates channels with (built from the class attributes)."""
        handlers = [
            msgspec.structs.replace(route, handler=getattr(self, attr))
            for attr, route in _handler_routes(type(self))
        ]
        return MessengerType(
            name=self.name,
            settings=self.settings,
            description=self.description,
            contact_identifier_type=self.contact_identifier_type,
            contact_identifier_name=self.contact_identifier_name,
            routes=(*self.routes, *handlers),
            max_text_length=self.max_text_length,
            media_by_url=self.media_by_url,
            opt_out_keywords=self.opt_out_keywords,
            opt_in_keywords=self.opt_in_keywords,
            opt_out_reply=self.opt_out_reply,
            opt_in_reply=self.opt_in_reply,
            config_example=self.config_example,
        )

    def provider_fakes(self) -> Sequence[ProviderFake]:
        return ()

    async def startup(self, ctx: MessengerContext) -> None:
        return None

    async def listening(self, ctx: MessengerContext, urls: RouteUrls) -> None:
        return None

    async def shutdown(self, ctx: MessengerContext) -> None:
        return None

    if TYPE_CHECKING:  # the optional hook methods, typed for subclasses and the docs

        def verify_inbound(
            self, request: InboundRequest, channels: Sequence[Channel]
        ) -> bool | Awaitable[bool]: ...
        def parse_inbound(
            self, request: InboundRequest, channels: Sequence[Channel]
        ) -> Sequence[InboundEvent] | Awaitable[Sequence[InboundEvent]]: ...
        def render_ack(
            self, request: InboundRequest, events: Sequence[InboundEvent]
        ) -> HttpReply | Awaitable[HttpReply]: ...
        def fetch_attachment(
            self, channel: Channel, attachment: Attachment
        ) -> Attachment | Awaitable[Attachment] | None: ...
        def validate_contact(
            self, channel: Channel, identifier: str
        ) -> ContactCheck | Awaitable[ContactCheck]: ...
        def render_outbound(
            self, channel: Channel, message: OutboundMessage
        ) -> Sequence[OutboundMessage] | Awaitable[Sequence[OutboundMessage]]: ...
        def send(
            self, channel: Channel, message: OutboundMessage
        ) -> SendResult | Awaitable[SendResult]: ...
        def find_sent(
            self, channel: Channel, message: OutboundMessage
        ) -> SendResult | bool | Awaitable[SendResult | bool | None] | None: ...
        def mark_read(
            self, channel: Channel, provider_message_id: str
        ) -> bool | Awaitable[bool]: ...
        def classify_error(self, channel: Channel, error: BaseException) -> ErrorVerdict | None: ...


def _handler_routes(cls: type) -> list[tuple[str, Route]]:
    found = []
    for attr in dir(cls):
        route = getattr(getattr(cls, attr, None), "extmsg_route", None)
        if isinstance(route, Route):
            found.append((attr, route))
    return found


#: Unit methods that are adapted into hooks; the rest of a unit is its own business.
HOOK_METHODS = (
    "verify_inbound",
    "parse_inbound",
    "render_ack",
    "fetch_attachment",
    "validate_contact",
    "render_outbound",
    "send",
    "find_sent",
    "mark_read",
    "classify_error",
)


#: Hooks a unit does not offer: they concern every channel alike (a CRM lookup, routing rules)
#: and are written as raw hooks.
RAW_ONLY_HOOKS = ("extmsg_map_contact", "extmsg_route_conversation")


def _has(unit: Messenger, method: str) -> bool:
    return callable(getattr(unit, method, None))


class _Hooks:
    """The pluggy plugin a unit becomes: only the hooks the unit implements, each a plain
    function that declines (``None``) for other messengers."""

    def __init__(self, unit: Messenger) -> None:
        self.unit = unit

    def __repr__(self) -> str:
        return f"<messenger {self.unit.name!r} ({type(self.unit).__qualname__})>"


def hookimpls_for(unit: Messenger | type[Messenger]) -> object:
    """The object the core registers with pluggy for ``unit`` (a class is instantiated)."""
    if isinstance(unit, type):
        unit = unit()
    cls = type(unit)
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"messenger class {cls.__qualname__} sets no 'name'")
    if not isinstance(getattr(cls, "settings", None), type):
        raise PluginError(f"messenger {name!r} sets no 'settings' Struct")
    if inspect.iscoroutinefunction(getattr(unit, "classify_error", None)):
        raise PluginError(
            f"messenger {name!r}: classify_error must be a plain 'def' (it returns None to "
            "leave an error to the core's classification)"
        )
    plugin = _Hooks(unit)
    u: Any = unit

    def mine(channel: Channel | None) -> bool:
        return channel is not None and channel.messenger == name

    @hookimpl
    def extmsg_messenger_types() -> MessengerType:
        return unit.messenger_type()

    @hookimpl
    def extmsg_provider_fakes() -> Sequence[ProviderFake]:
        return unit.provider_fakes()

    @hookimpl
    async def extmsg_startup(app: web.Application, config: Config) -> None:
        await unit.startup(MessengerContext(app, config, name))

    @hookimpl
    async def extmsg_listening(app: web.Application, config: Config, urls: RouteUrls) -> None:
        ctx = MessengerContext(app, config, name)
        own = {ch.name for ch in ctx.channels}
        mine = RouteUrls(
            base=urls.base,
            channels={ch: routes for ch, routes in urls.channels.items() if ch in own},
            messengers={m: routes for m, routes in urls.messengers.items() if m == name},
        )
        await unit.listening(ctx, mine)

    @hookimpl
    async def extmsg_shutdown(app: web.Application, config: Config) -> None:
        await unit.shutdown(MessengerContext(app, config, name))

    impls: dict[str, Callable[..., Any]] = {"extmsg_messenger_types": extmsg_messenger_types}
    # The base class's lifecycle methods do nothing: only overridden ones become hooks, so
    # ``extmsg plugins`` lists what the unit really does.
    lifecycle: dict[str, Callable[..., Any]] = {
        "provider_fakes": extmsg_provider_fakes,
        "startup": extmsg_startup,
        "listening": extmsg_listening,
        "shutdown": extmsg_shutdown,
    }
    for method, impl in lifecycle.items():
        if getattr(cls, method) is not getattr(Messenger, method):
            impls[impl.__name__] = impl

    @hookimpl
    def extmsg_verify_inbound(messenger: str, request: InboundRequest, channels: Any) -> Any:
        return u.verify_inbound(request, channels) if messenger == name else None

    @hookimpl
    def extmsg_parse_inbound(messenger: str, request: InboundRequest, channels: Any) -> Any:
        return u.parse_inbound(request, channels) if messenger == name else None

    @hookimpl
    def extmsg_render_ack(messenger: str, request: InboundRequest, events: Any) -> Any:
        return u.render_ack(request, events) if messenger == name else None

    @hookimpl
    def extmsg_fetch_attachment(channel: Channel, attachment: Attachment) -> Any:
        wanted = mine(channel) and attachment.data is None and bool(attachment.url)
        return u.fetch_attachment(channel, attachment) if wanted else None

    @hookimpl
    def extmsg_validate_contact(channel: Channel, identifier: str) -> Any:
        return u.validate_contact(channel, identifier) if mine(channel) else None

    # Before the core's renderer and any all-channel renderer: the unit knows its limits.
    @hookimpl(tryfirst=True)
    def extmsg_render_outbound(channel: Channel, message: OutboundMessage) -> Any:
        return u.render_outbound(channel, message) if mine(channel) else None

    @hookimpl
    def extmsg_send(channel: Channel, message: OutboundMessage) -> Any:
        return u.send(channel, message) if mine(channel) else None

    @hookimpl
    def extmsg_find_sent(channel: Channel, message: OutboundMessage) -> Any:
        return u.find_sent(channel, message) if mine(channel) else None

    @hookimpl
    def extmsg_mark_read(channel: Channel, provider_message_id: str) -> Any:
        return u.mark_read(channel, provider_message_id) if mine(channel) else None

    @hookimpl
    def extmsg_classify_error(channel: Channel | None, error: BaseException) -> Any:
        return u.classify_error(channel, error) if mine(channel) else None

    local = locals()
    for method in HOOK_METHODS:
        if _has(unit, method):
            impls[f"extmsg_{method}"] = local[f"extmsg_{method}"]
    for hook, fn in impls.items():
        setattr(plugin, hook, fn)
    return plugin


def is_unit(obj: object) -> bool:
    """Whether ``obj`` is a messenger unit (class or instance) rather than a raw plugin."""
    if isinstance(obj, type):
        return issubclass(obj, Messenger) and obj is not Messenger and "name" in vars(obj)
    return isinstance(obj, Messenger)


def units_in_module(module: object) -> list[type[Messenger]]:
    """The unit classes a plugin module defines (not those it imports)."""
    modname = getattr(module, "__name__", None)
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type) and is_unit(value) and value.__module__ == modname
    ]
