"""Hypothesis strategies for realistic-but-hostile provider payloads.

Start from a payload a provider really sends (a recorded JSON body, form parameters, a mail)
and mutate it: fields replaced by huge strings (up to about a megabyte), deeply nested values,
wrong types, repeated keys, control characters, lone surrogates, bytes that are not UTF-8,
missing fields. The encoders write what Python's own serialisers refuse to (a repeated key, a
lone surrogate as raw bytes, nesting deeper than any recursive encoder goes), so a payload can
be exactly as broken as an attacker makes it.

Needs ``hypothesis`` (a test dependency of extmsg).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote_from_bytes

from hypothesis import strategies as st

__all__ = [
    "CLASSICS",
    "MB",
    "Pairs",
    "Raw",
    "classic_form_variants",
    "classic_variants",
    "deep_nesting",
    "encode_form",
    "encode_json",
    "hostile_bytes",
    "hostile_header_value",
    "hostile_headers",
    "hostile_text",
    "hostile_value",
    "junk_body",
    "mutated_form",
    "mutated_json",
    "query_value",
]

MB = 1024 * 1024

#: Pieces that stress text routines: digits that look like phone numbers (masking), mail
#: addresses, markup, escapes, right-to-left overrides, NUL and other controls, astral and
#: combining characters, a lone surrogate.
_PIECES = (
    "a",
    "+4179",
    "1 ",
    "0",
    "a@b.ch ",
    "é",
    "ß",
    "\u0301",
    "\u202e",
    "\u200b",
    "\ufeff",
    "😀",
    "\x00",
    "\x1b[2J",
    "\r\n",
    "\n",
    "\t",
    "<b>",
    "&amp;",
    "%",
    "\\",
    '"',
    "{",
    "[",
    "\ud800",
    "\udfff",
    "STOP",
    " ",
)


class Raw:
    """Bytes written into an encoded payload as they are (invalid JSON, deep nesting, …)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        shown = self.data if len(self.data) <= 80 else self.data[:60] + b"..." + self.data[-10:]
        return f"Raw({shown!r}, {len(self.data)} bytes)"


class Pairs(list[list[Any]]):
    """A JSON object as ``[key, value]`` pairs: keys may repeat, order is kept."""

    def __repr__(self) -> str:
        return f"Pairs({list.__repr__(self)})"


