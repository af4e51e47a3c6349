"""docs/deploy.md stays true: its commands exist, its nginx site passes the headers extmsg
reads, its systemd unit waits as long as a graceful stop may take, its defaults are extmsg's."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

from extmsg.cli import main
from extmsg.config import AdminConfig, ServerConfig
from extmsg.draining import CUT_OFF_GRACE

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC, re.S)


def test_every_extmsg_command_in_the_doc_exists_with_its_options() -> None:
    commands = [
        shlex.split(line.split("#", 1)[0].replace("'", ""))
        for line in DOC.splitlines()
        if re.search(r"(extmsg-admin|/bin/extmsg) [a-z]", line)
    ]
    assert len(commands) >= 8
    for words in commands:
        start = next(i for i, w in enumerate(words) if re.search(r"(^|/)extmsg(-admin)?$", w))
        command: click.Command = main
        args = words[start + 1 :]
        while isinstance(command, click.Group) and args and not args[0].startswith("-"):
            found = command.get_command(click.Context(command), args[0])
            assert found is not None, f"no such command: {' '.join(words)}"
            command, args = found, args[1:]
        assert not isinstance(command, click.Group), " ".join(words)
        options = {o for p in command.params for o in getattr(p, "opts", [])}
        for arg in args:
            if arg.startswith("-"):
                assert arg in options, f"{' '.join(words)}: no option {arg}"


def test_the_nginx_site_sets_the_forwarded_headers_extmsg_reads() -> None:
    source = (ROOT / "core" / "extmsg" / "flows" / "accept.py").read_text(encoding="utf-8")
    read = set(re.findall(r'headers\.get\("(X-Forwarded-[A-Za-z]+)"', source))
    assert read == {"X-Forwarded-Proto", "X-Forwarded-Host"}
    [site] = _blocks("nginx")
    set_headers = set(re.findall(r"proxy_set_header (X-Forwarded-[A-Za-z]+)", site))
    assert read <= set_headers
    body = re.search(r"client_max_body_size (\d+)m;", site)
    assert body is not None
    assert int(body.group(1)) * 1024 * 1024 >= ServerConfig().max_body_bytes
    assert f"server {ServerConfig().host}:{ServerConfig().port};" in site


def test_the_unit_waits_for_a_graceful_stop() -> None:
    unit = next(b for b in _blocks("ini") if "ExecStart=/opt/extmsg/bin/extmsg serve" in b)
    match = re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.M)
    assert match is not None
    # Requests in flight, then running jobs (plus 5 s for the ones being cut off), and the
    # public and admin listeners' last cut-off of what is still running (twice each).
    budget = 2 * ServerConfig().shutdown_timeout + 5 + 4 * CUT_OFF_GRACE
    assert int(match.group(1)) >= budget
    assert f"shutdown_timeout (20 s) + {5 + 4 * CUT_OFF_GRACE:g} s" in unit
    assert "KillMode=mixed" in unit  # the supervisor passes SIGTERM on itself
    assert "Restart=on-failure" in unit


def test_the_listener_table_gives_the_defaults() -> None:
    server = ServerConfig()
    assert f"(`{server.host}:{server.port}`)" in DOC
    assert f"(`{AdminConfig().listen}`)" in DOC
