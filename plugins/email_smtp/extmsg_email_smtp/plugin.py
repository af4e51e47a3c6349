"""The extmsg hook implementations for email."""

from __future__ import annotations

from extmsg import hookimpl
from extmsg.models import MessengerType

from .settings import EmailSettings

NAME = "email_smtp"


@hookimpl
def extmsg_messenger_types() -> MessengerType:
    return MessengerType(
        name=NAME,
        settings=EmailSettings,
        description="Email: SMTP out, an SMTP listener or IMAP in",
        contact_identifier_type="EMAIL",
        contact_identifier_name="email",
    )