def hostile_text(max_size: int = MB) -> st.SearchStrategy[str]:
    """Text a person, a broken client or an attacker might send."""
    huge = st.sampled_from(_PIECES).flatmap(
        lambda piece: st.integers(1, max(1, max_size // len(piece))).map(piece.__mul__)
    )
    mixed = st.lists(st.sampled_from(_PIECES), max_size=40).map("".join)
    surrogates = st.text(
        alphabet=st.characters(categories=["Cs", "Cc", "Zs", "Lo", "Nd"]), max_size=30
    )
    return st.one_of(
        st.text(max_size=40),
        mixed,
        surrogates,
        huge,
        st.builds(lambda a, b: a + b, huge, mixed),
    )


def deep_nesting(max_depth: int = 200_000) -> st.SearchStrategy[Raw]:
    """JSON nested ``depth`` levels deep: arrays, objects, or both in turn."""

    def build(kind: str, depth: int, closed: bool) -> Raw:
        if kind == "[":
            opening, inner, closing = b"[" * depth, b"1", b"]" * depth
        elif kind == "{":
            opening, inner, closing = b'{"a":' * depth, b"null", b"}" * depth
        else:
            opening, inner, closing = b'[{"a":' * depth, b"0", b"}]" * depth
        return Raw(opening + inner + (closing if closed else b""))

    depth = st.one_of(
        st.sampled_from([d for d in (2, 100, 1_000, 10_000, 100_000) if d <= max_depth]),
        st.integers(1, max_depth),
    )
    return st.builds(build, st.sampled_from("[{m"), depth, st.booleans())


def hostile_bytes(max_size: int = 4096) -> st.SearchStrategy[bytes]:
    """Bytes that are not (all) UTF-8: Latin-1, CESU surrogates, overlongs, stray bytes."""
    samples = (
        b"\xff\xfe",
        b"\xc3\x28",
        b"\xed\xa0\x80",
        b"\xc0\xaf",
        b"\xe9t\xe9",
        b"\x80",
        b"\xf4\x90\x80\x80",
    )
    return st.one_of(
        st.sampled_from(samples),
        st.binary(max_size=64),
        st.builds(_repeat_bytes, st.sampled_from(samples), st.integers(1, max_size)),
    )


def _repeat_bytes(piece: bytes, times: int) -> bytes:
    return piece * times


def _json_scalar() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([2**63, -(2**63) - 1, 10**400, 0]),
        st.floats(allow_nan=True, allow_infinity=True),
        hostile_text(),
    )


def hostile_value(*, deep: bool = True, broken: bool = True) -> st.SearchStrategy[Any]:
    """What replaces a field: wrong types, huge or broken strings, deep nesting, junk bytes."""
    small = st.recursive(
        _json_scalar(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.lists(st.tuples(st.text(max_size=8), inner), max_size=4).map(
                lambda kv: Pairs([list(p) for p in kv])
            ),
        ),
        max_leaves=8,
    )
    options: list[st.SearchStrategy[Any]] = [small]
    if deep:
        options.append(deep_nesting())
    if broken:
        options += [_broken_string(), st.just(Raw(b""))]
    return st.one_of(*options)


def _broken_string() -> st.SearchStrategy[Raw]:
    """A JSON string whose bytes are not UTF-8."""
    return hostile_bytes().map(lambda b: Raw(b'"' + b + b'"'))


# -- JSON ---------------------------------------------------------------------------------------


def _tree(value: Any) -> Any:
    """A mutable copy of decoded JSON, objects as :class:`Pairs`."""
    if isinstance(value, dict):
        return Pairs([[k, _tree(v)] for k, v in value.items()])
    if isinstance(value, list):
        return [_tree(v) for v in value]
    return value


def _slots(node: Any, out: list[tuple[list[Any], int]]) -> list[tuple[list[Any], int]]:
    """Every place in the tree a value sits, as (container, index) — a pair's value is slot 1
    of that pair."""
    if isinstance(node, Pairs):
        for pair in node:
            out.append((pair, 1))
            _slots(pair[1], out)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            out.append((node, i))
            _slots(item, out)
    return out


def _containers(node: Any, out: list[list[Any]]) -> list[list[Any]]:
    if isinstance(node, list):
        out.append(node)
        for item in node:
            _containers(item[1] if isinstance(node, Pairs) else item, out)
    return out


_MUTATIONS = (
    "replace",
    "replace",
    "replace",
    "deep",
    "deep",
    "bytes",
    "delete",
    "repeat_key",
    "add_key",
    "wrap",
    "stringify",
)


@st.composite
def mutated_json(draw: st.DrawFn, seeds: Sequence[Any], max_mutations: int = 4) -> Any:
    """A seed payload (decoded JSON) with up to ``max_mutations`` hostile changes; encode it
    with :func:`encode_json`."""
    tree = _tree(draw(st.sampled_from(list(seeds))))
    for _ in range(draw(st.integers(0, max_mutations))):
        op = draw(st.sampled_from(_MUTATIONS))
        if op == "delete":
            containers = [c for c in _containers(tree, []) if c]
            if containers:
                container = draw(st.sampled_from(containers))
                del container[draw(st.integers(0, len(container) - 1))]
            continue
        if op == "add_key":  # a field the payload does not declare (decoders skip those)
            objects = [c for c in _containers(tree, []) if isinstance(c, Pairs)]
            if objects:
                obj = draw(st.sampled_from(objects))
                key = draw(
                    st.one_of(st.sampled_from(["x", "extra", "$_type"]), st.text(max_size=8))
                )
                obj.insert(draw(st.integers(0, len(obj))), [key, draw(hostile_value())])
            continue
        if op == "repeat_key":
            objects = [c for c in _containers(tree, []) if isinstance(c, Pairs) and c]
            if objects:
                obj = draw(st.sampled_from(objects))
                key = obj[draw(st.integers(0, len(obj) - 1))][0]
                value = draw(hostile_value(deep=False, broken=False))
                obj.insert(draw(st.integers(0, len(obj))), [key, value])
            continue
        slots = _slots(tree, [])
        if not slots:
            tree = draw(hostile_value())
            continue
        container, index = draw(st.sampled_from(slots))
        if op == "replace":
            container[index] = draw(hostile_value(deep=False, broken=False))
        elif op == "deep":
            container[index] = draw(deep_nesting())
        elif op == "bytes":
            container[index] = draw(st.one_of(_broken_string(), st.just(Raw(b""))))
        elif op == "wrap":
            container[index] = [container[index]]
        else:  # a value of the right content but the wrong type
            container[index] = encode_json(container[index]).decode("utf-8", "replace")
    return tree


def encode_json(value: Any, *, ascii_only: bool = True) -> bytes:
    """``value`` as JSON bytes. :class:`Raw` goes in as is; :class:`Pairs` may repeat keys;
    NaN and infinities are written as JavaScript does (not JSON); a lone surrogate is escaped
    (``ascii_only``) or written as its CESU-8 bytes (not UTF-8)."""
    out: list[bytes] = []
    stack: list[Any] = [value]
    while stack:  # iterative: a generated tree may be deeper than the recursion limit
        item = stack.pop()
        if isinstance(item, bytes):
            out.append(item)
        elif isinstance(item, Raw):
            out.append(item.data)
        elif isinstance(item, Pairs):
            parts: list[Any] = [b"}"]
            for i, (key, val) in enumerate(reversed(item)):
                parts.append(val)
                parts.append(_string(str(key), ascii_only) + b":")
                if i < len(item) - 1:
                    parts.append(b",")
            parts.append(b"{")
            stack.extend(parts)
        elif isinstance(item, dict):
            stack.append(Pairs([[k, v] for k, v in item.items()]))
        elif isinstance(item, list | tuple):
            parts = [b"]"]
            for i, val in enumerate(reversed(item)):
                parts.append(val)
                if i < len(item) - 1:
                    parts.append(b",")
            parts.append(b"[")
            stack.extend(parts)
        elif isinstance(item, str):
            out.append(_string(item, ascii_only))
        elif item is None or isinstance(item, bool):
            out.append(json.dumps(item).encode())
        elif isinstance(item, int):
            out.append(str(item).encode())
        elif isinstance(item, float):
            if math.isnan(item):
                out.append(b"NaN")
            elif math.isinf(item):
                out.append(b"Infinity" if item > 0 else b"-Infinity")
            else:
                out.append(repr(item).encode())
        else:
            raise TypeError(f"cannot encode {type(item).__name__}")
    return b"".join(out)


def _string(text: str, ascii_only: bool) -> bytes:
    return json.dumps(text, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# -- forms --------------------------------------------------------------------------------------

_FORM_MUTATIONS = ("replace", "replace", "replace", "delete", "repeat", "add", "bytes")


@st.composite
def mutated_form(
    draw: st.DrawFn, seeds: Sequence[Sequence[tuple[str, str]]], max_mutations: int = 4
) -> list[tuple[str, str | bytes]]:
    """Form parameters from a seed with hostile changes; a value may be raw bytes (not UTF-8).
    Encode with :func:`encode_form`."""
    pairs: list[tuple[str, str | bytes]] = list(draw(st.sampled_from(list(seeds))))
    for _ in range(draw(st.integers(0, max_mutations))):
        op = draw(st.sampled_from(_FORM_MUTATIONS))
        if op == "add" or not pairs:
            key = draw(
                st.one_of(st.text(max_size=12), st.sampled_from([p[0] for p in pairs] or ["x"]))
            )
            pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(hostile_text())))
            continue
        index = draw(st.integers(0, len(pairs) - 1))
        key = pairs[index][0]
        if op == "delete":
            del pairs[index]
        elif op == "repeat":
            pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(hostile_text())))
        elif op == "bytes":
            pairs[index] = (key, draw(hostile_bytes()))
        else:
            pairs[index] = (key, draw(hostile_text()))
    return pairs


