"""Plugin discovery, blocking and the clear errors for broken plugins."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from extmsg.errors import PluginError
from extmsg.plugins import DEFAULT_PLUGINS, build_hooks

REAL = {"sms_twilio", "whatsapp", "email_smtp"}


def _install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> None:
    """A real distribution on sys.path with an ``extmsg.plugins`` entry point."""
    module = f"extmsg_test_{name}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    dist = tmp_path / f"extmsg_test_{name}-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: extmsg-test-{name}\nVersion: 1.2.3\n"
    )
    (dist / "entry_points.txt").write_text(f"[extmsg.plugins]\n{name} = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)


GOOD = """
from extmsg import hookimpl
from extmsg.models import MessengerType
import msgspec

class S(msgspec.Struct):
    pass

@hookimpl
def extmsg_messenger_types():
    return MessengerType(name="telegram", settings=S)
"""


def test_entry_point_plugin_is_listed_with_distribution_version_and_hooks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(tmp_path, monkeypatch, "telegram", GOOD)
    hooks = build_hooks(disabled=REAL)
    infos = {p.name: p for p in hooks.plugins()}
    info = infos["telegram"]
    assert (info.distribution, info.version) == ("extmsg-test-telegram", "1.2.3")
    assert info.hooks == ["extmsg_messenger_types"]
    assert not info.builtin
    assert "telegram" in hooks.messenger_types()
    assert {name for name, i in infos.items() if i.builtin} == set(DEFAULT_PLUGINS)


def test_disable_env_blocks_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, monkeypatch, "telegram", GOOD)
    # Whatever else is installed: only the named plugin is blocked, spaces and all.
    monkeypatch.setenv("EXTMSG_DISABLE_PLUGINS", " telegram ,extmsg.defaults.routing")
    hooks = build_hooks()
    names = {p.name for p in hooks.plugins()}
    assert "telegram" not in names
    assert "extmsg.defaults.routing" not in names
    assert "extmsg.defaults.contacts" in names
    assert "telegram" not in hooks.messenger_types()
    monkeypatch.setenv("EXTMSG_DISABLE_PLUGINS", "")
    assert "telegram" in build_hooks().messenger_types()  # it is installed, and loads


def test_module_plugins_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTMSG_PLUGINS", "tests.loopback_plugin")
    hooks = build_hooks(entry_points=False)
    assert "loopback" in hooks.messenger_types()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("raise RuntimeError('boom')\n", "failed to import: RuntimeError: boom"),
        (
            "from extmsg import hookimpl\n@hookimpl\ndef extmsg_sendd(channel, message):\n  pass\n",
            "unknown hook 'extmsg_sendd'",
        ),
        (
            "from extmsg import hookimpl\n@hookimpl\ndef extmsg_send(channel, msg):\n  pass\n",
            "Argument(s) {'msg'} are declared in the hookimpl but can not be found",
        ),
        (
            "from extmsg import hookimpl\n@hookimpl\n"
            "async def extmsg_send(channel, message):\n  pass\n",
            "extmsg_send is a first-result hook; an 'async def' implementation always answers",
        ),
    ],
    ids=["import-error", "misspelled-hook", "wrong-argument", "async-firstresult"],
)
def test_broken_plugin_is_one_clear_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, message: str
) -> None:
    _install(tmp_path, monkeypatch, "broken", source)
    with pytest.raises(PluginError) as info:
        build_hooks(disabled=REAL)
    text = str(info.value)
    assert "broken" in text
    assert message in text
    assert "\n" not in text


def test_same_messenger_declared_twice() -> None:
    from . import loopback_plugin

    hooks = build_hooks(entry_points=False, extra=[loopback_plugin, _TWIN])
    with pytest.raises(PluginError) as info:
        hooks.messenger_types()
    assert str(info.value) == (
        "messenger type 'loopback' is declared by both plugin 'tests.loopback_plugin' and "
        f"plugin '{hooks.pm.get_name(_TWIN)}'"
    )


class _Twin:
    """A second plugin claiming the loopback messenger."""

    from extmsg import hookimpl

    @hookimpl
    def extmsg_messenger_types(self) -> object:
        from . import loopback_plugin

        return loopback_plugin.extmsg_messenger_types()


_TWIN = _Twin()
