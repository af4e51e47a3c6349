"""Plugin loading and the typed facade core code calls hooks through.

Plugins come from three places, in this order: the core's defaults (:data:`DEFAULT_PLUGINS`),
the entry-point group ``extmsg.plugins``, and objects passed in by the caller (tests, embedding
applications). ``EXTMSG_PLUGINS=module,…`` loads plugin modules by import path, for a plugin
that is not packaged. ``EXTMSG_DISABLE_PLUGINS=name,…`` blocks plugins by name; the defaults can
be blocked the same way (``extmsg.defaults.routing``) when a plugin replaces them wholesale.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

import msgspec
import pluggy

from . import hookspecs
from .asyncutil import await_me_maybe
from .errors import PluginError
from .messenger import hookimpls_for, is_unit, units_in_module
from .models import (
    Attachment,
    Channel,
    Contact,
    ContactCheck,
    ErrorVerdict,
    HttpReply,
    InboundEvent,
    InboundMessage,
    InboundRequest,
    MessengerType,
    OutboundMessage,
    ProviderFake,
    Route,
    RouteUrls,
    Routing,
    SendResult,
)

if TYPE_CHECKING:
    from aiohttp import web

    from .config import Config

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "Hooks",
    "PluginInfo",
    "build_hooks",
]

log = logging.getLogger("extmsg.plugins")

ENTRY_POINT_GROUP = "extmsg.plugins"
DISABLE_ENV = "EXTMSG_DISABLE_PLUGINS"
MODULES_ENV = "EXTMSG_PLUGINS"
TRACE_ENV = "EXTMSG_TRACE_HOOKS"

#: The core's own behaviour, registered exactly like third-party plugins.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "extmsg.defaults.contacts",
    "extmsg.defaults.routing",
    "extmsg.defaults.rendering",
    "extmsg.defaults.errors",
)


class PluginInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One loaded plugin as ``extmsg plugins`` and ``/-/plugins`` show it."""

    name: str
    distribution: str | None
    version: str | None
    hooks: list[str]
    builtin: bool


