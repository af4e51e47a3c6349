"""Hook tracing (``EXTMSG_TRACE_HOOKS=1``): one DEBUG line per hook call and per outcome.

A hook's arguments carry channels (with their settings and secrets), raw provider requests and
what contacts and agents write, so a call is described, not printed: each value shows its type
and only the fields that identify it (ids, names of channels and routes, states). Addresses are
masked (:func:`~extmsg.logsafe.mask_address`), texts appear as their length unless
``[server] log_message_text`` is on (:func:`~extmsg.logsafe.message_text`), and request
bodies, headers, queries, URLs, settings and secrets never appear.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import pluggy

from .logsafe import mask, mask_address, message_text

__all__ = ["describe", "enable_hook_tracing"]

log = logging.getLogger("extmsg.plugins")

#: Fields shown as they are: ids, names, states.
_SHOWN = frozenset(
    {
        "id",
        "kind",
        "messenger",
        "channel",
        "route",
        "method",
        "path",
        "provider_message_id",
        "unblu_message_id",
        "conversation_id",
        "message_ref",
        "state",
        "part",
        "status",
        "retryable",
        "code",
        "error_code",
        "engagement_type",
        "mime_type",
        "valid",
        "opted_out",
        "type",
    }
)
#: Fields that hold a contact identifier: masked.
_ADDRESSES = frozenset({"address", "phone", "email"})
#: Fields that hold what people write (or a provider's text about it): length only.
_TEXTS = frozenset(
    {"text", "caption", "error_text", "reason", "error", "sender_name", "topic", "template"}
)
#: Types whose ``name`` names configuration, not a person.
_NAMED = frozenset({"Channel", "Route", "MessengerType", "PluginInfo"})
_MAX_ITEMS = 3
_MAX_DEPTH = 3


def describe(value: Any, depth: int = 0) -> str:
    """A short, log-safe description of one hook argument or result."""
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(mask(value[:80]) + ("…" if len(value) > 80 else ""))
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, BaseException):
        return type(value).__name__
    name = type(value).__name__
    if depth >= _MAX_DEPTH:
        return name
    if isinstance(value, msgspec.Struct):
        parts = []
        for field in value.__struct_fields__:
            item = getattr(value, field, None)
            if item is None or item == () or item == "":
                continue
            if field in _SHOWN or (field == "name" and name in _NAMED):
                parts.append(f"{field}={describe(item, depth + 1)}")
            elif field in _ADDRESSES and isinstance(item, str):
                parts.append(f"{field}={mask_address(item)}")
            elif field in _TEXTS and isinstance(item, str):
                parts.append(f"{field}={message_text(item)}")
            elif isinstance(item, msgspec.Struct) or (
                isinstance(item, Sequence)
                and not isinstance(item, str | bytes)
                and any(isinstance(i, msgspec.Struct) for i in item)
            ):
                parts.append(f"{field}={describe(item, depth + 1)}")
        return f"{name}({', '.join(parts)})"
    if isinstance(value, Mapping):
        return f"{{{len(value)} keys}}"
    if isinstance(value, Sequence):
        items = [describe(item, depth + 1) for item in list(value)[:_MAX_ITEMS]]
        more = f", +{len(value) - _MAX_ITEMS}" if len(value) > _MAX_ITEMS else ""
        return f"[{', '.join(items)}{more}]"
    return f"<{name}>"


def _before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
    args = ", ".join(f"{k}={describe(v)}" for k, v in kwargs.items())
    plugins = ", ".join(impl.plugin_name for impl in impls) or "none"
    log.debug("hook %s(%s) -> %s", hook_name, args, plugins)


def _after(
    outcome: pluggy.Result[Any],
    hook_name: str,
    impls: Sequence[pluggy.HookImpl],
    kwargs: Mapping[str, Any],
) -> None:
    if outcome.exception is not None:
        log.debug("hook %s raised %s", hook_name, type(outcome.exception).__name__)
        return
    result = outcome.get_result()
    if hasattr(result, "__await__"):
        return  # an async implementation: its outcome comes when the caller awaits it
    log.debug("hook %s returned %s", hook_name, describe(result))


def enable_hook_tracing(pm: pluggy.PluginManager) -> None:
    """Log every hook call of ``pm`` at DEBUG on ``extmsg.plugins``, described safely."""
    pm.add_hookcall_monitoring(_before, _after)
