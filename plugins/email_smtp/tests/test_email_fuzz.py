"""Hostile input on the SMTP listener: never a failure reply, never a stall, nothing stored
when a mail is refused.

Mails of the corpus (testdata) mutated by Hypothesis — headers replaced by huge, broken or
non-UTF-8 values, removed or repeated, bodies replaced, MIME nested deep, line ends changed —
and raw junk commands, spoken over SMTP to the listener of one long-lived server with this
plugin and the Unblu sandbox. A ``451`` (storing failed: the MTA would retry it forever) or
aiosmtpd's ``500 Error: (Exception) …`` counts as a server failure; ``5xx`` refusals are fine
but must store nothing. ``EXTMSG_FUZZ=long`` runs the long profile (see
:mod:`extmsg.testing.fuzz`).
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator

import pytest
from email_testkit import ADDRESS, SECRET, corpus_cases, load_case
from hypothesis import given
from hypothesis import strategies as st

from extmsg.plugins import build_hooks
from extmsg.testing.fuzz import WEDGE_LIMIT, FuzzHost, FuzzServer, FuzzSetup, Reply, fuzz_settings
from extmsg.testing.helpers import free_port
from extmsg.testing.hostile import MB, hostile_bytes, hostile_text
from extmsg_email_smtp import plugin

MAILS = [load_case(name)[0] for name in corpus_cases()]
HEADERS = (
    b"From",
    b"To",
    b"Cc",
    b"Subject",
    b"Message-ID",
    b"In-Reply-To",
    b"References",
    b"Date",
    b"Reply-To",
    b"Content-Type",
    b"Content-Transfer-Encoding",
    b"Content-Disposition",
    b"MIME-Version",
    b"Auto-Submitted",
    b"Return-Path",
)


def fuzz_setup(host: FuzzHost, unblu: str) -> FuzzSetup:
    """The server under test (built in its own process, see :class:`FuzzServer`)."""
    listen_port = free_port()
    config = {
        "store": {"path": str(host.folder / "store.sqlite3")},
        "unblu": {"base_url": unblu, "api_version": "v4", "username": "admin", "password": "admin"},
        "engine": {"backoff_initial": 0.05, "backoff_max": 0.5, "max_attempts": 3},
        "channels": [
            {
                "name": "email",
                "messenger": "email_smtp",
                "webhook_secret": SECRET,
                "settings": {
                    "address": ADDRESS,
                    "display_name": "Acme Support",
                    "smtp_host": "127.0.0.1",
                    "smtp_port": free_port(),  # nothing listens: no mail goes out
                    "smtp_security": "none",
                    "inbound": ["smtp"],
                    "listen_host": "127.0.0.1",
                    "listen_port": listen_port,
                    "max_message_bytes": 4 * MB,
                },
            }
        ],
    }
    hooks = build_hooks(entry_points=False, extra=[plugin], disabled=())
    return FuzzSetup(config=config, hooks=hooks, extra={"smtp_port": listen_port})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    with FuzzServer(f"{__name__}:fuzz_setup", tmp_path_factory.mktemp("email-fuzz")) as fuzz:
        yield fuzz


# -- an SMTP client that says exactly what it is told -------------------------------------------


class _Session:
    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def reply(self) -> tuple[int | None, bytes]:
        """One (possibly multi-line) reply: its code and its text."""
        lines: list[bytes] = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return None, b"\r\n".join(lines) + self.buffer
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                match = re.match(rb"(\d{3})", line)
                return (int(match.group(1)) if match else None), b"\r\n".join(lines)

    def command(self, line: bytes) -> tuple[int | None, bytes]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"QUIT\r\n")
        self.sock.close()


def smtp_exchange(
    port: int, sender: bytes, recipients: list[bytes], data: bytes, *, lines: list[bytes] = ()
) -> Reply:
    """A mail transaction (or, with ``lines``, those raw commands), answered with the reply
    that decides its fate: DATA's, or the first refusal."""
    session = _Session(port, WEDGE_LIMIT)
    try:
        code, text = session.reply()
        if code != 220:
            return Reply(code, text, kind="smtp", error="no greeting")
        code, text = session.command(b"EHLO client.example")
        if lines:
            for line in lines:
                code, text = session.command(line)
                if code is None:
                    break
            return Reply(code, text, kind="smtp")
        utf8 = b" SMTPUTF8" if any(b > 127 for b in sender + b"".join(recipients)) else b""
        code, text = session.command(b"MAIL FROM:<" + sender + b">" + utf8)
        if code != 250:
            return Reply(code, text, kind="smtp")
        accepted = 0
        for rcpt in recipients:
            code, text = session.command(b"RCPT TO:<" + rcpt + b">")
            if code is None or (code >= 500 and code != 550):
                return Reply(code, text, kind="smtp")
            accepted += code == 250
        if not accepted:
            return Reply(code, text, kind="smtp")
        code, text = session.command(b"DATA")
        if code != 354:
            return Reply(code, text, kind="smtp")
        stuffed = re.sub(rb"(?m)^\.", b"..", data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        session.sock.sendall(stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        code, text = session.reply()
        return Reply(code, text, kind="smtp")
    except TimeoutError:
        return Reply(None, b"", kind="smtp", error="timed out")
    except OSError as exc:
        return Reply(None, b"", kind="smtp", error=f"connection: {exc}")
    finally:
        session.close()


# -- hostile mail -------------------------------------------------------------------------------


def _split(mail: bytes) -> tuple[list[list[bytes]], bytes]:
    """Header fields (name, raw value with its folded lines) and the body."""
    head, _, body = mail.replace(b"\r\n", b"\n").partition(b"\n\n")
    fields: list[list[bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += b"\n" + line
        elif b":" in line:
            name, _, value = line.partition(b":")
            fields.append([name, value])
    return fields, body


def _join(fields: list[list[bytes]], body: bytes) -> bytes:
    return b"\n".join(name + b":" + value for name, value in fields) + b"\n\n" + body


def _wrapped(text: bytes, width: int = 900) -> bytes:
    """Long text in lines SMTP carries (a line over 1000 octets is refused outright)."""
    lines = []
    for line in text.split(b"\n"):
        lines += [line[i : i + width] for i in range(0, max(len(line), 1), width)]
    return b"\n".join(lines)


def _header_value() -> st.SearchStrategy[bytes]:
    encoded_word = st.builds(
        lambda charset, enc, payload: b" =?" + charset + b"?" + enc + b"?" + payload + b"?=",
        st.sampled_from([b"utf-8", b"x-unknown", b"iso-8859-1", b"utf-7", b"", b"\xff"]),
        st.sampled_from([b"B", b"Q", b"X"]),
        st.sampled_from([b"w6l0w6k=", b"=C3=A9", b"!!!", b"=FF=FE", b"", b"=?"]),
    )
    return st.one_of(
        hostile_text(max_size=MB).map(
            lambda t: b" " + _wrapped(t.encode("utf-8", "surrogatepass"))
        ),
        hostile_bytes(max_size=4096).map(lambda b: b" " + _wrapped(b.replace(b"\n", b""))),
        encoded_word,
        st.sampled_from([b"", b" <>", b" <@>", b' "" <a@b>', b' multipart/mixed; boundary=""']),
    )


def _deep_mime(depth: int) -> bytes:
    parts = [
        b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth)
    ]
    closing = [b"\n--b%d--\n" % i for i in reversed(range(depth))]
    return b"".join(parts) + b"Content-Type: text/plain\n\nhello" + b"".join(closing)


def _body() -> st.SearchStrategy[bytes]:
    return st.one_of(
        hostile_text(max_size=MB).map(lambda t: _wrapped(t.encode("utf-8", "surrogatepass"))),
        hostile_bytes(max_size=MB // 4).map(_wrapped),
        st.integers(1, 5000).map(_deep_mime),
        st.just(b""),
    )


@st.composite
def hostile_mail(draw: st.DrawFn) -> bytes:
    fields, body = _split(draw(st.sampled_from(MAILS)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["value", "value", "delete", "repeat", "add", "body", "mime"]))
        if op == "body":
            body = draw(_body())
        elif op == "mime":
            fields = [f for f in fields if f[0].lower() != b"content-type"]
            fields.append([b"Content-Type", b" multipart/mixed; boundary=b0"])
            body = _deep_mime(draw(st.integers(1, 5000))).partition(b"\n\n")[2]
        elif op == "add" or not fields:
            name = draw(st.sampled_from(HEADERS))
            fields.insert(draw(st.integers(0, len(fields))), [name, draw(_header_value())])
        else:
            index = draw(st.integers(0, len(fields) - 1))
            if op == "delete":
                del fields[index]
            elif op == "repeat":
                fields.insert(index, [fields[index][0], draw(_header_value())])
            else:
                fields[index][1] = draw(_header_value())
    mail = _join(fields, body)
    if draw(st.booleans()):
        mail = mail.replace(b"\n", b"\r\n")
    return mail


_ADDRESSES = st.one_of(
    st.just(b"jane.doe@example.org"),
    st.just(b""),
    hostile_text(max_size=2000).map(lambda t: t.encode("utf-8", "surrogatepass")[:900]),
    hostile_bytes(max_size=300),
).map(lambda a: a.replace(b"\r", b"").replace(b"\n", b"").replace(b">", b""))


@fuzz_settings(examples=40)
@given(
    mail=hostile_mail(),
    sender=_ADDRESSES,
    recipients=st.lists(
        st.one_of(st.just(ADDRESS.encode()), st.just(ADDRESS.encode()), _ADDRESSES),
        min_size=1,
        max_size=3,
    ),
)
def test_hostile_mail(
    server: FuzzServer, mail: bytes, sender: bytes, recipients: list[bytes]
) -> None:
    port = server.extra["smtp_port"]
    server.measure("smtp", lambda: smtp_exchange(port, sender, recipients, mail))


@fuzz_settings(examples=30)
@given(
    lines=st.lists(
        st.one_of(
            st.sampled_from(
                [b"MAIL FROM:<a@b>", b"RCPT TO:<" + ADDRESS.encode() + b">", b"RSET", b"NOOP"]
            ),
            st.builds(
                lambda verb, arg: verb + b" " + arg,
                st.sampled_from([b"MAIL FROM:", b"RCPT TO:", b"HELO", b"EHLO", b"VRFY", b"XYZ"]),
                hostile_bytes(max_size=2000).map(
                    lambda b: b.replace(b"\r", b"").replace(b"\n", b"")
                ),
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_junk_commands(server: FuzzServer, lines: list[bytes]) -> None:
    port = server.extra["smtp_port"]
    server.measure("smtp-junk", lambda: smtp_exchange(port, b"", [], b"", lines=lines))


def test_a_clean_mail_is_stored(server: FuzzServer) -> None:
    """The client speaks SMTP correctly: a corpus mail gets its 250."""
    reply = server.measure(
        "smtp",
        lambda: smtp_exchange(
            server.extra["smtp_port"], b"jane.doe@gmail.com", [ADDRESS.encode()], MAILS[0]
        ),
    )
    assert reply.code == 250, reply
