"""What every ``extmsg`` command shares: ``-h`` and the ``-c/--config`` option."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = ["CONFIG_ENV", "CONTEXT_SETTINGS", "DEFAULT_CONFIG", "config_option"]

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