def _form_bytes(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8", "surrogatepass")


def encode_form(pairs: Sequence[tuple[str, str | bytes]]) -> bytes:
    """``application/x-www-form-urlencoded``; lone surrogates as CESU-8 bytes, bytes as given."""
    return b"&".join(
        quote_from_bytes(_form_bytes(k)).encode() + b"=" + quote_from_bytes(_form_bytes(v)).encode()
        for k, v in pairs
    )


def query_value() -> st.SearchStrategy[str]:
    """A query-string value, percent-encoded: text, lone surrogates, bytes not UTF-8."""
    return st.one_of(
        hostile_text(max_size=4096).map(lambda t: quote_from_bytes(_form_bytes(t))),
        hostile_bytes(max_size=512).map(quote_from_bytes),
        st.text(alphabet="%0123456789abcdefXZ+&=;#", max_size=20),
    )


# -- headers and bodies -------------------------------------------------------------------------


def hostile_header_value(max_size: int = 12_000) -> st.SearchStrategy[bytes]:
    """A header value as raw bytes: not ASCII, not UTF-8, control characters, very long."""
    return st.one_of(
        st.sampled_from([b"", b" ", b"\xff\xfe", b"\xc3\xa9t\xc3\xa9", b"\xe9t\xe9", b"\x7f\x01"]),
        hostile_bytes(max_size=256),
        st.text(max_size=40).map(
            lambda t: t.encode("utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b"")
        ),
        st.builds(_repeat_bytes, st.sampled_from([b"a", b"\xff", b"0"]), st.integers(1, max_size)),
    )


def hostile_headers(
    names: Sequence[str], *, max_count: int = 3, max_size: int = 12_000
) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    """Up to ``max_count`` of ``names`` (or a name that is not ASCII) with hostile values."""
    name = st.one_of(
        st.sampled_from([n.encode() for n in names]),
        st.sampled_from([b"X-\xc3\xa9t\xc3\xa9", b"X-\xff", b"x-unknown"]),
    )
    return st.lists(st.tuples(name, hostile_header_value(max_size)), max_size=max_count)


def junk_body(max_size: int = 2 * MB) -> st.SearchStrategy[bytes]:
    """A body that is anything but a well-formed payload."""
    return st.one_of(
        st.binary(max_size=256),
        hostile_bytes(max_size=max_size // 4),
        deep_nesting().map(lambda r: r.data),
        st.sampled_from([b"", b"{}", b"[]", b"null", b"0", b'""', b"{", b'{"a":1,"a":2}']),
        hostile_text(max_size=max_size // 4).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )


# -- fixed examples -----------------------------------------------------------------------------

#: The classic hostile values, each once: run first in every profile (``@example``), so the
#: well-known ways to break a parser are tried however few examples a run draws.
CLASSICS: dict[str, Any] = {
    "deep_array": Raw(b"[" * 100_000 + b"]" * 100_000),
    "deep_object": Raw(b'{"a":' * 100_000 + b"null" + b"}" * 100_000),
    "lone_surrogate": "caf\ud800e",
    "megabyte_of_digits": "1" * MB,
    "megabyte_of_addresses": "a@b.ch +41791234567 " * (MB // 20),
    "not_utf8": Raw(b'"\xff\xfe\xed\xa0\x80"'),
    "control_characters": "\x00\x1b[2J\r\n\u202e\x7f",
    "wrong_type": [{"a": [1, None, True]}],
    "huge_number": 10**400,
}


def classic_variants(
    seed: Any, path: Sequence[str | int], id_path: Sequence[str | int] | None = None
) -> list[Any]:
    """``seed`` with the value at ``path`` replaced by each of :data:`CLASSICS`, then with
    a field it does not declare holding deep nesting (decoders skip unknown fields), then
    with the field removed. ``id_path`` names the payload's message id, made unique per
    variant so none is dropped as a duplicate of another."""
    values = [*CLASSICS.items(), ("unknown_field", None), ("missing", None)]
    out = []
    for name, value in values:
        tree = _tree(seed)
        if id_path is not None:
            _set(tree, id_path, f"classic-{name}-{'/'.join(map(str, path))}")
        if name == "unknown_field":
            assert isinstance(tree, Pairs)
            tree.append(["x-unknown", CLASSICS["deep_array"]])
        else:
            _set(tree, path, value, delete=name == "missing")
        out.append(tree)
    return out


def _set(tree: Any, path: Sequence[str | int], value: Any, *, delete: bool = False) -> None:
    node = tree
    for step in path[:-1]:
        node = _child(node, step)
    last = path[-1]
    if isinstance(node, Pairs):
        for i, pair in enumerate(node):
            if pair[0] == last:
                if delete:
                    del node[i]
                else:
                    pair[1] = value
                return
        raise KeyError(last)
    assert isinstance(last, int)
    if delete:
        del node[last]
    else:
        node[last] = value


def _child(node: Any, step: str | int) -> Any:
    if isinstance(node, Pairs):
        for key, value in node:
            if key == step:
                return value
        raise KeyError(step)
    return node[step]


def classic_form_variants(
    pairs: Sequence[tuple[str, str]], field: str, id_field: str | None = None
) -> list[list[tuple[str, str | bytes]]]:
    """Form parameters with ``field`` set to each of :data:`CLASSICS` (as text, or raw bytes
    for the byte-level ones), then without it; ``id_field`` made unique per variant."""
    out: list[list[tuple[str, str | bytes]]] = []
    for name, value in [*CLASSICS.items(), ("missing", None)]:
        if isinstance(value, Raw):
            value = value.data
        elif value is not None and not isinstance(value, str):
            value = encode_json(value).decode()
        form: list[tuple[str, str | bytes]] = []
        for key, old in pairs:
            if key == id_field:
                form.append((key, f"classic-{name}-{field}"))
            elif key != field:
                form.append((key, old))
            elif value is not None:
                form.append((key, value))
        out.append(form)
    return out
