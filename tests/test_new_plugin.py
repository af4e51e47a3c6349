"""``extmsg new-plugin``: the distribution it writes installs and passes ruff, ``mypy --strict``
and its own tests (the contract suite, recorded payloads, one end-to-end run) as written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner

from extmsg.cli import main


def _run(args: list[str], cwd: Path, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "EXTMSG_"))}
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _child_venv(where: Path) -> Path:
    """A venv that sees everything installed here (extmsg and the test tools) but installs
    into itself, so the generated plugin is not installed beside the bundled ones."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / ("Scripts" if os.name == "nt" else "bin") / "python"
    child_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    ours = sysconfig.get_paths()["purelib"]
    (Path(child_site) / "_extmsg_parent.pth").write_text(
        f"import site; site.addsitedir({ours!r})\n"
    )
    return python


def test_generated_plugin_installs_and_passes_its_checks(tmp_path: Path) -> None:
    target = tmp_path / "extmsg-demo"
    result = CliRunner().invoke(main, ["new-plugin", "demo", "--dir", str(target)])
    assert result.exit_code == 0, result.output
    for part in (
        "pyproject.toml", "README.md", "LICENSE", "extmsg_demo/plugin.py",
        "extmsg_demo/settings.py", "extmsg_demo/fake.py", "tests/test_contract.py",
        "tests/test_e2e.py", "tests/testdata/inbound.json",
    ):  # fmt: skip
        assert (target / part).is_file(), part
    pyproject = (target / "pyproject.toml").read_text()
    assert 'demo = "extmsg_demo.plugin"' in pyproject
    assert 'asyncio_mode = "auto"' in pyproject

    python = _child_venv(tmp_path / "venv")
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*pip, "--no-deps", "-e", str(target)], cwd=tmp_path, timeout=300)
    assert "demo" in _run([str(python), "-m", "extmsg", "plugins"], cwd=target)
    _run([str(python), "-m", "extmsg", "init", str(tmp_path / "extmsg.toml")], cwd=target)
    assert '# messenger = "demo"' in (tmp_path / "extmsg.toml").read_text()
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"
    _run([ruff, "check", "."], cwd=target)
    _run([ruff, "format", "--check", "."], cwd=target)
    _run([str(python), "-m", "mypy"], cwd=target)  # strict, as its pyproject says
    out = _run([str(python), "-m", "pytest", "-q"], cwd=target)
    assert " passed" in out
    assert "failed" not in out
    assert "skipped" not in out


@pytest.mark.parametrize("name", ["Demo", "9lives", "demo-chat", "a__b", "demo_", "x" * 21])
def test_a_bad_name_is_refused_in_one_line(tmp_path: Path, name: str) -> None:
    result = CliRunner().invoke(main, ["new-plugin", name, "--dir", str(tmp_path / "p")])
    assert result.exit_code != 0
    assert "is not a messenger name" in result.output
    assert not (tmp_path / "p").exists()


def test_an_existing_directory_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["new-plugin", "demo", "--dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "already exists" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
