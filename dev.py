#!/usr/bin/env python3
"""Set up a development environment and run extmsg from a fresh clone.

    python3 dev.py sandbox   # venv + install, then `extmsg serve --sandbox`
    python3 dev.py test      # venv + install, then the whole test suite
    python3 dev.py lint      # venv + install, then ruff (lint and format) and mypy
    python3 dev.py bench     # venv + install, then the benchmarks (--quick: under a minute)

Needs only Python 3.11+ with pip and venv. The virtual environment lives in ``.venv``; it is
(re)installed when a pyproject.toml changed since the last install.

Plugins of your own: EXTMSG_DEV_PLUGINS lists their distribution directories (each with a
pyproject.toml), separated by ``{sep}``; they are installed in ``.venv`` too (editable, with
their test extra), so the sandbox runs them and their fakes beside the bundled ones:

    EXTMSG_DEV_PLUGINS=../extmsg-telegram python3 dev.py sandbox
    EXTMSG_DEV_PLUGINS=../extmsg-telegram python3 dev.py test ../extmsg-telegram/tests
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".extmsg-installed"
PLUGINS = sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))


def extra_plugins(value: str | None = None) -> list[Path]:
    """The plugin distributions EXTMSG_DEV_PLUGINS names; exits naming one that is not one."""
    value = os.environ.get("EXTMSG_DEV_PLUGINS", "") if value is None else value
    found: list[Path] = []
    for entry in filter(None, (e.strip() for e in value.split(os.pathsep))):
        path = Path(entry).expanduser().resolve()
        if not (path / "pyproject.toml").is_file():
            sys.exit(
                f"EXTMSG_DEV_PLUGINS: {entry} is not a plugin distribution (no pyproject.toml)"
            )
        found.append(path)
    return found


def _fingerprint(extra: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in [ROOT / "pyproject.toml", *(p / "pyproject.toml" for p in [*PLUGINS, *extra])]:
        digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def setup() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may run under any python3
        sys.exit(f"extmsg needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating {VENV.relative_to(ROOT)}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    extra = extra_plugins()
    fingerprint = _fingerprint(extra)
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    print("installing extmsg and its plugins (editable, with test extras)", flush=True)
    for plugin in extra:
        print(f"  and {plugin} (EXTMSG_DEV_PLUGINS)", flush=True)
    editable = ["-e", f"{ROOT}[test]"]
    for plugin in [*PLUGINS, *extra]:
        editable += ["-e", f"{plugin}[test]"]
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *editable], check=True)
    STAMP.write_text(fingerprint)


def run(*args: str) -> int:
    return subprocess.call([str(PY), "-m", *args], cwd=ROOT)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "help"
    rest = argv[1:]
    if command not in ("sandbox", "test", "lint", "bench", "setup"):
        print((__doc__ or "").replace("{sep}", os.pathsep))
        return 0 if command in ("help", "-h", "--help") else 2
    setup()
    if command == "sandbox":
        return run("extmsg", "serve", "--sandbox", *rest)
    if command == "test":
        # pytest exits 5 when it collected nothing: that is a failure here too.
        return run("pytest", *rest)
    if command == "lint":
        return run("ruff", "check", ".") or run("ruff", "format", "--check", ".") or run("mypy")
    if command == "bench":
        return subprocess.call([str(PY), str(ROOT / "benchmarks" / "run.py"), *rest], cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
