"""A provider's request as plugins see it: the form body decoded as the standard decodes it."""

from __future__ import annotations

import random
from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extmsg.models import InboundRequest
from extmsg.testing.fuzz import fuzz_settings

BODIES = [
    b"",
    b"Body=Hello+world%21&From=%2B41791234567&To=%2B15005550006",
    b"a=1&a=2&a=1",  # repeated names and pairs, in order
    b"empty=&novalue&=nameless&&trailing=x&",
    b"plus=a+b%2Bc&pct=100%25&bad=%zz%2&half=%C3",  # malformed escapes kept as sent
    b"utf8=%C3%A9t%C3%A9&raw=\xc3\xa9&invalid=\xff",  # decoded, or replaced when invalid
    b"eq=a=b=c&amp=x%26y",
    # Malformed escapes: a lone or short %, non-hex digits, truncated or invalid UTF-8.
    b"a=%&b=%4&c=%zz&d=%E2%82&e=%E2%82%AC&f=%%41&g=%4%41&h=%G1%1G&i=%&=%",
    b"x=%e2%82%ac%ff%C0%AF%ed%a0%80&%41%42=%61%62&%2B=%2b&%3D=%3d&%26=%26",
    # Escapes next to raw non-ASCII: each ASCII run is decoded on its own.
    "m=%C3\u00e9%A9&n=\u20ac%E2%82%AC\u20ac&o=%E2\u20ac%82%AC&p=caf\u00e9+%2B1".encode(),
    b"nul=%00%0a%0D&tab=\t%09&bs=\\%5C\\x41&uni=\\u0041%5Cu0041",
    b"+=+&++=%2B+&%20+%20=+%20+",
]


def _expected(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)


@pytest.mark.parametrize("body", BODIES)
def test_the_form_body_decodes_as_parse_qsl_does(body: bytes) -> None:
    request = InboundRequest(method="POST", url="https://x/p", path="/p", route="r", body=body)
    expected = _expected(body)
    assert request.form() == expected
    # Each call answers a list of its own: a plugin may change it.
    request.form().clear()
    assert request.form() == expected


def _form(body: bytes) -> list[tuple[str, str]]:
    return InboundRequest(method="POST", url="https://x/p", path="/p", route="r", body=body).form()


# What form decoding turns on, and bytes around it that are not ASCII or not UTF-8.
_ALPHABET = "%%%%++&&==0123456789abcdefABCDEFgGzZ \\\u00e9\u20ac\U0001f600"
_RAW = [b"\xc3", b"\xa9", b"\xe2\x82", b"\xff", b"\xed\xa0\x80"]


def test_random_bodies_decode_as_parse_qsl_does() -> None:
    rng = random.Random(20261207)
    for _ in range(3000):
        parts: list[bytes] = []
        for _ in range(rng.randrange(40)):
            if rng.random() < 0.08:
                parts.append(rng.choice(_RAW))
            else:
                parts.append(rng.choice(_ALPHABET).encode())
        body = b"".join(parts)
        assert _form(body) == _expected(body), body


@fuzz_settings(examples=200)
@given(
    body=st.lists(
        st.one_of(st.sampled_from(list(_ALPHABET)).map(str.encode), st.sampled_from(_RAW)),
        max_size=60,
    ).map(b"".join)
    | st.binary(max_size=80)
)
def test_hypothesis_bodies_decode_as_parse_qsl_does(body: bytes) -> None:
    assert _form(body) == _expected(body)
