"""extmsg: connect text messengers to Unblu as custom external messenger channels.

Plugin authors need :data:`hookimpl` and the models in :mod:`extmsg.models`.
"""

from __future__ import annotations

from .hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]

__version__ = "0.1.0"
