"""A provider's request as plugins see it: the form body decoded as the standard decodes it."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from extmsg.models import InboundRequest

BODIES = [
    b"",
    b"Body=Hello+world%21&From=%2B41791234567&To=%2B15005550006",
    b"a=1&a=2&a=1",  # repeated names and pairs, in order
    b"empty=&novalue&=nameless&&trailing=x&",
    b"plus=a+b%2Bc&pct=100%25&bad=%zz%2&half=%C3",  # malformed escapes kept as sent
    b"utf8=%C3%A9t%C3%A9&raw=\xc3\xa9&invalid=\xff",  # decoded, or replaced when invalid
    b"eq=a=b=c&amp=x%26y",
]


@pytest.mark.parametrize("body", BODIES)
def test_the_form_body_decodes_as_parse_qsl_does(body: bytes) -> None:
    request = InboundRequest(method="POST", url="https://x/p", path="/p", route="r", body=body)
    expected = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    assert request.form() == expected
    # Each call answers a list of its own: a plugin may change it.
    request.form().clear()
    assert request.form() == expected
