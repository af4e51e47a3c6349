"""IMAP intake: poll a folder, store each mail durably, then move it to the processed folder.

The standard library's ``imaplib`` runs in a worker thread. A mail leaves ``imap_folder`` only
after the core committed its events, so a crash in between means it is read again and dropped
as a duplicate (same Message-ID) — never lost, never in Unblu twice. Mail is fetched with
``BODY.PEEK`` so its \\Seen flag stays as it was. Mail over ``max_message_bytes`` is not
downloaded: its headers become a message saying so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import imaplib
import logging
import re
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from extmsg import logcontext
from extmsg.models import Channel

from .inbound import MailIntake, UnreadableMail
from .settings import EmailSettings

__all__ = ["ImapPoller", "encode_folder"]

log = logging.getLogger("extmsg.email.imap")


def encode_folder(name: str) -> str:
    """A folder name as IMAP wants it: modified UTF-7 (RFC 3501 §5.1.3), quoted."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    encoded = "".join(out)
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ImapError(Exception):
    """The IMAP server refused a command."""


def _check(result: tuple[str, Sequence[Any]], what: str) -> Sequence[Any]:
    typ, data = result
    if typ != "OK":
        detail = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
        raise ImapError(f"{what} failed: {detail[:200]}")
    return data


class ImapPoller:
    """Polls one channel's mailbox every ``imap_poll_seconds``."""

    def __init__(
        self,
        channel: Channel,
        intake: MailIntake,
        connect: Callable[[EmailSettings], imaplib.IMAP4] | None = None,
    ) -> None:
        self.channel = channel
        self.settings: EmailSettings = channel.settings
        self.intake = intake
        self._connect_fn = connect or _connect
        self._conn: imaplib.IMAP4 | None = None
        self._can_move = False
        self._uidplus = False
        self._skip: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"email-imap-{self.channel.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self._disconnect)

    def wake(self) -> None:
        """Poll now instead of at the next interval."""
        self._wake.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self.poll_once()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning(
                    "email %s: IMAP poll failed (%d in a row): %s: %s",
                    self.channel.name,
                    failures,
                    type(exc).__name__,
                    exc,
                )
                await asyncio.to_thread(self._disconnect)
            delay = self.settings.imap_poll_seconds * min(2 ** max(failures - 1, 0), 10)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    # -- one poll ------------------------------------------------------------------------------
    async def poll_once(self) -> int:
        """Take every waiting mail once; return how many were stored and moved."""
        if self._conn is None:
            await asyncio.to_thread(self._open)
        uids = await asyncio.to_thread(self._search)
        done = 0
        for uid in uids:
            if uid in self._skip:
                continue
            fetched = await asyncio.to_thread(self._fetch, uid)
            if fetched is None:
                continue  # gone meanwhile (another client moved it)
            raw, truncated = fetched
            # One mail, one request id: its log lines here and its jobs' later share it.
            with logcontext.bind(request_id=logcontext.new_request_id(), channel=self.channel.name):
                stored = await self._deliver(uid, raw, truncated)
            if not stored:
                continue
            await asyncio.to_thread(self._move, uid)
            done += 1
        return done

    async def _deliver(self, uid: str, raw: bytes, truncated: bool) -> bool:
        """Store one mail; False (and skipped from now on) when it cannot be parsed."""
        try:
            await self.intake.deliver(self.channel, raw, truncated=truncated)
        except UnreadableMail as exc:
            log.warning(
                "email %s: a mail cannot be parsed and stays in %s: %s",
                self.channel.name,
                self.settings.imap_folder,
                exc,
            )
            self._skip.add(uid)
            return False
        return True

    # -- blocking parts (worker thread) --------------------------------------------------------
    def _open(self) -> None:
        s = self.settings
        conn = self._connect_fn(s)
        try:
            _check(conn.login(s.imap_username or "", s.imap_password or ""), "LOGIN")
            # The capabilities after login are the ones that count (MOVE, UIDPLUS).
            data = _check(conn.capability(), "CAPABILITY")
            listed = data[0] if data and isinstance(data[0], bytes) else b""
            caps = {c.upper() for c in listed.decode("ascii", "replace").split()}
            caps |= {c.upper() for c in conn.capabilities}
            self._can_move = "MOVE" in caps
            self._uidplus = "UIDPLUS" in caps
            typ, data = conn.create(encode_folder(s.imap_processed_folder))
            if typ != "OK" and not _already_exists(data):
                raise ImapError(f"CREATE {s.imap_processed_folder} failed")
            _check(conn.select(encode_folder(s.imap_folder)), f"SELECT {s.imap_folder}")
        except BaseException:
            with contextlib.suppress(Exception):
                conn.logout()
            raise
        self._conn = conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.logout()

    def _require(self) -> imaplib.IMAP4:
        if self._conn is None:
            raise ImapError("not connected")
        return self._conn

    def _search(self) -> list[str]:
        conn = self._require()
        criterion = "UNSEEN" if self.settings.imap_fetch == "unseen" else "ALL"
        # NOOP lets the server bring the session's view up to date (mail delivered since).
        _check(conn.noop(), "NOOP")
        data = _check(conn.uid("SEARCH", criterion), "SEARCH")
        found = data[0] if data and isinstance(data[0], bytes) else b""
        return found.decode("ascii", "replace").split()

    def _fetch(self, uid: str) -> tuple[bytes, bool] | None:
        conn = self._require()
        data = _check(conn.uid("FETCH", uid, "(RFC822.SIZE)"), "FETCH SIZE")
        sizes = [re.search(rb"RFC822\.SIZE (\d+)", d) for d in data if isinstance(d, bytes)]
        size = next((int(m.group(1)) for m in sizes if m), None)
        if size is None:
            return None
        truncated = size > self.settings.max_message_bytes
        section = "BODY.PEEK[HEADER]" if truncated else "BODY.PEEK[]"
        data = _check(conn.uid("FETCH", uid, f"({section})"), "FETCH")
        for item in data:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
                return item[1], truncated
        return None

    def _move(self, uid: str) -> None:
        conn = self._require()
        target = encode_folder(self.settings.imap_processed_folder)
        if self._can_move:
            _check(conn.uid("MOVE", uid, target), "MOVE")
            return
        _check(conn.uid("COPY", uid, target), "COPY")
        _check(conn.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)"), "STORE")
        if self._uidplus:
            _check(conn.uid("EXPUNGE", uid), "UID EXPUNGE")
        else:
            _check(conn.expunge(), "EXPUNGE")


def _already_exists(data: Sequence[Any]) -> bool:
    text = b" ".join(d for d in data if isinstance(d, bytes)).upper()
    return b"ALREADYEXISTS" in text or b"EXISTS" in text


def _connect(settings: EmailSettings) -> imaplib.IMAP4:
    host = settings.imap_host or ""
    timeout = settings.imap_timeout
    context = ssl.create_default_context()
    if not settings.imap_verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.imap_security == "tls":
        return imaplib.IMAP4_SSL(host, settings.imap_port, ssl_context=context, timeout=timeout)
    conn = imaplib.IMAP4(host, settings.imap_port, timeout=timeout)
    if settings.imap_security == "starttls":
        conn.starttls(ssl_context=context)
    return conn
