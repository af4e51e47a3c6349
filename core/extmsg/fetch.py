"""Fetching a URL that came from outside: a provider's webhook or API answer named it.

A forged or replayed webhook can name any URL, so every such fetch goes through :func:`fetch`,
which keeps these rules:

* **Credentials only where they belong.** The ``credentials`` headers go only to a URL whose
  origin (scheme, host and port, exactly) is one of ``credential_origins``: the provider's API
  as configured (e.g. Twilio's ``api_base_url``), never "any host ending in the provider's
  domain", never the same host over another scheme or port.
* **Redirects are followed here**, not by aiohttp, at most ``max_redirects`` hops (3 unless
  told). A hop to another origin drops the credentials for the rest of the chain, even if a
  later hop comes back. This is how Twilio media works: the authenticated GET on the API host
  answers with a redirect to a pre-signed storage URL, which must be fetched without them.
* **Public addresses only.** Every address a host resolves to must be public: private,
  loopback, link-local, multicast, unspecified, shared (CGNAT) and reserved ranges are refused,
  unless they fall in ``allowed_networks`` (the ``[server] fetch_allowed_networks`` setting,
  which the sandbox sets to loopback) or the host and port are those of an origin the operator
  configured (``trusted_origins``, which include ``credential_origins``: an API base URL may be
  an egress proxy on the internal network). The check runs inside the connector's resolver, so
  the connection goes to the very address that was checked and DNS rebinding cannot swap it.
* **Bounded.** The body is streamed and the download stopped once it passes ``max_bytes``; all
  hops together get ``time_limit`` seconds.
* **Classified errors.** A refused URL raises :class:`~extmsg.errors.FetchRefused` and an
  oversized body :class:`~extmsg.errors.FetchTooLarge` (both permanent); a timeout or a network
  failure raises :class:`~extmsg.errors.RetryableError`. Messages show the URL without userinfo
  and query (pre-signed URLs carry their signature there). HTTP error statuses are returned, not
  raised: what a 403 means is the provider's to say.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from .errors import FetchRefused, FetchTooLarge, RetryableError

__all__ = [
    "LOOPBACK",
    "MAX_REDIRECTS",
    "Fetched",
    "Origin",
    "address_refusal",
    "fetch",
    "mask_url",
    "origin_of",
    "parse_networks",
]

log = logging.getLogger("extmsg.fetch")

#: ``(scheme, host, port)``, lower-cased, the port filled in from the scheme when not given.
Origin = tuple[str, str, int]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: What the sandbox and the tests allow: the provider fakes listen on loopback.
LOOPBACK: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
MAX_REDIRECTS = 3

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_ERROR_BODY = 64 * 1024
_CHUNK = 64 * 1024
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]+|[0-9.]+)$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Fetched:
    """The final answer of a fetch.

    :ivar status: its HTTP status; a non-2xx answer is returned too, with at most 64 KiB of body.
    :ivar url: where it came from, after redirects.
    :ivar content_type: the ``Content-Type`` without parameters, ``""`` when absent.
    :ivar reason: the status line's reason phrase.
    """

    status: int
    reason: str
    data: bytes
    url: yarl.URL
    content_type: str
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def origin_of(url: str | yarl.URL) -> Origin:
    u = url if isinstance(url, yarl.URL) else yarl.URL(url)
    return ((u.scheme or "").lower(), (u.raw_host or "").lower(), u.port or 0)


def mask_url(url: str | yarl.URL) -> str:
    """``url`` fit for a message: no userinfo, query or fragment; a long path shortened."""
    try:
        u = url if isinstance(url, yarl.URL) else yarl.URL(url)
        if not u.absolute:
            return f"a {u.scheme}: URL" if u.scheme else "a relative URL"
        shown = u.with_user(None).with_query(None).with_fragment(None)
    except (ValueError, TypeError):
        return "<unparsable URL>"
    text = str(shown)
    if len(text) > 120:
        text = text[:117] + "..."
    return text + ("?…" if u.raw_query_string else "")


@functools.lru_cache(maxsize=64)
def parse_networks(networks: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """``"10.0.0.0/8"`` or a single address per item.

    :raises ValueError: naming the item that is not a network.
    """
    parsed: list[IPNetwork] = []
    for item in networks:
        try:
            parsed.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"{item!r} is not an IP network (e.g. '10.20.0.0/16' or '192.0.2.7')"
            ) from None
    return tuple(parsed)


def address_refusal(address: IPAddress, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why ``address`` may not be fetched from (``None``: it may)."""
    candidates = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)  # ::ffff:127.0.0.1 reaches 127.0.0.1
    allowed = tuple(allowed)
    if any(ip.version == net.version and ip in net for ip in candidates for net in allowed):
        return None
    ip = candidates[-1]
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "not a public address"
    return None


