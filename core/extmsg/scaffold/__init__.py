"""``extmsg new-plugin``: write a messenger plugin's distribution from the template beside this
module — the messenger unit, its settings, a fake on :mod:`extmsg.testing.fakes`, tests (the
contract suite, recorded payloads, one end-to-end run), packaging, README and licence — that
installs, passes ruff, ``mypy --strict`` and its own tests as written."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from ..errors import HandledError

__all__ = ["NAME_PATTERN", "write_plugin"]

TEMPLATE = Path(__file__).parent / "template"
#: A messenger name: what channels say as ``messenger``, and a Python identifier.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,19}$")


def _words(name: str) -> dict[str, str]:
    parts = [p for p in name.split("_") if p]
    camel = "".join(p[:1].upper() + p[1:] for p in parts)
    try:
        version = metadata.version("extmsg")
    except metadata.PackageNotFoundError:
        version = "0.1.0"
    return {
        "name": name,
        "Name": camel,
        "NAME": name.upper(),
        "pkg": f"extmsg_{name}",
        "dist": f"extmsg-{name.replace('_', '-')}",
        "dashed": name.replace("_", "-"),
        "title": " ".join(p[:1].upper() + p[1:] for p in parts),
        "header": f"X-{camel}-Signature",
        "extmsg_version": version,
    }


def write_plugin(name: str, target: Path) -> list[Path]:
    """Write the distribution of messenger ``name`` into ``target`` (new or empty); the files
    written, in order."""
    if not NAME_PATTERN.match(name) or name.endswith("_") or "__" in name:
        raise HandledError(
            f"new-plugin: {name!r} is not a messenger name: lower-case letters, digits and "
            "single underscores, starting with a letter, at most 20 (e.g. telegram, acme_chat)"
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise HandledError(f"new-plugin: {target} already exists and is not an empty directory")
    words = _words(name)
    written: list[Path] = []
    for source in sorted(TEMPLATE.rglob("*.tmpl")):
        relative = source.relative_to(TEMPLATE).as_posix().removesuffix(".tmpl")
        relative = relative.replace("PKG/", f"{words['pkg']}/")
        text = source.read_text(encoding="utf-8")
        for key, value in words.items():
            text = text.replace("{{" + key + "}}", value)
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
