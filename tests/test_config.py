"""Configuration: TOML + environment, every problem reported with its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from extmsg.config import load_config, parse_config, placeholder_warnings
from extmsg.errors import ConfigError
from extmsg.plugins import build_hooks

from . import loopback_plugin

MESSENGERS = build_hooks(entry_points=False, extra=[loopback_plugin]).messenger_types()

VALID = """
[server]
port = 9000
public_url = "https://connector.example.com/"

[unblu]
base_url = "https://unblu.example.com/app/rest"
username = "admin"
password = "${UNBLU_PASSWORD}"

[[channels]]
name = "sms"
messenger = "loopback"
webhook_secret = "${HOOK_SECRET:-fallback-secret}"
recipient = { type = "TEAM", id = "team-1" }

[channels.settings]
token = "${TWILIO_TOKEN}"
mode = "a"
"""


def _problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    import tomllib

    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), MESSENGERS, env=env or {})
    return info.value.problems


def test_valid_config_with_environment_references(tmp_path: Path) -> None:
    path = tmp_path / "extmsg.toml"
    path.write_text(VALID)
    config = load_config(path, MESSENGERS, env={"UNBLU_PASSWORD": "pw", "TWILIO_TOKEN": "tok"})
    assert config.unblu.password == "pw"
    assert config.channels[0].webhook_secret == "fallback-secret"
    assert config.channels[0].recipient is not None
    assert config.channels[0].recipient.type == "TEAM"
    settings = config.channel_settings["sms"]
    assert settings.token == "tok"
    assert config.server.base_url == "https://connector.example.com"
    [channel] = config.runtime_channels()
    assert channel.route_url("inbound") == "https://connector.example.com/channels/sms/inbound"
    assert config.store_path() == tmp_path / "extmsg.sqlite3"


def test_every_problem_is_one_line_naming_its_key() -> None:
    text = """
[server]
port = "eighty"
bogus = 1

[unblu]
api_version = "v5"

[[channels]]
name = "sms"
messenger = "loopback"
webhook_secret = "x"
[channels.settings]
account = "acct-1"

[[channels]]
name = "Bad Name"
messenger = "smss"

