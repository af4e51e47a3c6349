"""An email channel's settings (the ``[channels.settings]`` table)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from extmsg.models import Secret

__all__ = ["EmailSettings"]

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Security = Literal["starttls", "tls", "none"]


class EmailSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One mailbox: how mail leaves (SMTP) and how it comes in (a listener, IMAP or both)."""

    #: The mailbox customers write to and replies come from; its domain names our Message-IDs.
    address: Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+$")]
    #: The company name in the From header: ``"Anna via Acme Support" <support@acme.example>``.
    display_name: str | None = None
    #: Subject of a reply when the thread's subject is not known (``{display_name}`` is filled).
    default_subject: str = "Your conversation with {display_name}"
    #: ``new``: the subject of a mail that starts a thread goes in front of its text.
    subject_in_text: Literal["new", "always", "never"] = "new"

    # -- outbound (SMTP submission) --------------------------------------------------------------
    smtp_host: str
    smtp_port: Port = 587
    smtp_security: Security = "starttls"
    #: Check the server's certificate; off only for a relay with a self-signed certificate.
    smtp_verify_tls: bool = True
    smtp_username: str | None = None
    smtp_password: Secret | None = None
    smtp_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    #: Reply-To ``local+t<token>@domain`` keeps a thread even when a client drops References;
    #: switch off when the mail server does not deliver plus-addressed mail to the mailbox.
    plus_addressing: bool = True

    # -- inbound -------------------------------------------------------------------------------
    #: How mail comes in: an embedded SMTP/LMTP listener an MTA forwards to, IMAP, or both.
    inbound: list[Literal["smtp", "imap"]] = msgspec.field(default_factory=lambda: ["smtp"])
    listen_host: str = "127.0.0.1"
    listen_port: Port = 2525
    #: ``lmtp`` for Postfix's ``lmtp:`` transport (one answer per recipient).
    listen_protocol: Literal["smtp", "lmtp"] = "smtp"
    #: Further recipients this channel takes at the listener besides ``address`` (and its
    #: ``+detail`` forms): exact addresses, or ``@domain`` for a whole domain.
    allowed_recipients: list[str] = msgspec.field(default_factory=list)
    max_message_bytes: Annotated[int, msgspec.Meta(gt=0)] = 25 * 1024 * 1024
    #: Inline images referenced from the HTML and smaller than this are taken for signature
    #: logos and not passed on; larger ones (pasted photos, screenshots) are.
    min_inline_image_bytes: Annotated[int, msgspec.Meta(ge=0)] = 16 * 1024
    #: Languages of the "On … wrote:" lines that start quoted history (mail-parser-reply codes).
    quote_languages: list[str] = msgspec.field(
        default_factory=lambda: ["en", "de", "fr", "es", "it", "nl"]
    )

    imap_host: str | None = None
    imap_port: Port = 993
    imap_security: Security = "tls"
    imap_verify_tls: bool = True
    imap_username: str | None = None
    imap_password: Secret | None = None
    imap_folder: str = "INBOX"
    #: Mail moves here once it is stored, so nothing is read twice; created when missing.
    imap_processed_folder: str = "extmsg-processed"
    #: ``unseen``: leave mail a person already opened in the folder alone.
    imap_fetch: Literal["unseen", "all"] = "unseen"
    imap_poll_seconds: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    imap_timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0

    #: ``same``: a new mail from a contact joins their active conversation; ``new``: opens one.
    new_mail_rule: Literal["same", "new"] = "same"

    def __post_init__(self) -> None:
        if "imap" in self.inbound and not (
            self.imap_host and self.imap_username and self.imap_password
        ):
            raise ValueError("inbound 'imap' needs imap_host, imap_username and imap_password")
        if self.smtp_username and not self.smtp_password:
            raise ValueError("smtp_username is set but smtp_password is missing")

    @property
    def domain(self) -> str:
        return self.address.rsplit("@", 1)[1].lower()

    @property
    def local_part(self) -> str:
        return self.address.rsplit("@", 1)[0]

    @property
    def company(self) -> str:
        return self.display_name or self.domain
