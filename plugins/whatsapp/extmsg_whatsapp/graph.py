"""The HTTP side of the Graph API: one session for all channels, errors turned into verdicts.

Every call carries the channel's bearer token and its own timeout. Answers that are not 2xx
become :class:`~extmsg.errors.RetryableError` / :class:`~extmsg.errors.PermanentError` through
:mod:`extmsg_whatsapp.errors`; transport failures become retryable.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from extmsg import logcontext, sendguard
from extmsg.errors import DeliveryError, FetchTooLarge, PermanentError, RetryableError
from extmsg.fetch import fetch

from . import errors
from .media import too_large_inbound
from .settings import WhatsAppSettings

__all__ = ["Graph"]

log = logging.getLogger("extmsg.whatsapp")

USER_AGENT = "extmsg-whatsapp"


def _auth(settings: WhatsAppSettings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.access_token}"}


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


class Graph:
    """A lazily opened ``aiohttp.ClientSession`` bound to the running event loop."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        self.session()

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
        self._loop = None

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # A send that would go out long after its job's hold is refused.
            self._session = sendguard.client_session(
                headers={"User-Agent": USER_AGENT},
                raise_for_status=False,
            )
            self._loop = loop
        return self._session

    async def call(
        self,
        settings: WhatsAppSettings,
        method: str,
        url: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        form: aiohttp.FormData | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Mapping[str, Any]:
        """One Graph API request; its JSON object answer, or a DeliveryError."""
        timeout = aiohttp.ClientTimeout(total=settings.timeout)
        try:
            async with self.session().request(
                method,
                url,
                json=json_body,
                data=form,
                params=params,
                headers={**_auth(settings), **logcontext.outgoing_headers()},
                timeout=timeout,
            ) as resp:
                raw = await resp.read()
                payload = _json(raw)
                if not 200 <= resp.status < 300:
                    error = errors.from_response(
                        resp.status, payload, retry_after=_retry_after(resp.headers)
                    )
                    log.warning(
                        "whatsapp: %s %s answered HTTP %s (code %s)",
                        method,
                        _path(url),
                        resp.status,
                        error.code,
                    )
                    raise error
        except DeliveryError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("whatsapp: %s %s failed: %s", method, _path(url), type(exc).__name__)
            raise errors.network_error(exc) from exc
        if not isinstance(payload, Mapping):
            raise PermanentError(
                "WhatsApp answered with something that is not JSON; the outcome is unknown.",
                status=resp.status,
            )
        return payload

    async def download(
        self, settings: WhatsAppSettings, url: str, limit: int, allowed_networks: tuple[str, ...]
    ) -> bytes:
        """GET a media URL Graph handed out, refusing more than ``limit`` bytes.

        Through :func:`extmsg.fetch.fetch`: the bearer token goes only to the exact origins of
        ``api_base_url`` and ``media_base_urls``, and is dropped on a redirect elsewhere.
        """
        try:
            fetched = await fetch(
                url,
                max_bytes=limit,
                time_limit=max(settings.timeout, 120.0),
                credentials=_auth(settings),
                credential_origins=[settings.api_base_url, *settings.media_base_urls],
                allowed_networks=allowed_networks,
                headers={"User-Agent": USER_AGENT},
            )
        except FetchTooLarge as exc:
            raise too_large_inbound(exc.size, limit) from None
        except RetryableError as exc:
            log.warning("whatsapp: media download failed: %s", exc)
            raise
        if fetched.status in (401, 403, 404, 410):
            # the download link lives five minutes: ask for a new one on the next try
            raise RetryableError(
                "WhatsApp's download link for the file expired; it will be fetched again.",
                status=fetched.status,
            )
        if not fetched.ok:
            raise errors.from_response(
                fetched.status, _json(fetched.data), retry_after=_retry_after(fetched.headers)
            )
        return fetched.data


def _path(url: str) -> str:
    """The URL without host and query, for logs."""
    return "/" + url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
