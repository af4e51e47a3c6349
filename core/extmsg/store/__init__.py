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

        if not config.store.dsn:
            raise ConfigError(['store.dsn: required when store.backend is "postgres"'])
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise ConfigError(
                [
                    f"store.backend: 'postgres' needs asyncpg ({exc});"
                    " install it with: pip install 'extmsg[postgres]'"
                ]
            ) from None
        return PostgresStore(config.store.dsn)
    from .sqlite import SqliteStore

    return SqliteStore(config.store_path(), synchronous=config.store.synchronous.upper())
