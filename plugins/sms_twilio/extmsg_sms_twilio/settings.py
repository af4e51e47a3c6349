"""A Twilio channel's settings (the ``[channels.settings]`` table)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from extmsg.models import Secret

#: Twilio takes ``Body`` values up to this many characters (error 21617 beyond).
TWILIO_MAX_BODY = 1600


class TwilioSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One Twilio sender: credentials, the sending number or service, and limits."""

    account_sid: Annotated[str, msgspec.Meta(pattern=r"^AC[0-9a-fA-F]{32}$")]
    #: The account's primary Auth Token: authenticates API calls and signs webhooks.
    auth_token: Secret
    #: The sending number (E.164); or use ``messaging_service_sid``.
    from_number: str | None = None
    messaging_service_sid: Annotated[str, msgspec.Meta(pattern=r"^MG[0-9a-fA-F]{32}$")] | None = (
        None
    )
    #: Where Twilio's REST API is (a fake's URL in tests and the sandbox).
    api_base_url: str = "https://api.twilio.com"
    #: Most SMS segments one agent message may cost, all its parts together (a cost guard:
    #: a 1600-character GSM-7 text is 11 segments, a 1600-character emoji text about 48).
    max_segments: Annotated[int, msgspec.Meta(ge=1, le=200)] = 20
    #: Ask Twilio for delivery reports on each send (``StatusCallback`` to this channel's
    #: ``status`` route). Off: the Messaging Service's own callback URL applies, if any.
    status_callback: bool = True
    #: Largest inbound MMS file fetched; larger ones fail with a message to the agent.
    max_media_bytes: Annotated[int, msgspec.Meta(ge=1)] = 5 * 1024 * 1024
    #: Seconds one call to Twilio may take, connection included.
    timeout: Annotated[float, msgspec.Meta(gt=0, le=120)] = 15.0
    #: Region (ISO 3166 alpha-2, e.g. ``"CH"``) for numbers an agent types without ``+``.
    default_region: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")] | None = None
    #: Shared key of a Twilio Webhooks Rule, for requests signed with HMAC-SHA256
    #: (``X-Twilio-Webhooks-Signature-Settings``); without a rule Twilio signs with the
    #: auth token.
    webhook_signing_key: Secret | None = None

    def __post_init__(self) -> None:
        if (self.from_number is None) == (self.messaging_service_sid is None):
            raise ValueError("set exactly one of from_number and messaging_service_sid")
        if not self.api_base_url.startswith(("https://", "http://")):
            raise ValueError("api_base_url must be an http(s) URL")

    @property
    def api_root(self) -> str:
        """The REST API base without a trailing slash."""
        return self.api_base_url.rstrip("/")
