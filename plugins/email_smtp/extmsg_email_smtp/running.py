"""What the email messenger runs while the server does: listeners, pollers, thread memory."""

from __future__ import annotations

from collections.abc import Sequence

from extmsg.models import Channel

from .imap_in import ImapPoller
from .inbound import Acceptor, MailIntake
from .settings import EmailSettings
from .smtp_in import Gate, Listener, listeners_for
from .threads import ThreadBook, ThreadStore

__all__ = ["EmailState"]


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
        *,
        receive: bool = True,
        gate: Gate | None = None,
    ) -> None:
        """Start receiving for ``channels``; a listener that cannot bind stops the start.
        Without ``receive`` (a worker other than the first of ``serve --workers N``: one
        process binds the SMTP ports and polls the mailboxes) only sending is set up.
        ``gate`` (the messenger's context) tells the listeners when the server begins to stop
        and lets its drain wait for the mail they are storing."""
        self.memory = memory
        self.intake = MailIntake(acceptor, self.book, memory)
        if not receive:
            return
        try:
            for listener in listeners_for(channels, self.intake, gate):
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
