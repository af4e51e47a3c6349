"""``X-Twilio-Signature``: how Twilio signs its webhooks, and the check against it.

Twilio signs the full URL it requested (query included, as sent) followed, for form posts, by
every POST parameter sorted by name, name and value concatenated without separators (several
values of one name sorted, a value repeated under one name counted once: Twilio's own
validators sign the set of a name's values). The key is the account's primary auth token, the
MAC HMAC-SHA1 (or HMAC-SHA256 with a Webhooks Rule's shared key), the header its base64. JSON
bodies are covered instead by a ``bodySHA256`` query parameter (hex SHA-256 of the raw body)
and the URL is signed alone. Twilio is inconsistent about default ports, so the URL is tried
with and without one, as Twilio's own validator does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
from collections.abc import Iterable, Iterator, Sequence
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from extmsg.constant_time import equal
from extmsg.errors import SignatureError
from extmsg.models import Channel, InboundRequest

from .settings import TwilioSettings

__all__ = [
    "SETTINGS_HEADER",
    "SIGNATURE_HEADER",
    "body_sha256",
    "compute_signature",
    "signature_algorithm",
    "url_variants",
    "verify_request",
]

SIGNATURE_HEADER = "x-twilio-signature"
SETTINGS_HEADER = "x-twilio-webhooks-signature-settings"
_ALGORITHMS = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}
_DEFAULT_PORTS = {"https": 443, "http": 80}


def compute_signature(
    url: str,
    params: Iterable[tuple[str, str]],
    key: str,
    algorithm: str = "HMAC_SHA1",
) -> str:
    """The signature Twilio sends for ``url`` and form ``params`` (pairs; names may repeat,
    and an exact duplicate pair is signed once)."""
    return _sign(url + _signed_tail(params), key, algorithm)


def _signed_tail(params: Iterable[tuple[str, str]]) -> str:
    """What follows the URL in the signed text: the parameters sorted by name, then value."""
    return "".join(itertools.chain.from_iterable(sorted(set(params))))


def _sign(payload: str, key: str, algorithm: str) -> str:
    digest = hmac.new(key.encode("utf-8"), payload.encode("utf-8"), _ALGORITHMS[algorithm])
    return base64.b64encode(digest.digest()).decode("ascii")


def body_sha256(body: bytes) -> str:
    """The hex SHA-256 Twilio puts in ``bodySHA256`` for a JSON body."""
    return hashlib.sha256(body).hexdigest()


def url_variants(url: str) -> list[str]:
    """``url`` as received, with the scheme's default port added, and without its port."""
    return [url, *_other_variants(url)]


def _other_variants(url: str) -> Iterator[str]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if parts.port is None:
        default = _DEFAULT_PORTS.get(parts.scheme)
        if default is not None:
            yield urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}"))
    else:
        yield urlunsplit(parts._replace(netloc=f"{prefix}{host}"))


def signature_algorithm(request: InboundRequest) -> str:
    """The algorithm named by ``X-Twilio-Webhooks-Signature-Settings`` (HMAC-SHA1 without)."""
    raw = request.header(SETTINGS_HEADER)
    if not raw:
        return "HMAC_SHA1"
    for item in raw.split(","):
        name, _, value = item.strip().partition("=")
        if name.strip().lower() == "algorithm":
            algorithm = value.strip().upper()
            if algorithm not in _ALGORITHMS:
                raise SignatureError(f"unsupported Twilio signature algorithm {value.strip()!r}")
            return algorithm
    return "HMAC_SHA1"


def _signed_params(request: InboundRequest) -> list[tuple[str, str]] | None:
    """The parameters the signature covers; ``None`` when a ``bodySHA256`` covers the body."""
    query = (
        dict(parse_qsl(urlsplit(request.url).query, keep_blank_values=True))
        if "?" in request.url
        else {}
    )
    if "bodySHA256" in query:
        if not equal(body_sha256(request.body), query["bodySHA256"].lower()):
            raise SignatureError("the body does not match the bodySHA256 query parameter")
        return None
    if request.method.upper() != "POST":
        return []  # GET webhooks carry their parameters in the (signed) URL
    return request.form()


def _signing_channel(
    url: str, tail: str, keys: Sequence[tuple[Channel, str]], algorithm: str, signature: str
) -> Channel | None:
    """The channel whose key signed ``url`` followed by ``tail``, if any."""
    for channel, key in keys:
        if equal(_sign(url + tail, key, algorithm), signature):
            return channel
    return None


def verify_request(request: InboundRequest, channels: Sequence[Channel]) -> Channel:
    """The channel whose key signed ``request``.

    :raises SignatureError: the header is missing, or no channel's key produces it.
    """
    signature = (request.header(SIGNATURE_HEADER) or "").strip()
    if not signature:
        raise SignatureError("missing X-Twilio-Signature header")
    algorithm = signature_algorithm(request)
    tail = _signed_tail(_signed_params(request) or ())
    keys: list[tuple[Channel, str]] = []
    for channel in channels:
        settings: TwilioSettings = channel.settings
        key = settings.auth_token if algorithm == "HMAC_SHA1" else settings.webhook_signing_key
        if key:
            keys.append((channel, key))
    # The URL as received first (it is the one Twilio signed, but for a default port): the
    # other spellings only when it does not match.
    found = _signing_channel(request.url, tail, keys, algorithm, signature)
    if found is not None:
        return found
    for url in _other_variants(request.url):
        found = _signing_channel(url, tail, keys, algorithm, signature)
        if found is not None:
            return found
    keyless = not keys
    if keyless and algorithm != "HMAC_SHA1":
        raise SignatureError(
            "the request is signed by a Twilio Webhooks Rule (HMAC-SHA256); set the channel's "
            "webhook_signing_key to the rule's shared key"
        )
    raise SignatureError(
        "X-Twilio-Signature does not match: check the channel's auth token (the primary one) "
        "and that server.public_url is the URL Twilio calls"
    )
