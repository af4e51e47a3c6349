"""Persistence: the :class:`Store` interface and its implementations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Store

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Store", "open_store"]


def open_store(config: Config) -> Store:
    """The store the config names (not yet opened)."""
    if config.store.backend == "postgres":
        from ..errors import ConfigError

        raise ConfigError(["store.backend: 'postgres' is not available in this version yet"])
    from .sqlite import SqliteStore

    return SqliteStore(config.store_path())
