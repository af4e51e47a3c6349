"""An email channel's settings (the ``[channels.settings]`` table)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from extmsg.models import Secret

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class EmailSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    #: The mailbox customers write to and replies come from.
    address: Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+$")]
    display_name: str | None = None
    smtp_host: str
    smtp_port: Port = 587
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_username: str | None = None
    smtp_password: Secret | None = None
    #: How mail comes in: an embedded SMTP/LMTP listener an MTA forwards to, IMAP, or both.
    inbound: list[Literal["smtp", "imap"]] = msgspec.field(default_factory=lambda: ["smtp"])
    listen_host: str = "127.0.0.1"
    listen_port: Port = 2525
    allowed_recipients: list[str] = msgspec.field(default_factory=list)
    max_message_bytes: Annotated[int, msgspec.Meta(gt=0)] = 25 * 1024 * 1024
    imap_host: str | None = None
    imap_port: Port = 993
    imap_username: str | None = None
    imap_password: Secret | None = None
    imap_folder: str = "INBOX"
    imap_processed_folder: str = "extmsg-processed"
    #: ``same``: a new mail from a contact joins their active conversation; ``new``: opens one.
    new_mail_rule: Literal["same", "new"] = "same"