def _split_env(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def build_hooks(
    *,
    entry_points: bool = True,
    extra: Iterable[object] = (),
    disabled: Iterable[str] | None = None,
) -> Hooks:
    """Load the plugins and return the typed facade over them.

    :param entry_points: load the ``extmsg.plugins`` entry points (off in isolated tests).
    :param extra: further plugin objects (modules, instances) to register.
    :param disabled: plugin names to block; defaults to ``EXTMSG_DISABLE_PLUGINS``.
    :raises PluginError: a plugin failed to import or does not fit the hook contract.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = set(_split_env(DISABLE_ENV) if disabled is None else disabled)
    for name in blocked:
        pm.set_blocked(name)
    dists: dict[str, tuple[str | None, str | None]] = {}

    for modname in DEFAULT_PLUGINS:
        if modname not in blocked:
            _register(pm, importlib.import_module(modname), modname)
            dists[modname] = ("extmsg", _version("extmsg"))

    if entry_points:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked or pm.get_plugin(ep.name) is not None:
                continue
            dist = getattr(ep, "dist", None)
            where = f"{ep.name!r} ({dist.name if dist else ep.value})"
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {where} failed to import: {type(exc).__name__}: {exc}"
                ) from exc
            _register(pm, plugin, ep.name)
            dists[ep.name] = (dist.name, dist.version) if dist else (None, None)

    for modname in _split_env(MODULES_ENV):
        if modname in blocked or pm.get_plugin(modname) is not None:
            continue
        try:
            module = importlib.import_module(modname)
        except Exception as exc:
            raise PluginError(
                f"plugin {modname!r} (from {MODULES_ENV}) failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        _register(pm, module, modname)

    for plugin in extra:
        for registered in _register(pm, plugin, None):
            name = pm.get_name(registered) or type(registered).__name__
            dists.setdefault(name, (None, None))

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        culprit = pm.get_name(exc.plugin) or exc.plugin
        raise PluginError(f"plugin {culprit!r}: {_one_line(exc)}") from exc
    _check_async_firstresult(pm)
    if os.environ.get(TRACE_ENV):
        from .hooktrace import enable_hook_tracing

        enable_hook_tracing(pm)
    return Hooks(pm, dists)


def _register(pm: pluggy.PluginManager, plugin: object, name: str | None) -> list[object]:
    """Register ``plugin``: a module or object with raw hooks, a :class:`~extmsg.messenger.
    Messenger` unit (class or instance), or a module defining unit classes. Returns what was
    registered with pluggy (a unit becomes an adapter object)."""
    if is_unit(plugin):
        unit_name = name or _qualname(plugin)
        return [_register_one(pm, _adapt(plugin, unit_name), unit_name)]
    units = units_in_module(plugin) if inspect.ismodule(plugin) else []
    if not units:
        return [_register_one(pm, plugin, name)]
    base = name or getattr(plugin, "__name__", None) or repr(plugin)
    registered: list[object] = []
    if _has_raw_hooks(plugin):
        registered.append(_register_one(pm, plugin, f"{base}:hooks"))
    for i, cls in enumerate(units):
        unit_name = base if i == 0 else f"{base}:{cls.__name__}"
        registered.append(_register_one(pm, _adapt(cls, unit_name), unit_name))
    return registered


def _adapt(unit: Any, name: str) -> object:
    try:
        return hookimpls_for(unit)
    except PluginError as exc:
        raise PluginError(f"plugin {name!r}: {exc}") from exc


def _qualname(obj: object) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _has_raw_hooks(module: object) -> bool:
    return any(
        callable(value) and hasattr(value, f"{hookspecs.PROJECT}_impl")
        for value in vars(module).values()
    )


def _register_one(pm: pluggy.PluginManager, plugin: object, name: str | None) -> object:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name or exc.plugin!r}: {_one_line(exc)}") from exc
    except ValueError as exc:
        raise PluginError(f"plugin {name or plugin!r}: {_one_line(exc)}") from exc
    return plugin


def _one_line(exc: Exception) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _check_async_firstresult(pm: pluggy.PluginManager) -> None:
    for hook_name in dir(pm.hook):
        if not hook_name.startswith("extmsg_"):
            continue
        caller = getattr(pm.hook, hook_name)
        if not (caller.spec and caller.spec.opts.get("firstresult")):
            continue
        for impl in caller.get_hookimpls():
            if inspect.iscoroutinefunction(impl.function):
                raise PluginError(
                    f"plugin {impl.plugin_name!r}: {hook_name} is a first-result hook; an "
                    "'async def' implementation always answers. Use a plain 'def' that returns "
                    "None for other messengers and a coroutine for its own."
                )


def _check_routes(mtype: MessengerType, plugin: str) -> None:
    """A messenger's routes must each take requests of their own.

    Channel routes of different messengers never collide (a request is dispatched by its
    channel's messenger), so only one messenger's own routes can clash with each other.
    """
    seen: dict[tuple[str, str, str], Route] = {}
    for route in mtype.routes:
        path = route.path.strip("/")
        if not path or any(c in path for c in "{}"):
            raise PluginError(
                f"plugin {plugin!r}: messenger {mtype.name!r} route {route.name!r} has the "
                f"path {route.path!r}; use a non-empty path without '{{' or '}}'"
            )
        if route.kind == "handler" and route.handler is None:
            raise PluginError(
                f"plugin {plugin!r}: messenger {mtype.name!r} route {route.name!r} is a "
                "handler route without a handler"
            )
        key = (route.method.upper(), route.scope, path)
        if key in seen:
            raise PluginError(
                f"plugin {plugin!r}: messenger {mtype.name!r} routes {seen[key].name!r} and "
                f"{route.name!r} both take {key[0]} {route_path(mtype.name, route)}"
            )
        seen[key] = route


def route_path(messenger: str, route: Route) -> str:
    """Where ``route`` of ``messenger`` is served (the pattern aiohttp matches)."""
    path = route.path.strip("/")
    if route.scope == "channel":
        return f"/channels/{{channel}}/{path}"
    return f"/messengers/{messenger}/{path}"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


class Hooks:
    """One typed method per hook; the only way core code calls plugins."""

    def __init__(
        self, pm: pluggy.PluginManager, dists: dict[str, tuple[str | None, str | None]]
    ) -> None:
        self.pm = pm
        self._dists = dists
        self._h: Any = pm.hook
        self._messengers: dict[str, MessengerType] | None = None
        self._owners: dict[str, str] = {}

    # -- introspection -----------------------------------------------------------------------
    def plugins(self) -> list[PluginInfo]:
        out = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda p: p[0]):
            if plugin is None:
                continue
            dist, version = self._dists.get(name, (None, None))
            hooks = sorted(impl.name for impl in self.pm.get_hookcallers(plugin) or ())
            out.append(
                PluginInfo(
                    name=name,
                    distribution=dist,
                    version=version,
                    hooks=hooks,
                    builtin=name in DEFAULT_PLUGINS,
                )
            )
        return out

    # -- registration --------------------------------------------------------------------------
    def messenger_types(self) -> dict[str, MessengerType]:
        """Every declared messenger type by name (computed once).

        :raises PluginError: two plugins declare one messenger name, or two routes of a
            messenger would take the same requests (one line naming the plugins).
        """
        if self._messengers is None:
            found: dict[str, MessengerType] = {}
            owners: dict[str, str] = {}
            for impl in self._h.extmsg_messenger_types.get_hookimpls():
                result = impl.function()
                items = [result] if isinstance(result, MessengerType) else list(result or ())
                for item in items:
                    if not isinstance(item, MessengerType):
                        raise PluginError(
                            f"plugin {impl.plugin_name!r}: extmsg_messenger_types returned "
                            f"{type(item).__name__}, expected MessengerType"
                        )
                    if item.name in found:
                        raise PluginError(
                            f"messenger type {item.name!r} is declared by both plugin "
                            f"{owners[item.name]!r} and plugin {impl.plugin_name!r}"
                        )
                    _check_routes(item, impl.plugin_name)
                    found[item.name] = item
                    owners[item.name] = impl.plugin_name
            self._messengers = found
            self._owners = owners
        return self._messengers

    def messenger_plugin(self, messenger: str) -> str | None:
        """The name of the plugin that declares ``messenger``."""
        self.messenger_types()
        return self._owners.get(messenger)

    def provider_fakes(self) -> list[ProviderFake]:
        return [fake for result in self._h.extmsg_provider_fakes() for fake in result or ()]

    # -- lifecycle ---------------------------------------------------------------------------
    async def startup(self, app: web.Application, config: Config) -> None:
        for result in self._h.extmsg_startup(app=app, config=config):
            await await_me_maybe(result)

    async def listening(self, app: web.Application, config: Config, urls: RouteUrls) -> None:
        # A plugin that cannot register its webhook does not take the others down with it.
        for impl in reversed(self._h.extmsg_listening.get_hookimpls()):
            kwargs = {"app": app, "config": config, "urls": urls}
            try:
                await await_me_maybe(impl.function(*(kwargs[a] for a in impl.argnames)))
            except Exception:
                log.exception("plugin %s failed in extmsg_listening", impl.plugin_name)

    async def shutdown(self, app: web.Application, config: Config) -> None:
        # Every implementation gets its turn even when an earlier one fails.
        for impl in reversed(self._h.extmsg_shutdown.get_hookimpls()):
            kwargs = {"app": app, "config": config}
            try:
                await await_me_maybe(impl.function(*(kwargs[a] for a in impl.argnames)))
            except Exception:
                log.exception("plugin %s failed in extmsg_shutdown", impl.plugin_name)

    # -- inbound -------------------------------------------------------------------------------
    async def verify_inbound(
        self, messenger: str, request: InboundRequest, channels: Sequence[Channel]
    ) -> bool | None:
        result: bool | None = await await_me_maybe(
            self._h.extmsg_verify_inbound(messenger=messenger, request=request, channels=channels)
        )
        return result

    async def parse_inbound(
        self, messenger: str, request: InboundRequest, channels: Sequence[Channel]
    ) -> list[InboundEvent] | None:
        result = await await_me_maybe(
            self._h.extmsg_parse_inbound(messenger=messenger, request=request, channels=channels)
        )
        return None if result is None else list(result)

    async def render_ack(
        self, messenger: str, request: InboundRequest, events: Sequence[InboundEvent]
    ) -> HttpReply:
        reply = await await_me_maybe(
            self._h.extmsg_render_ack(messenger=messenger, request=request, events=events)
        )
        return reply if reply is not None else HttpReply()

    async def map_contact(self, channel: Channel, contact: Contact) -> Contact:
        result = await await_me_maybe(self._h.extmsg_map_contact(channel=channel, contact=contact))
        return contact if result is None else result

    async def route_conversation(
        self, channel: Channel, contact: Contact, message: InboundMessage
    ) -> Routing:
        result = await await_me_maybe(
            self._h.extmsg_route_conversation(channel=channel, contact=contact, message=message)
        )
        return result if result is not None else Routing()

    async def fetch_attachment(self, channel: Channel, attachment: Attachment) -> Attachment:
        result = await await_me_maybe(
            self._h.extmsg_fetch_attachment(channel=channel, attachment=attachment)
        )
        return attachment if result is None else result

    async def validate_contact(self, channel: Channel, identifier: str) -> ContactCheck:
        result: ContactCheck | None = await await_me_maybe(
            self._h.extmsg_validate_contact(channel=channel, identifier=identifier)
        )
        if result is None:
            return ContactCheck(valid=False, error="no plugin validates contacts")
        return result

    # -- outbound ------------------------------------------------------------------------------
    async def render_outbound(
        self, channel: Channel, message: OutboundMessage
    ) -> list[OutboundMessage]:
        result = await await_me_maybe(
            self._h.extmsg_render_outbound(channel=channel, message=message)
        )
        return [message] if result is None else list(result)

    async def send(self, channel: Channel, message: OutboundMessage) -> SendResult:
        result: SendResult | None = await await_me_maybe(
            self._h.extmsg_send(channel=channel, message=message)
        )
        if result is None:
            raise PluginError(f"no plugin sends messages for messenger {channel.messenger!r}")
        return result

    async def find_sent(
        self, channel: Channel, message: OutboundMessage
    ) -> SendResult | bool | None:
        """The provider's record of ``message``: a SendResult (it has it), False (it has not),
        None (nobody can tell)."""
        result = await await_me_maybe(self._h.extmsg_find_sent(channel=channel, message=message))
        if result is None or isinstance(result, SendResult | bool):
            return result
        raise PluginError(
            f"extmsg_find_sent returned {type(result).__name__}, expected SendResult, bool or None"
        )

    async def mark_read(self, channel: Channel, provider_message_id: str) -> bool:
        result = await await_me_maybe(
            self._h.extmsg_mark_read(channel=channel, provider_message_id=provider_message_id)
        )
        return bool(result)

    async def classify_error(self, channel: Channel | None, error: BaseException) -> ErrorVerdict:
        result: ErrorVerdict | None = await await_me_maybe(
            self._h.extmsg_classify_error(channel=channel, error=error)
        )
        if result is None:
            return ErrorVerdict(retryable=True, reason=f"{type(error).__name__}: {error}")
        return result