[[channels]]
name = "sms"
messenger = "loopback"
webhook_secret = "y"
[channels.settings]
account = "nope"
token = "t"
"""
    problems = _problems(text)
    assert "server.port: expected `int`, got `str`" in problems
    assert "server.bogus: unknown key" in problems
    assert any(p.startswith("unblu.api_version: ") for p in problems)
    assert "channels[0].settings.token: required" in problems
    assert any(p.startswith("channels[1].name: expected `str` matching regex") for p in problems)
    assert "channels[1].webhook_secret: required" in problems
    assert any(
        p.startswith("channels[1].messenger: unknown messenger type 'smss' (known: ")
        for p in problems
    )
    assert "channels[2].name: channel 'sms' is defined twice" in problems
    assert any(p.startswith("channels[2].settings.account: ") for p in problems)


def test_missing_environment_variable_names_the_key_and_the_variable() -> None:
    problems = _problems(VALID, env={"TWILIO_TOKEN": "t"})
    assert problems == ["unblu.password: environment variable UNBLU_PASSWORD is not set"]


def test_unknown_key_suggests_the_close_one() -> None:
    problems = _problems('[server]\npublic_ur = "x"\n')
    assert problems == ["server.public_ur: unknown key (did you mean 'public_url'?)"]


def test_cross_field_rule_in_plugin_settings() -> None:
    text = VALID.replace('mode = "a"', 'mode = "a"\nother = "b"')
    problems = _problems(text, env={"UNBLU_PASSWORD": "p", "TWILIO_TOKEN": "t"})
    assert problems == ["channels[0].settings: set at most one of mode and other"]


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, MESSENGERS)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml", MESSENGERS)


def test_trusted_proxies() -> None:
    text = VALID.replace(
        'public_url = "https://connector.example.com/"',
        'trusted_proxies = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "local"]',
    )
    [problem] = _problems(text, {"UNBLU_PASSWORD": "x", "TWILIO_TOKEN": "t"})
    assert problem.startswith("server")
    assert "trusted_proxies: 'local' is not an IP network" in problem

    config = parse_config(
        {"server": {"trusted_proxies": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]}}, MESSENGERS
    )
    trusts = config.server.trusts_proxy
    assert all(map(trusts, ["10.1.2.3", "192.0.2.7", "2001:db8::1"]))
    assert trusts("::ffff:10.9.9.9")  # an IPv4 peer seen through a dual-stack socket
    assert not any(map(trusts, ["192.0.2.8", "127.0.0.1", None]))
    assert not parse_config({}, MESSENGERS).server.trusts_proxy("127.0.0.1")
    anyone = parse_config({"server": {"trusted_proxies": ["*"]}}, MESSENGERS)
    assert anyone.server.trusts_proxy("203.0.113.9")


def test_an_unset_variable_is_one_problem_not_two() -> None:
    # Its empty value would also miss the setting's pattern: that line would only mislead.
    text = VALID.replace('mode = "a"', 'mode = "a"\naccount = "${ACCOUNT}"')
    problems = _problems(text, env={"UNBLU_PASSWORD": "p", "TWILIO_TOKEN": "t"})
    assert problems == ["channels[0].settings.account: environment variable ACCOUNT is not set"]
    # A key whose variable is set is still checked.
    problems = _problems(text, env={"UNBLU_PASSWORD": "p", "TWILIO_TOKEN": "t", "ACCOUNT": "x"})
    assert [p.split(": ")[0] for p in problems] == ["channels[0].settings.account"]


def test_an_enum_problem_lists_the_allowed_values() -> None:
    text = VALID.replace('password = "${UNBLU_PASSWORD}"', 'password = "p"\napi_version = "v5"')
    text = text.replace("[server]", '[server]\nlog_level = "LOUD"')
    text = text.replace('type = "TEAM"', 'type = "GROUP"')
    problems = _problems(text, env={"TWILIO_TOKEN": "t"})
    assert problems == [
        "server.log_level: invalid enum value 'LOUD'"
        " (allowed: 'DEBUG', 'INFO', 'WARNING', 'ERROR')",
        "unblu.api_version: invalid enum value 'v5' (allowed: 'v3', 'v4')",
        "channels[0].recipient.type: invalid enum value 'GROUP'"
        " (allowed: 'AGENT', 'TEAM', 'NAMED_AREA', 'ACCOUNT')",
    ]


def test_example_domains_left_in_the_config_are_named() -> None:
    import tomllib

    env = {"UNBLU_PASSWORD": "p", "TWILIO_TOKEN": "t"}
    config = parse_config(tomllib.loads(VALID), MESSENGERS, env=env)
    assert placeholder_warnings(config) == [
        "server.public_url: connector.example.com is an example domain (as 'extmsg init'"
        " wrote it); set the real address",
        "unblu.base_url: unblu.example.com is an example domain (as 'extmsg init'"
        " wrote it); set the real address",
    ]
    real = VALID.replace("connector.example.com", "connector.bank.ch").replace(
        "unblu.example.com", "unblu.bank.ch"
    )
    assert placeholder_warnings(parse_config(tomllib.loads(real), MESSENGERS, env=env)) == []
    # Named by host only: a DSN's password stays out of the line.
    pg = real + '\n[store]\nbackend = "postgres"\ndsn = "postgresql://u:s3cret@db.example.org/x"\n'
    [line] = placeholder_warnings(parse_config(tomllib.loads(pg), MESSENGERS, env=env))
    assert line.startswith("store.dsn: db.example.org is an example domain")
    assert "s3cret" not in line


def test_admin_listener_is_loopback_by_default_and_needs_a_token_elsewhere() -> None:
    default = parse_config({}, MESSENGERS).admin
    assert default.address == ("127.0.0.1", 8081)
    assert default.loopback
    assert parse_config({"admin": {"listen": "[::1]:0"}}, MESSENGERS).admin.address == ("::1", 0)

    [problem] = _problems('[admin]\nlisten = "0.0.0.0:9100"\n')
    assert problem.startswith("admin.token: required when listen (0.0.0.0:9100) is not a loopback")
    # a name other than localhost may resolve to any interface
    assert _problems('[admin]\nlisten = "metrics.internal:9100"\n')[0].startswith("admin.token:")
    token = "t" * 16
    exposed = parse_config({"admin": {"listen": "0.0.0.0:9100", "token": token}}, MESSENGERS)
    assert exposed.admin.token == token
    opted_out = {"listen": "0.0.0.0:9100", "allow_unauthenticated": True}
    assert not parse_config({"admin": opted_out}, MESSENGERS).admin.token


def test_admin_listen_and_token_errors_name_the_key() -> None:
    assert _problems('[admin]\nlisten = "8081"\n') == [
        "admin.listen: '8081' is not host:port, e.g. 127.0.0.1:8081"
    ]
    assert _problems('[admin]\nlisten = "::1:8081"\n')[0].startswith(
        "admin.listen: '::1:8081': write an IPv6 address in brackets"
    )
    [short] = _problems('[admin]\ntoken = "${T}"\n', {"T": "shorter-than-16"})
    assert short.startswith("admin.token: at least 16 characters")
    assert "shorter-than-16" not in short
    # an unset variable with an empty default: no token, allowed on loopback
    assert not parse_config({"admin": {"token": "${T:-}"}}, MESSENGERS, env={}).admin.token


def test_admin_token_is_a_secret_of_the_config() -> None:
    from extmsg.config import secret_values

    token = "admin-token-0123456789"
    assert token in secret_values({"admin": {"token": token}}, MESSENGERS)


def test_admin_listener_on_the_servers_port_is_refused() -> None:
    assert _problems("[server]\nport = 8081\n") == [
        "admin.listen: 127.0.0.1:8081 (the default) is on the server's port 8081; the admin "
        "listener needs a port of its own"
    ]
    clash = '[server]\nhost = "0.0.0.0"\nport = 9000\n[admin]\nlisten = "127.0.0.1:9000"\n'
    assert _problems(clash)[0].startswith("admin.listen: 127.0.0.1:9000 is on the server's port")
    # other addresses, same port: two listeners that do not meet
    apart = {"server": {"host": "10.0.0.1", "port": 9000}, "admin": {"listen": "127.0.0.1:9000"}}
    assert parse_config(apart, MESSENGERS).admin.address == ("127.0.0.1", 9000)
    both_free = {"server": {"port": 0}, "admin": {"listen": "127.0.0.1:0"}}
    assert parse_config(both_free, MESSENGERS).admin.address == ("127.0.0.1", 0)
