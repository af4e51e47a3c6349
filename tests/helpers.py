"""Running the real ``extmsg serve`` as a subprocess, for end-to-end tests."""

from __future__ import annotations

from pathlib import Path

from extmsg.testing.helpers import ServeProcess as _ServeProcess
from extmsg.testing.helpers import free_port

__all__ = ["ROOT", "ServeProcess", "free_port"]

ROOT = Path(__file__).resolve().parent.parent


class ServeProcess(_ServeProcess):
    """``extmsg serve`` run from the repository, so ``EXTMSG_PLUGINS`` finds the test plugins."""

    def __init__(
        self, config: Path, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        super().__init__(config, env={"PYTHONPATH": str(ROOT), **(env or {})}, args=args, cwd=ROOT)
