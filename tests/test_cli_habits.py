"""Habits every ``extmsg`` command shares: ``-h``, ``-c/--config`` and ``EXTMSG_CONFIG``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from extmsg.cli import main

# Commands that read no configuration: the plugins come from the installed distributions and
# EXTMSG_PLUGINS, the standalone sandbox is configured by its own options, new-plugin writes a
# distribution.
NO_CONFIG = {"plugins", "sandbox", "new-plugin"}


def walk(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from walk(command, (*prefix, name))


def command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        found = command.get_command(click.Context(command), name)
        assert found is not None
        command = found
    return command


COMMANDS = list(walk(main))
LEAVES = [path for path in COMMANDS if not isinstance(command_at(path), click.Group)]


def test_the_walk_finds_the_commands() -> None:
    assert {("check",), ("serve",), ("channels", "list"), ("outbox", "list")} <= set(LEAVES)


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "extmsg")
def test_dash_h_prints_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "-h"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: "), result.output
    assert " ".join(path) in result.output.splitlines()[0]


def _arguments(command: click.Command) -> list[str]:
    """Placeholder values for the command's required arguments (one for a list of them)."""
    values: list[str] = []
    for param in command.params:
        if isinstance(param, click.Argument) and (param.required or param.nargs == -1):
            count = max(param.nargs, 1)
            value = "1" if isinstance(param.type, click.types.IntParamType) else "x"
            values += [value] * count
    return values


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_dash_c_and_extmsg_config_name_the_file(
    path: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a command that ignored both would use ./extmsg.toml here
    command = command_at(path)
    names = {p.name for p in command.params}
    if path[-1] in NO_CONFIG:
        assert "config_path" not in names
        return
    assert "config_path" in names, f"extmsg {' '.join(path)} takes no -c/--config"
    args = _arguments(command)
    runner = CliRunner()
    for how, target in (("-c", tmp_path / "by-option.toml"), ("env", tmp_path / "by-env.toml")):
        if how == "-c":
            argv = [*path, "-c", str(target), *args]
            result = runner.invoke(main, argv, env={"EXTMSG_CONFIG": None})
        else:
            result = runner.invoke(main, [*path, *args], env={"EXTMSG_CONFIG": str(target)})
        # Either the command complains about that very file, or (init) it wrote it.
        assert str(target) in result.output or target.exists(), (how, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output


def test_option_wins_over_the_environment(tmp_path: Path) -> None:
    chosen, ignored = tmp_path / "chosen.toml", tmp_path / "ignored.toml"
    result = CliRunner().invoke(
        main, ["check", "-c", str(chosen)], env={"EXTMSG_CONFIG": str(ignored)}
    )
    assert result.exit_code == 2
    assert str(chosen) in result.output
    assert str(ignored) not in result.output
