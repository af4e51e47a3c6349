"""Fixtures for the email plugin's tests: real mail servers as separate processes.

* ``smtp_sink`` — ``python -m aiosmtpd`` with the plugin's recording handler, writing each
  mail it accepts into a folder;
* ``dovecot`` — a private Dovecot IMAP server (own config, passwd-file user, Maildir, free
  port) in a temporary folder; skipped when Dovecot is not installed;
* ``fake_runtime`` — the one thing the plugin needs of the core's runtime: ``accept``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from email_testkit import IMAP_PASSWORD, IMAP_USER, Dovecot, FakeRuntime, SmtpSink

from extmsg.plugins import Hooks, build_hooks
from extmsg.testing.helpers import free_port
from extmsg_email_smtp import plugin


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start_sink(folder: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", *extra]
    cmd += ["-c", "extmsg_email_smtp.fake.RecordingHandler", str(folder)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc, "aiosmtpd")
    return proc, port


@pytest.fixture(scope="session")
def smtp_sink_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    folder = tmp_path_factory.mktemp("sink")
    proc, port = _start_sink(folder)
    try:
        yield SmtpSink(port, folder)
    finally:
        stop(proc)


@pytest.fixture
def smtp_sink(smtp_sink_server: SmtpSink) -> SmtpSink:
    smtp_sink_server.clear()
    return smtp_sink_server


@pytest.fixture(scope="session")
def tls_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    """The recording server requiring STARTTLS, with a self-signed certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    base = tmp_path_factory.mktemp("tls")
    cert, key = base / "cert.pem", base / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    folder = base / "mail"
    proc, port = _start_sink(folder, "--tlscert", str(cert), "--tlskey", str(key))
    try:
        yield SmtpSink(port, folder)
    finally:
        stop(proc)


# -- Dovecot -------------------------------------------------------------------------------------
def _dovecot_users() -> tuple[str, str, int, int]:
    """(internal user, login user, mail uid, mail gid) that Dovecot accepts here."""
    if os.geteuid() == 0:
        try:
            internal = pwd.getpwnam("dovecot").pw_name
            login = pwd.getpwnam("dovenull").pw_name
        except KeyError:
            internal = login = "nobody"
        nobody = pwd.getpwnam("nobody")
        return internal, login, nobody.pw_uid, nobody.pw_gid
    me = pwd.getpwuid(os.getuid())
    return me.pw_name, me.pw_name, me.pw_uid, me.pw_gid


@pytest.fixture(scope="session")
def dovecot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    binary = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None
    )
    if binary is None:
        pytest.skip("Dovecot is not installed (apt-get install -y dovecot-imapd)")
    # Not under pytest's tmp folder: that one is private to us, and Dovecot's own users
    # (auth, mail) must reach the config, the passwd file and the Maildir.
    base = Path(tempfile.mkdtemp(prefix="extmsg-dovecot-"))
    base.chmod(0o755)
    internal, login, uid, gid = _dovecot_users()
    port = free_port()
    mail = base / "mail"
    mail.mkdir()
    os.chown(mail, uid, gid)
    passwd = base / "passwd"
    passwd.write_text(f"{IMAP_USER}:{{PLAIN}}{IMAP_PASSWORD}:{uid}:{gid}::{mail}/home::\n")
    (base / "run").mkdir()
    (base / "state").mkdir()
    conf = base / "dovecot.conf"
    conf.write_text(
        f"""
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
instance_name = extmsg-test-{port}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = {internal}
default_login_user = {login}
mail_location = maildir:{mail}/%u
mail_plugins =
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""
    )
    proc = subprocess.Popen(
        [binary, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_port(port, proc, "dovecot")
    except RuntimeError as exc:
        log = (base / "dovecot.log").read_text() if (base / "dovecot.log").exists() else ""
        stop(proc)
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"{exc}\n{log[-2000:]}") from exc
    try:
        yield Dovecot(port, mail / IMAP_USER)
    finally:
        stop(proc)
        shutil.rmtree(base, ignore_errors=True)


# -- the core's side -----------------------------------------------------------------------------
@pytest.fixture
def fake_runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def hooks() -> Hooks:
    return build_hooks(entry_points=False, extra=[plugin], disabled=())


@pytest.fixture(autouse=True)
async def _reset_plugin_state() -> Any:
    yield
    await plugin.state.stop()
    plugin.state.books.clear()
    plugin.state.memory = None  # a store of an earlier test, closed by now
