"""The README's install line from a clone names real distributions, core first."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _install_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Install for real", 1)[1].split("\n## ", 1)[0]
    commands = []
    for line in section.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("pip install "):
            commands.append(shlex.split(line)[2:])
    return commands


def _project(target: str) -> dict[str, Any]:
    folder = ROOT / re.sub(r"\[.*\]$", "", target)
    data = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))
    project: dict[str, Any] = data["project"]
    return project


def test_the_install_line_installs_the_core_and_a_plugin_from_this_clone() -> None:
    [targets] = _install_commands()
    projects = [_project(t) for t in targets]
    names = [p["name"] for p in projects]
    assert names[0] == "extmsg"
    for project in projects[1:]:
        # The plugin needs the core: installed from the same command, not the package index.
        assert any(str(d).startswith("extmsg>=") for d in project["dependencies"])
        assert project["entry-points"]["extmsg.plugins"]


def test_every_plugin_the_readme_offers_is_a_folder_here() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    offered = set(re.findall(r"\./plugins/(\w+)", text))
    assert offered == {p.parent.name for p in ROOT.glob("plugins/*/pyproject.toml")}
