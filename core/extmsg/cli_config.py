"""The ``-c/--config`` option of the commands that read the configuration."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = ["config_option"]


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``-c/--config``, defaulting to ``$EXTMSG_CONFIG`` or ``extmsg.toml``."""
    return click.option(
        "--config",
        "-c",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=lambda: os.environ.get("EXTMSG_CONFIG", "extmsg.toml"),
        show_default="extmsg.toml or $EXTMSG_CONFIG",
        help="The configuration file.",
    )(fn)
