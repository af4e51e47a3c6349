"""Plugin discovery, blocking and the clear errors for broken plugins."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from extmsg import hookimpl
from extmsg.errors import PluginError
from extmsg.hooktrace import enable_hook_tracing
from extmsg.models import Channel, Contact, OutboundMessage, SendResult
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


# -- first-result hooks: called as pluggy calls them --------------------------------------------
class _Sender:
    """Sends for one messenger; remembers what it was given."""

    def __init__(self, messenger: str, answer: str) -> None:
        self.messenger = messenger
        self.answer = answer
        self.calls: list[tuple[object, object]] = []

    @hookimpl
    def extmsg_send(self, message: OutboundMessage, channel: Channel) -> object:
        # The arguments in another order than the spec's: each gets its own by name.
        self.calls.append((channel, message))
        if channel.messenger != self.messenger:
            return None
        return SendResult(provider_message_id=self.answer)


def _hook_channel(messenger: str) -> Channel:
    return Channel(
        name=f"{messenger}-1",
        messenger=messenger,
        settings=None,
        public_url="http://127.0.0.1:8080",
        webhook_secret="secret",
    )


def _message() -> OutboundMessage:
    return OutboundMessage(
        id="m1",
        unblu_message_id="u1",
        conversation_id="c1",
        contact=Contact(address="+41790000000"),
        text="hi",
    )


async def test_a_plugin_registered_after_calls_is_called_from_then_on() -> None:
    hooks = build_hooks(entry_points=False)
    first = _Sender("late", "first")
    hooks.pm.register(first)
    assert (await hooks.send(_hook_channel("late"), _message())).provider_message_id == "first"
    later = _Sender("late", "later")
    hooks.pm.register(later)  # registered last: asked first
    result = await hooks.send(_hook_channel("late"), _message())
    assert result.provider_message_id == "later"
    assert len(later.calls) == 1
    assert later.calls[0][0] == _hook_channel("late")
    assert later.calls[0][1] == _message()
    hooks.pm.unregister(later)
    assert (await hooks.send(_hook_channel("late"), _message())).provider_message_id == "first"
    assert len(later.calls) == 1


async def test_a_wrapper_registered_after_calls_wraps_them() -> None:
    hooks = build_hooks(entry_points=False)
    hooks.pm.register(_Sender("wrapped", "plain"))
    assert (await hooks.send(_hook_channel("wrapped"), _message())).provider_message_id == "plain"

    class Wrapper:
        @hookimpl(wrapper=True)
        def extmsg_send(self, channel: Channel, message: OutboundMessage) -> Any:
            result = yield
            return SendResult(provider_message_id=f"wrapped {result.provider_message_id}")

    hooks.pm.register(Wrapper())
    result = await hooks.send(_hook_channel("wrapped"), _message())
    assert result.provider_message_id == "wrapped plain"


async def test_hook_calls_are_traced_once_tracing_is_enabled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = build_hooks(entry_points=False)
    hooks.pm.register(_Sender("traced", "sid"))
    await hooks.send(_hook_channel("traced"), _message())
    enable_hook_tracing(hooks.pm)
    with caplog.at_level(logging.DEBUG, logger="extmsg.plugins"):
        await hooks.send(_hook_channel("traced"), _message())
    assert "hook extmsg_send returned" in caplog.text
