"""Files published for providers that fetch media by URL (Twilio's ``MediaUrl``).

An agent's file is kept in the store and served at
``{public_url}/media/{channel}/{id}?expires=…&signature=…``: the link is signed with the
channel's webhook secret and stops working when it expires (and the file is purged).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from urllib.parse import urlencode

import msgspec
from aiohttp import web

from .constant_time import equal
from .models import Attachment, Channel
from .runtime import RUNTIME, Runtime
from .store.base import MediaRow

__all__ = ["LINK_TTL", "publish", "serve_media"]

#: How long a published link works: long enough for the provider's retries.
LINK_TTL = 24 * 3600.0


def _signature(channel: Channel, media_id: str, expires: int) -> str:
    message = f"{channel.name}/{media_id}/{expires}".encode()
    return hmac.new(channel.webhook_secret.encode(), message, hashlib.sha256).hexdigest()


async def publish(
    runtime: Runtime, channel: Channel, attachment: Attachment, message_id: str | None = None
) -> Attachment:
    """Store the attachment's bytes and return it with a signed, expiring ``url``.

    ``message_id``: the message it is sent with, so erasing its contact removes it too."""
    assert attachment.data is not None
    media_id = uuid.uuid4().hex
    expires = int(time.time() + LINK_TTL)
    await runtime.store.put_media(
        MediaRow(
            id=media_id,
            channel=channel.name,
            file_name=attachment.file_name,
            mime_type=attachment.mime_type,
            data=attachment.data,
            expires_at=float(expires),
            message_id=message_id,
        )
    )
    query = urlencode({"expires": expires, "signature": _signature(channel, media_id, expires)})
    url = f"{channel.public_url.rstrip('/')}/media/{channel.name}/{media_id}?{query}"
    return msgspec.structs.replace(attachment, url=url)


async def serve_media(request: web.Request) -> web.Response:
    """``GET /media/{channel}/{id}``: the file, for a valid unexpired signature only."""
    runtime = request.app[RUNTIME]
    channel = runtime.channels.get(request.match_info["channel"])
    media_id = request.match_info["id"]
    try:
        expires = int(request.query.get("expires", ""))
    except ValueError:
        expires = 0
    given = request.query.get("signature", "")
    if (
        channel is None
        or expires < time.time()
        or not equal(given, _signature(channel, media_id, expires))
    ):
        raise web.HTTPNotFound(text="no such file, or the link has expired")
    row = await runtime.store.get_media(media_id)
    if row is None or row.channel != channel.name:
        raise web.HTTPNotFound(text="no such file, or the link has expired")
    safe = "".join(c for c in row.file_name if c.isprintable() and c not in '"\\')
    return web.Response(
        body=row.data,
        content_type=row.mime_type,
        headers={"Content-Disposition": f'inline; filename="{safe}"'},
    )
