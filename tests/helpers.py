"""Running the real ``extmsg serve`` as a subprocess, for end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from extmsg.testing.helpers import free_port

__all__ = ["ROOT", "ServeProcess", "free_port"]

ROOT = Path(__file__).resolve().parent.parent


class ServeProcess:
    """``python -m extmsg serve`` in its own process, with its output kept in a file."""

    def __init__(
        self, config: Path, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.config = config
        self.log_path = config.with_suffix(".log")
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        self.started_at = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "extmsg", "serve", "--config", str(self.config), *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, base_url: str, limit: float = 15.0) -> float:
        """Poll /readyz; return seconds from start to ready."""
        deadline = time.monotonic() + limit
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.log()}")
                try:
                    async with session.get(f"{base_url}/readyz") as resp:
                        if resp.status == 200:
                            return time.monotonic() - self.started_at
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.02)
        raise AssertionError(f"serve not ready after {limit}s:\n{self.log()}")

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
