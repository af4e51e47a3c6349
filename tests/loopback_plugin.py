"""A small messenger used by the core's tests: JSON in, JSON out, HMAC-signed.

It keeps the core's tests independent of the real messenger plugins and exercises the plugin
contract the way a third-party plugin would.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Annotated, Any

import aiohttp
import msgspec

from extmsg import hookimpl
from extmsg.constant_time import equal
from extmsg.errors import BadInbound, PermanentError, RetryableError, SignatureError
from extmsg.models import (
    Channel,
    Contact,
    ContactUpdate,
    InboundEvent,
    InboundMessage,
    InboundRequest,
    MessengerType,
    OutboundMessage,
    Route,
    Secret,
    SendResult,
    StatusUpdate,
)
from extmsg.rendering import prefix_text

NAME = "loopback"


class LoopbackSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    token: Secret
    api_url: str = "http://127.0.0.1:9"
    account: Annotated[str, msgspec.Meta(pattern=r"^acct-[a-z0-9]+$")] = "acct-test"
    mode: str | None = None
    other: str | None = None

    def __post_init__(self) -> None:
        if self.mode is not None and self.other is not None:
            raise ValueError("set at most one of mode and other")


def sign(token: str, body: bytes) -> str:
    return hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


@hookimpl
def extmsg_messenger_types() -> MessengerType:
    return MessengerType(
        name=NAME,
        settings=LoopbackSettings,
        contact_identifier_type="OTHER",
        routes=(Route(name="inbound", path="inbound"),),
        max_text_length=200,
    )


@hookimpl
def extmsg_verify_inbound(
    messenger: str, request: InboundRequest, channels: Sequence[Channel]
) -> bool | None:
    if messenger != NAME:
        return None
    given = request.header("x-loopback-signature") or ""
    for channel in channels:
        if equal(given, sign(channel.settings.token, request.body)):
            return True
    raise SignatureError("x-loopback-signature does not match")


@hookimpl
def extmsg_parse_inbound(
    messenger: str, request: InboundRequest, channels: Sequence[Channel]
) -> list[InboundEvent] | None:
    if messenger != NAME:
        return None
    try:
        data: dict[str, Any] = json.loads(request.body)
    except ValueError as exc:
        raise BadInbound(f"body is not JSON: {exc}") from None
    events: list[InboundEvent] = []
    for item in data.get("messages", []):
        if "id" not in item or "from" not in item:
            raise BadInbound("every message needs 'id' and 'from'")
        events.append(
            InboundMessage(
                provider_message_id=item["id"],
                contact=Contact(address=item["from"], name=item.get("name")),
                text=item.get("text"),
            )
        )
    for item in data.get("statuses", []):
        events.append(
            StatusUpdate(
                state=item["state"],
                provider_message_id=item.get("id"),
                message_ref=item.get("ref"),
                error_text=item.get("error"),
            )
        )
    for item in data.get("optouts", []):
        events.append(ContactUpdate(address=item["from"], opted_out=item.get("out", True)))
    return events


@hookimpl(tryfirst=True)
def extmsg_render_outbound(channel: Channel, message: OutboundMessage) -> Any:
    """The core's prefix, then one send per ``|``-separated piece of the text."""
    if channel.messenger != NAME or not message.text or "|" not in message.text:
        return None
    prefixed = prefix_text(channel, message)
    assert prefixed.text is not None
    return [
        msgspec.structs.replace(prefixed, text=piece, part=i)
        for i, piece in enumerate(prefixed.text.split("|"))
    ]


@hookimpl
def extmsg_send(channel: Channel, message: OutboundMessage) -> Any:
    if channel.messenger != NAME:
        return None
    return _send(channel, message)


async def _send(channel: Channel, message: OutboundMessage) -> SendResult:
    body = {"to": message.contact.address, "text": message.text, "ref": message.id}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{channel.settings.api_url}/send", json=body) as resp,
        ):
            data = await resp.json(content_type=None)
    except aiohttp.ClientError as exc:
        raise RetryableError(f"loopback API unreachable: {exc}") from exc
    if resp.status >= 500:
        raise RetryableError("loopback API failed", status=resp.status)
    if resp.status >= 400:
        raise PermanentError(data.get("error", "rejected"), status=resp.status)
    return SendResult(provider_message_id=data["id"])


@hookimpl
def extmsg_find_sent(channel: Channel, message: OutboundMessage) -> Any:
    if channel.messenger != NAME:
        return None
    return _find_sent(channel, message)


async def _find_sent(channel: Channel, message: OutboundMessage) -> SendResult | bool | None:
    """The provider looks sends up by our ref and the text: found, not found, or cannot tell."""
    body = {"ref": message.id, "text": message.text, "to": message.contact.address}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{channel.settings.api_url}/find", json=body) as resp,
        ):
            data = await resp.json(content_type=None)
    except aiohttp.ClientError as exc:
        raise RetryableError(f"loopback API unreachable: {exc}") from exc
    if resp.status == 404:
        return False
    if resp.status >= 500:
        raise RetryableError("loopback lookup failed", status=resp.status)
    if resp.status >= 400:
        raise PermanentError(data.get("error", "lookup refused"), status=resp.status)
    return None if data["id"] is None else SendResult(provider_message_id=data["id"])


@hookimpl
def extmsg_mark_read(channel: Channel, provider_message_id: str) -> Any:
    if channel.messenger != NAME:
        return None
    return _mark_read(channel, provider_message_id)


async def _mark_read(channel: Channel, provider_message_id: str) -> bool:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{channel.settings.api_url}/read", json={"id": provider_message_id}) as resp,
    ):
        if resp.status >= 400:
            raise RetryableError("loopback API refused the read receipt", status=resp.status)
    return True
