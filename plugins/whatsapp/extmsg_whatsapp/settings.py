"""A WhatsApp channel's settings (the ``[channels.settings]`` table).

One channel is one WhatsApp business phone number. Numbers of the same Meta app share the app
secret and the verify token (Meta calls one webhook URL per app); numbers of different apps
may share the webhook route too, each event is matched to the app that signed it.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from extmsg.models import Secret

__all__ = ["WhatsAppSettings"]

GraphVersion = Annotated[str, msgspec.Meta(pattern=r"^v\d+\.\d+$")]
PhoneNumberId = Annotated[str, msgspec.Meta(pattern=r"^\d{5,32}$")]


class WhatsAppSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    #: The business number's id in the Graph API (not the phone number itself).
    phone_number_id: PhoneNumberId
    #: A system-user access token with ``whatsapp_business_messaging``.
    access_token: Secret
    #: The Meta app's secret: it signs the webhooks (``X-Hub-Signature-256``).
    app_secret: Secret
    #: The token typed into the app dashboard for the webhook's GET handshake.
    verify_token: Secret
    graph_version: GraphVersion = "v25.0"
    #: Where the Graph API is (a fake's URL in tests and the sandbox).
    api_base_url: str = "https://graph.facebook.com"
    #: Template sent when the 24-hour window is closed; without one such messages fail.
    template_name: str | None = None
    template_language: str = "en"
    #: Whether the template's body has one text parameter (``{{1}}``) for the agent's text.
    template_text_parameter: bool = True
    #: Where Graph's media download links may point. The access token goes with a download only
    #: to these exact origins (scheme, host, port) and the API's; a link elsewhere is refused.
    media_base_urls: list[str] = msgspec.field(
        default_factory=lambda: ["https://lookaside.fbsbx.com"]
    )
    #: Largest inbound file fetched from WhatsApp; bigger ones fail with a readable reason.
    media_max_bytes: Annotated[int, msgspec.Meta(gt=0)] = 25 * 1024 * 1024
    #: Turn agents' reading into blue ticks for the contact.
    send_read_receipts: bool = True
    #: Seconds one Graph API call may take.
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0

    def __post_init__(self) -> None:
        for url in (self.api_base_url, *self.media_base_urls):
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"{url!r} is not an http(s) URL")

    @property
    def graph_url(self) -> str:
        """The versioned Graph API root, e.g. ``https://graph.facebook.com/v25.0``."""
        return f"{self.api_base_url.rstrip('/')}/{self.graph_version}"
