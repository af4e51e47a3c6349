"""The embedded SMTP/LMTP listener an MTA forwards mail to.

One listener per ``listen_host:listen_port``; channels sharing one are told apart by the
envelope recipient (RCPT TO). The answer to DATA is ``250`` only once every channel's events
are committed; ``451`` (try again later) when storing failed, so the MTA keeps the mail and
retries — a retry of what was stored the first time is a duplicate the core drops. Unknown
recipients get ``550`` at RCPT, mail over a channel's size limit ``552``.

Under LMTP (Postfix ``lmtp:`` transport) DATA is answered once per recipient (RFC 2033).

From the moment the server begins to stop, the listener takes no new mail: a new connection is
greeted with ``421`` (service closing, try again later), and so is a MAIL, RCPT or DATA on an
open one, whose connection then closes (RFC 5321 §3.8). A mail whose DATA ended before that is
stored first — the stop's drain waits for it — and answered ``250`` only once it is. The
listener closes before the store does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from extmsg import logcontext
from extmsg.models import Channel

from . import addresses
from .inbound import MailIntake, UnreadableMail
from .settings import EmailSettings

__all__ = ["Gate", "Listener", "listeners_for", "quiet_aiosmtpd"]

log = logging.getLogger("extmsg.email.smtp")


def quiet_aiosmtpd() -> None:
    """aiosmtpd logs every command, addresses included, at INFO: keep it to warnings unless
    the operator set its level."""
    aiosmtpd_log = logging.getLogger("mail.log")
    if aiosmtpd_log.level == logging.NOTSET:
        aiosmtpd_log.setLevel(logging.WARNING)


OK = "250 2.0.0 OK: stored"
TRY_LATER = "451 4.3.0 Temporary failure storing the message, try again later"
TOO_BIG = "552 5.3.4 Message too big for this recipient"
UNREADABLE = "554 5.6.0 Message could not be parsed"
CLOSING = "421 4.3.2 Service shutting down, try again later"

#: What :meth:`Listener.stop` still gives a mail being stored before it cuts the connection
#: (unanswered: the sender tries again). The server's drain has waited for it already.
STOP_GRACE = 0.5


class Gate(Protocol):
    """What the listener needs of the running server to stop well (``MessengerContext``)."""

    @property
    def stopping(self) -> bool: ...

    def in_flight(self) -> contextlib.AbstractContextManager[None]: ...


class _Replies:
    """aiosmtpd echoes some arguments in its replies (``502 Could not VRFY <arg>``); bytes
    that are not UTF-8 arrive there as surrogates and made encoding the reply fail with
    ``500 Error: (UnicodeEncodeError)``. They are sent escaped instead."""

    enable_SMTPUTF8: bool
    event_handler: Listener
    transport: asyncio.BaseTransport | None

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii", "backslashreplace")
        await super().push(status)  # type: ignore[misc]
        if status.startswith(b"421") and self.transport is not None:
            self.transport.close()  # 421: the server closes the connection (RFC 5321 §3.8)

    async def _handle_client(self) -> None:
        if self.event_handler.refusing():
            await self.push(CLOSING)  # instead of the greeting
            return
        await super()._handle_client()  # type: ignore[misc]


class _SMTP(_Replies, SMTP):
    pass


class _LMTP(_Replies, LMTP):
    pass


class Listener:
    """An SMTP (or LMTP) server for the channels that share one address and port."""

    def __init__(
        self,
        host: str,
        port: int,
        channels: Sequence[Channel],
        intake: MailIntake,
        protocol: str = "smtp",
        hostname: str | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.channels = list(channels)
        self.intake = intake
        self.protocol = protocol
        # aiosmtpd would look the FQDN up (DNS) for every connection without one.
        self.hostname = hostname or socket.gethostname()
        self.gate = gate
        self._server: asyncio.AbstractServer | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._closing = False
        self._storing = 0
        self._stored = asyncio.Event()
        self._stored.set()

    @property
    def size_limit(self) -> int:
        return max(self._settings(ch).max_message_bytes for ch in self.channels)

    @staticmethod
    def _settings(channel: Channel) -> EmailSettings:
        settings: EmailSettings = channel.settings
        return settings

    def route(self, recipient: str) -> Channel | None:
        """The channel that takes mail for ``recipient``, if any."""
        for channel in self.channels:
            s = self._settings(channel)
            if addresses.recipient_matches(recipient, s.address, s.allowed_recipients):
                return channel
        return None

    # -- server --------------------------------------------------------------------------------
    def _protocol(self) -> SMTP:
        cls = _LMTP if self.protocol == "lmtp" else _SMTP
        server = cls(
            self,
            data_size_limit=self.size_limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=self.hostname,
            ident="extmsg",
        )
        self._sessions.add(server)
        return server

    async def start(self) -> None:
        quiet_aiosmtpd()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port)
        if self.port == 0:
            sockets = self._server.sockets or ()
            self.port = sockets[0].getsockname()[1] if sockets else 0
        log.info(
            "email: %s listener on %s:%d for %d channel(s)",
            self.protocol.upper(),
            self.host,
            self.port,
            len(self.channels),
        )

    def refusing(self) -> bool:
        """Whether new mail is refused (``421``): the server or the listener is stopping."""
        return self._closing or (self.gate is not None and self.gate.stopping)

    @contextlib.contextmanager
    def _storing_one(self) -> Iterator[None]:
        in_flight = self.gate.in_flight() if self.gate is not None else contextlib.nullcontext()
        with in_flight:
            self._storing += 1
            self._stored.clear()
            try:
                yield
            finally:
                self._storing -= 1
                if not self._storing:
                    self._stored.set()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Refuse new mail, let the mail being stored finish (at most ``grace`` seconds),
        then close every connection."""
        self._closing = True
        if self._server is None:
            return
        self._server.close()
        try:
            async with asyncio.timeout(grace):
                await self._stored.wait()
        except TimeoutError:
            log.warning(
                "email: %d mail(s) still being stored; their connections are cut (unanswered,"
                " the sender tries again)",
                self._storing,
            )
        for session in list(self._sessions):
            transport = session.transport
            if transport is not None:
                transport.close()
        await self._server.wait_closed()
        self._server = None

    # -- aiosmtpd handler hooks ----------------------------------------------------------------
    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.refusing():
            return CLOSING
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.refusing():
            return CLOSING
        if self.route(address) is None:
            log.info("email: refused recipient %s", addresses.mask(address))
            return "550 5.1.1 Recipient address rejected: not accepted here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # The check and the count are one step: a mail either counts as in flight before
        # the drain looks, or it is refused.
        if self.refusing():
            return CLOSING
        with self._storing_one():
            return await self._store_all(envelope)

    async def _store_all(self, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape")
        groups = _by_channel(self, envelope.rcpt_tos)
        status: dict[str, str] = {}
        for channel, rcpts in groups:
            status[channel.name] = await self._store(channel, data, rcpts)
        if self.protocol == "lmtp":
            lines = []
            for rcpt in envelope.rcpt_tos:
                routed = self.route(rcpt)
                lines.append(status[routed.name] if routed else TRY_LATER)
            return "\r\n".join(lines)
        answers = set(status.values())
        if answers == {OK}:
            return OK
        for worst in (TRY_LATER, UNREADABLE, TOO_BIG):
            if worst in answers:
                return worst
        return TRY_LATER

    async def _store(self, channel: Channel, data: bytes, rcpts: Sequence[str]) -> str:
        if len(data) > self._settings(channel).max_message_bytes:
            return TOO_BIG
        # One mail, one request id: its log lines here and its jobs' later share it.
        with logcontext.bind(request_id=logcontext.new_request_id(), channel=channel.name):
            return await self._deliver(channel, data, rcpts)

    async def _deliver(self, channel: Channel, data: bytes, rcpts: Sequence[str]) -> str:
        try:
            await self.intake.deliver(channel, data, rcpts)
        except UnreadableMail as exc:
            log.warning("email %s: refused a mail that cannot be parsed: %s", channel.name, exc)
            return UNREADABLE
        except Exception as exc:
            log.warning(
                "email %s: storing a mail failed, answered 451: %s: %s",
                channel.name,
                type(exc).__name__,
                exc,
            )
            return TRY_LATER
        return OK


def _by_channel(listener: Listener, rcpts: Iterable[str]) -> list[tuple[Channel, list[str]]]:
    groups: dict[str, tuple[Channel, list[str]]] = {}
    for rcpt in rcpts:
        channel = listener.route(rcpt)
        if channel is not None:
            groups.setdefault(channel.name, (channel, []))[1].append(rcpt)
    return list(groups.values())


def listeners_for(
    channels: Iterable[Channel], intake: MailIntake, gate: Gate | None = None
) -> list[Listener]:
    """One listener per ``listen_host:listen_port`` among channels with ``smtp`` inbound."""
    by_address: dict[tuple[str, int], list[Channel]] = {}
    for channel in channels:
        s: EmailSettings = channel.settings
        if "smtp" in s.inbound:
            by_address.setdefault((s.listen_host, s.listen_port), []).append(channel)
    out: list[Listener] = []
    for (host, port), group in by_address.items():
        protocols = {g.settings.listen_protocol for g in group}
        if len(protocols) > 1:
            names = ", ".join(g.name for g in group)
            raise ValueError(f"email channels {names} share {host}:{port} but not listen_protocol")
        out.append(Listener(host, port, group, intake, protocol=protocols.pop(), gate=gate))
    return out
