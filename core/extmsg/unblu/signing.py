"""HMAC signatures on Unblu's calls to a channel endpoint and on our answers.

Unblu signs the raw request body with the channel's ``webhookSecret``: ``x-unblu-signature`` is
the lowercase hex HMAC-SHA1, ``x-unblu-signature-256`` the lowercase hex HMAC-SHA256. At least
one must be present and every one present must match. Answers to outbound requests are signed
with ``x-unblu-signature-256`` over the exact response bytes, as Unblu's own middleware library
does.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from ..constant_time import equal

__all__ = [
    "SIGNATURE_256_HEADER",
    "SIGNATURE_HEADER",
    "sign_headers",
    "signature_256",
    "verify",
]

SIGNATURE_HEADER = "x-unblu-signature"
SIGNATURE_256_HEADER = "x-unblu-signature-256"


def signature_sha1(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def signature_256(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def sign_headers(secret: str, body: bytes) -> dict[str, str]:
    """Both signature headers for ``body``, as Unblu sends them."""
    return {
        SIGNATURE_HEADER: signature_sha1(secret, body),
        SIGNATURE_256_HEADER: signature_256(secret, body),
    }


def verify(secret: str, body: bytes, headers: Mapping[str, str]) -> str | None:
    """Check the signature headers of a call; return ``None`` when valid, else the reason."""
    checks = (
        (SIGNATURE_HEADER, signature_sha1),
        (SIGNATURE_256_HEADER, signature_256),
    )
    present = False
    for name, compute in checks:
        given = headers.get(name)
        if given is None:
            continue
        present = True
        if not equal(given.strip().lower(), compute(secret, body)):
            return f"{name} does not match the body"
    if not present:
        return f"missing {SIGNATURE_HEADER} / {SIGNATURE_256_HEADER} header"
    return None
