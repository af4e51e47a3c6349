"""What every ``extmsg`` command shares: ``-h``, the ``-c/--config`` option and loading it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .config import Config
    from .plugins import Hooks

__all__ = ["CONFIG_ENV", "CONTEXT_SETTINGS", "DEFAULT_CONFIG", "config_option", "load_for_command"]

DEFAULT_CONFIG = "extmsg.toml"
CONFIG_ENV = "EXTMSG_CONFIG"
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


def config_option(help: str = "The configuration file.") -> Callable[[Any], Any]:
    """``-c/--config PATH``, else ``$EXTMSG_CONFIG``, else ``extmsg.toml``."""
    return click.option(
        "--config",
        "-c",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar=CONFIG_ENV,
        show_envvar=True,
        default=DEFAULT_CONFIG,
        show_default=True,
        help=help,
    )


def load_for_command(config_path: Path) -> tuple[Config, Hooks]:
    """The plugins and the validated configuration a command runs with.

    Every secret of the configuration (and of each channel's settings) is registered for
    redaction before the command can log anything.
    """
    from .config import load_config, register_config_secrets
    from .plugins import build_hooks

    hooks = build_hooks()
    config = load_config(config_path, hooks.messenger_types())
    register_config_secrets(config, hooks.messenger_types())
    return config, hooks
