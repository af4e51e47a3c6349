"""``dev.py``: the developer's entry point picks up plugin directories named in
EXTMSG_DEV_PLUGINS, and refuses one that is not a plugin distribution."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _dev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev_script", ROOT / "dev.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extra_plugin_directories_are_installed_and_fingerprinted(tmp_path: Path) -> None:
    dev = _dev()
    one, two = tmp_path / "one", tmp_path / "two"
    for where in (one, two):
        where.mkdir()
        (where / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert dev.extra_plugins(f"{one}{os.pathsep}{two}{os.pathsep}") == [one, two]
    assert dev.extra_plugins("") == []
    before = dev._fingerprint([one])
    (one / "pyproject.toml").write_text('[project]\nname = "y"\n')
    assert dev._fingerprint([one]) != before, "a changed plugin is installed again"
    assert dev._fingerprint([one, two]) != dev._fingerprint([one])


def test_a_directory_without_pyproject_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no pyproject\.toml"):
        _dev().extra_plugins(str(tmp_path))


def test_the_help_names_the_setting() -> None:
    assert "EXTMSG_DEV_PLUGINS" in (_dev().__doc__ or "")