class _Refused(Exception):
    """Raised inside the resolver; not an OSError, so aiohttp lets it through unwrapped."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"{host} resolves to {address}, {reason}")
        self.host = host
        self.address = address
        self.reason = reason


class _GuardedResolver(AbstractResolver):
    """Resolves as usual, then refuses the host if any of its addresses is not allowed."""

    def __init__(self, allowed: tuple[IPNetwork, ...], trusted: frozenset[tuple[str, int]]):
        self._inner = DefaultResolver()
        self._allowed = allowed
        self._trusted = trusted

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        infos = await self._inner.resolve(host, port, family)
        if (host.rstrip(".").lower(), port) in self._trusted:
            return infos
        for info in infos:
            address = ipaddress.ip_address(info["host"].split("%", 1)[0])
            reason = address_refusal(address, self._allowed)
            if reason is not None:
                raise _Refused(host, str(address), reason)
        return infos

    async def close(self) -> None:
        await self._inner.close()


def _check_url(
    url: yarl.URL,
    shown: str,
    allowed: tuple[IPNetwork, ...],
    trusted: frozenset[tuple[str, int]],
) -> None:
    """What can be refused before connecting: scheme, host form, a literal address."""
    if url.scheme not in ("http", "https"):
        raise FetchRefused(f"Refused to fetch {shown}: only http and https URLs are fetched.")
    host = (url.raw_host or "").rstrip(".").lower()
    if not host:
        raise FetchRefused(f"Refused to fetch {shown}: the URL has no host.")
    if (host, url.port or 0) in trusted:
        return
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if _NUMERIC_HOST.match(host):
            raise FetchRefused(
                f"Refused to fetch {shown}: {host} is not a canonical IP address."
            ) from None
        return  # a name: checked by the resolver, on the addresses actually connected to
    reason = address_refusal(address, allowed)
    if reason is not None:
        raise FetchRefused(_refused_address(shown, host, reason))


def _refused_address(shown: str, host: str, reason: str, address: str | None = None) -> str:
    what = f"{host} resolves to {address}, {reason}" if address else f"{host} is {reason}"
    return (
        f"Refused to fetch {shown}: {what}. Files are only fetched from public "
        "addresses; an operator can allow a network with [server] fetch_allowed_networks."
    )


async def fetch(
    url: str,
    *,
    max_bytes: int,
    time_limit: float,
    credentials: Mapping[str, str] | None = None,
    credential_origins: Iterable[str] = (),
    trusted_origins: Iterable[str] = (),
    allowed_networks: Iterable[str] = (),
    headers: Mapping[str, str] | None = None,
    max_redirects: int = MAX_REDIRECTS,
) -> Fetched:
    """GET ``url`` under the rules in this module's docstring.

    :param credentials: headers (``Authorization``…) sent only to ``credential_origins``.
    :param credential_origins: base URLs (only their origin counts) that get the credentials.
    :param trusted_origins: further configured base URLs exempt from the address check.
    :param allowed_networks: networks exempt from the address check (``"10.0.0.0/8"``).
    :param headers: headers sent everywhere (``User-Agent``, ``Accept``).
    :raises FetchRefused: the URL or a redirect breaks a rule (permanent).
    :raises FetchTooLarge: the body is larger than ``max_bytes`` (permanent).
    :raises RetryableError: timeout or network failure.
    """
    allowed = parse_networks(tuple(allowed_networks))
    with_credentials = {origin_of(o) for o in credential_origins}
    trusted = frozenset(
        (host.rstrip("."), port)
        for _, host, port in with_credentials | {origin_of(o) for o in trusted_origins}
    )
    shown = mask_url(url)
    try:
        current = yarl.URL(url)
    except (ValueError, TypeError):
        raise FetchRefused(f"Refused to fetch {shown}: not a valid URL.") from None
    if current.scheme not in ("http", "https"):
        raise FetchRefused(f"Refused to fetch {shown}: only http and https URLs are fetched.")
    if not current.absolute:
        raise FetchRefused(f"Refused to fetch {shown}: not an absolute URL.")
    connector = aiohttp.TCPConnector(
        resolver=_GuardedResolver(allowed, trusted), use_dns_cache=False, force_close=True
    )
    session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=True)
    credentialed = True
    try:
        async with asyncio.timeout(time_limit), session:
            for hop in range(max_redirects + 1):
                shown = mask_url(current)
                _check_url(current, shown, allowed, trusted)
                # Once a hop left the credentials' origin they stay off (see module docstring).
                credentialed = credentialed and origin_of(current) in with_credentials
                sent = dict(headers or {})
                if credentialed and credentials:
                    sent.update(credentials)
                async with session.get(
                    current.with_user(None), headers=sent, allow_redirects=False
                ) as resp:
                    location = resp.headers.get("Location")
                    if resp.status in _REDIRECTS and location:
                        try:
                            target = current.join(yarl.URL(location))
                        except (ValueError, TypeError):
                            raise FetchRefused(
                                f"Refused to follow a redirect from {shown}: its Location is "
                                "not a valid URL."
                            ) from None
                        if hop == max_redirects:
                            raise FetchRefused(
                                f"Refused to follow more than {max_redirects} redirect(s) "
                                f"fetching {mask_url(url)}; the last one led to "
                                f"{mask_url(target)}."
                            )
                        current = target
                        continue
                    return await _read(resp, current, shown, max_bytes)
            raise AssertionError("unreachable")  # pragma: no cover
    except _Refused as exc:
        raise FetchRefused(_refused_address(shown, exc.host, exc.reason, exc.address)) from None
    except TimeoutError:
        raise RetryableError(
            f"Fetching {shown} took longer than {time_limit:g} s; it will be retried."
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        # Not chained: some aiohttp errors quote the whole URL, query (a signature) included.
        raise RetryableError(
            f"Could not fetch {shown} ({_describe(exc)}); it will be retried."
        ) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.strerror:
        return f"{type(exc).__name__}: {exc.os_error.strerror}"
    return type(exc).__name__


async def _read(resp: aiohttp.ClientResponse, url: yarl.URL, shown: str, max_bytes: int) -> Fetched:
    ok = 200 <= resp.status < 300
    limit = max_bytes if ok else min(max_bytes, _ERROR_BODY)
    if ok and resp.content_length is not None and resp.content_length > limit:
        raise FetchTooLarge(
            f"{shown} is {resp.content_length} bytes, more than the {limit} allowed.",
            limit=limit,
            size=resp.content_length,
            status=resp.status,
        )
    data = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK):
        data += chunk
        if len(data) > limit:
            if not ok:
                del data[limit:]
                break
            raise FetchTooLarge(
                f"{shown} is more than the {limit} bytes allowed; the download was stopped.",
                limit=limit,
                size=len(data),
                status=resp.status,
            )
    content_type = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    return Fetched(resp.status, resp.reason or "", bytes(data), url, content_type, resp.headers)
