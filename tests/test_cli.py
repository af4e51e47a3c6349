"""The command line: init, check, plugins — clean errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from extmsg.cli import main

from .helpers import ROOT


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extmsg", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_init_writes_a_config_that_check_accepts(tmp_path: Path) -> None:
    path = tmp_path / "extmsg.toml"
    runner = CliRunner()
    result = runner.invoke(main, ["init", str(path)])
    assert result.exit_code == 0, result.output
    assert "# How Unblu and the providers reach this server" in path.read_text()
    assert runner.invoke(main, ["init", str(path)]).exit_code == 2
    env = {
        "UNBLU_USERNAME": "u",
        "UNBLU_PASSWORD": "p",
        "SMS_WEBHOOK_SECRET": "s",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": "t",
    }
    checked = run("check", "--config", str(path), env=env)
    assert checked.returncode == 0, checked.stderr
    assert "1 channel(s): sms (sms_twilio)" in checked.stdout
    # The example's addresses are still in it: check says so, without failing.
    assert checked.stderr.splitlines() == [
        "warning: server.public_url: connector.example.com is an example domain (as 'extmsg"
        " init' wrote it); set the real address",
        "warning: unblu.base_url: unblu.example.com is an example domain (as 'extmsg init'"
        " wrote it); set the real address",
    ]


def test_init_writes_where_extmsg_config_points(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "extmsg.toml"
    target.parent.mkdir()
    result = CliRunner().invoke(main, ["init"], env={"EXTMSG_CONFIG": str(target)})
    assert result.exit_code == 0, result.output
    assert target.read_text().startswith("# extmsg configuration.")


def test_an_unset_variable_is_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "extmsg.toml"
    assert CliRunner().invoke(main, ["init", str(path)]).exit_code == 0
    env = {"UNBLU_USERNAME": "u", "UNBLU_PASSWORD": "p", "SMS_WEBHOOK_SECRET": "s"}
    env["TWILIO_AUTH_TOKEN"] = "t"
    checked = run("check", "-c", str(path), env=env)
    assert checked.returncode == 2
    # Not also "account_sid: expected `str` matching regex" for the empty value.
    assert checked.stderr.splitlines() == [
        "error: channels[0].settings.account_sid: environment variable TWILIO_ACCOUNT_SID is"
        " not set"
    ]


def test_check_prints_one_line_per_problem_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[server]\nport = "x"\n\n[[channels]]\nname = "a"\nmessenger = "loopback"\n'
        'webhook_secret = "${NOPE}"\n[channels.settings]\nmode = "m"\n'
    )
    result = run("check", "--config", str(path), env={"EXTMSG_PLUGINS": "tests.loopback_plugin"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: channels[0].webhook_secret: environment variable NOPE is not set",
        "error: server.port: expected `int`, got `str`",
        "error: channels[0].settings.token: required",
    ]
    assert "Traceback" not in result.stderr


def test_broken_plugin_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "brokenplug.py").write_text("import no_such_module\n")
    result = run(
        "plugins", env={"EXTMSG_PLUGINS": "brokenplug", "PYTHONPATH": f"{ROOT}:{tmp_path}"}
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: plugin 'brokenplug' (from EXTMSG_PLUGINS) failed to import: "
        "ModuleNotFoundError: No module named 'no_such_module'"
    )


def test_unexpected_errors_keep_their_traceback(tmp_path: Path) -> None:
    (tmp_path / "crashplug.py").write_text(
        "from extmsg import hookimpl\n"
        "@hookimpl\n"
        "def extmsg_messenger_types():\n"
        "    raise ZeroDivisionError('bug in plugin')\n"
    )
    result = run("plugins", env={"EXTMSG_PLUGINS": "crashplug", "PYTHONPATH": f"{ROOT}:{tmp_path}"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "ZeroDivisionError: bug in plugin" in result.stderr


def test_plugins_lists_installed_messengers_with_versions() -> None:
    result = run("plugins", "--json")
    assert result.returncode == 0, result.stderr
    infos = {p["name"]: p for p in json.loads(result.stdout)}
    for name, dist in (
        ("sms_twilio", "extmsg-sms-twilio"),
        ("whatsapp", "extmsg-whatsapp"),
        ("email_smtp", "extmsg-email-smtp"),
    ):
        assert infos[name]["distribution"] == dist
        assert infos[name]["version"]
        assert "extmsg_messenger_types" in infos[name]["hooks"]
    assert infos["extmsg.defaults.rendering"]["builtin"] is True
    disabled = run("plugins", "--json", env={"EXTMSG_DISABLE_PLUGINS": "whatsapp"})
    assert "whatsapp" not in {p["name"] for p in json.loads(disabled.stdout)}


def test_check_warns_about_an_admin_listener_open_to_the_network(tmp_path: Path) -> None:
    path = tmp_path / "extmsg.toml"
    path.write_text('[admin]\nlisten = "0.0.0.0:9100"\nallow_unauthenticated = true\n')
    result = run("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(
        "warning: admin.listen: 0.0.0.0:9100 serves /metrics, /-/plugins and the detailed "
        "/readyz without a token"
    )
    path.write_text('[admin]\nlisten = "0.0.0.0:9100"\n')
    refused = run("check", "--config", str(path))
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: admin.token: required when listen (0.0.0.0:9100)")
