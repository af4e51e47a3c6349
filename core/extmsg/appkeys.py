"""The keys under which the running server keeps its parts in the aiohttp application.

A module of its own, importing nothing of extmsg at run time, so that every layer (flows,
media, the Unblu endpoint, messenger units) can reach the runtime without importing the module
that builds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["RUNTIME"]

#: The :class:`~extmsg.runtime.Runtime` of a running ``extmsg serve``.
RUNTIME: web.AppKey[Runtime] = web.AppKey("extmsg.runtime")
