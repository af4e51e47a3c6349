"""The extmsg hook implementations for email.

Mail does not arrive through an HTTP route: the SMTP/LMTP listeners and IMAP pollers started
in :func:`extmsg_startup` hand each mail to the core's ``runtime.accept`` and acknowledge it
only after that returned. Every hook declines (``None``) for channels of other messengers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

from extmsg import hookimpl
from extmsg.models import (
    Channel,
    ContactCheck,
    MessengerType,
    OutboundMessage,
    ProviderFake,
    SendResult,
)

from . import addresses, outbound
from .fake import create_email_fake, fake_channel_settings
from .imap_in import ImapPoller
from .inbound import Acceptor, MailIntake
from .settings import EmailSettings
from .smtp_in import Listener, listeners_for
from .threads import ThreadBook, ThreadStore

if TYPE_CHECKING:
    from aiohttp import web

    from extmsg.config import Config

__all__ = ["NAME", "EmailState", "state"]

NAME = "email_smtp"

log = logging.getLogger("extmsg.email")


class EmailState:
    """What the plugin runs: listeners, pollers, and the per-channel thread memory."""

    def __init__(self) -> None:
        self.listeners: list[Listener] = []
        self.pollers: list[ImapPoller] = []
        self.books: dict[str, ThreadBook] = {}
        self.intake: MailIntake | None = None
        self.memory: ThreadStore | None = None

    def book(self, channel: str) -> ThreadBook:
        book = self.books.get(channel)
        if book is None:
            book = self.books[channel] = ThreadBook()
        return book

    async def start(
        self,
        acceptor: Acceptor,
        channels: Sequence[Channel],
        memory: ThreadStore | None = None,
    ) -> None:
        """Start receiving for ``channels``; a listener that cannot bind stops the start."""
        self.memory = memory
        self.intake = MailIntake(acceptor, self.book, memory)
        try:
            for listener in listeners_for(channels, self.intake):
                await listener.start()
                self.listeners.append(listener)
            for channel in channels:
                settings: EmailSettings = channel.settings
                if "imap" in settings.inbound:
                    poller = ImapPoller(channel, self.intake)
                    poller.start()
                    self.pollers.append(poller)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        pollers, self.pollers = self.pollers, []
        listeners, self.listeners = self.listeners, []
        for poller in pollers:
            await poller.stop()
        for listener in listeners:
            await listener.stop()


state = EmailState()


def _ours(channel: Channel) -> bool:
    return channel.messenger == NAME


@hookimpl
def extmsg_messenger_types() -> MessengerType:
    return MessengerType(
        name=NAME,
        settings=EmailSettings,
        description="Email: SMTP out, an SMTP/LMTP listener or IMAP in",
        contact_identifier_type="EMAIL",
        contact_identifier_name="email",
    )


@hookimpl
def extmsg_provider_fakes() -> list[ProviderFake]:
    return [
        ProviderFake(
            messenger=NAME,
            name="smtp-sink",
            factory=create_email_fake,
            channel_settings=fake_channel_settings,
            description="An SMTP server that records sent mail; POST /fake/inbound writes in",
        )
    ]


@hookimpl
async def extmsg_startup(app: web.Application, config: Config) -> None:
    from extmsg.runtime import RUNTIME

    runtime = app[RUNTIME]
    channels = runtime.channels_of(NAME)
    if channels:
        await state.start(runtime, channels, runtime.store)


@hookimpl
async def extmsg_shutdown(app: web.Application, config: Config) -> None:
    await state.stop()


@hookimpl
def extmsg_validate_contact(channel: Channel, identifier: str) -> ContactCheck | None:
    if not _ours(channel):
        return None
    name, address = addresses.parse_mailbox(identifier)
    if not address or not addresses.is_valid(address):
        return ContactCheck(
            valid=False, error=f"{identifier.strip()!r} is not a valid email address"
        )
    return ContactCheck(valid=True, address=address, name=name or None)


@hookimpl(tryfirst=True)
def extmsg_render_outbound(
    channel: Channel, message: OutboundMessage
) -> list[OutboundMessage] | None:
    if not _ours(channel):
        return None
    return outbound.render(channel, message)


@hookimpl
def extmsg_send(channel: Channel, message: OutboundMessage) -> Awaitable[SendResult] | None:
    if not _ours(channel):
        return None
    return outbound.send(channel, message, state.book(channel.name), state.memory)


@hookimpl
def extmsg_mark_read(channel: Channel, provider_message_id: str) -> bool | None:
    if not _ours(channel):
        return None
    return False
