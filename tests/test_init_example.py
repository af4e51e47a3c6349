"""``extmsg init``'s example configuration shows a channel of each installed messenger plugin
that brings an example, after the bundled messengers' own."""

from __future__ import annotations

import tomllib

import msgspec

from extmsg.example import EXAMPLE_CONFIG, example_config
from extmsg.messenger import Messenger


class AcmeSettings(msgspec.Struct, kw_only=True, frozen=True):
    token: str


class Acme(Messenger):
    name = "acme"
    settings = AcmeSettings
    config_example = '# [[channels]]\n# name = "acme"\n# messenger = "acme"\n'


class Plain(Messenger):
    name = "plain"
    settings = AcmeSettings


class Twilio(Messenger):
    name = "sms_twilio"
    settings = AcmeSettings
    config_example = "# shown already\n"


def test_a_plugins_example_follows_the_bundled_ones() -> None:
    types = {u.name: u().messenger_type() for u in (Acme, Plain, Twilio)}
    text = example_config(types)
    assert text.startswith(EXAMPLE_CONFIG)
    assert text.endswith(
        '# --- acme (plugin) ---\n# [[channels]]\n# name = "acme"\n# messenger = "acme"\n'
    )
    assert "shown already" not in text, "a messenger the example shows is not added twice"
    assert "plain" not in text
    tomllib.loads(text)  # still a valid configuration file
