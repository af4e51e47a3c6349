"""Reading JSON request bodies field by field, with 400 errors that name the field.

Unblu's Java server treats ``null`` like an absent property, so do these readers. Only the
fields an operation uses are read; unknown properties are ignored as Unblu ignores them.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from aiohttp import web

from ..jsonsafe import depth_problem
from ..unblu.wire import text_length
from .errors import ApiError

__all__ = ["Body", "read_body"]


async def read_body(request: web.Request) -> Body:
    """The request's JSON object; 400 when the body is missing, not JSON or not an object."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError.bad_request("request body is missing")
    problem = depth_problem(raw)
    if problem is not None:
        raise ApiError.bad_request(f"request body is refused: {problem}")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ApiError.bad_request(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError.bad_request("request body must be a JSON object")
    return Body(data)


class Body:
    """One JSON object of a request; ``prefix`` is its path for error messages."""

    def __init__(self, data: Mapping[str, Any], prefix: str = "") -> None:
        self.data = data
        self.prefix = prefix

    def where(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def _fail(self, name: str, problem: str) -> ApiError:
        return ApiError.bad_request(f"{self.where(name)}: {problem}")

    def type_tag(self, *allowed: str) -> None:
        """Check ``$_type`` when given: it must be one of ``allowed``."""
        tag = self.data.get("$_type")
        if tag is not None and tag not in allowed:
            raise self._fail("$_type", f"must be {' or '.join(repr(a) for a in allowed)}")

    def opt_str(self, name: str, *, max_len: int | None = None) -> str | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._fail(name, "must be a string")
        # Unblu (Java) counts UTF-16 code units: an emoji is two "characters".
        if max_len is not None and text_length(value) > max_len:
            raise self._fail(name, f"must be at most {max_len} characters")
        return value

    def req_str(self, name: str, *, max_len: int | None = None) -> str:
        value = self.opt_str(name, max_len=max_len)
        if value is None or value == "":
            raise self._fail(name, "is required")
        return value

    def opt_bool(self, name: str) -> bool | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self._fail(name, "must be a boolean")
        return value

    def bool(self, name: str, default: bool) -> bool:
        value = self.opt_bool(name)
        return default if value is None else value

    def opt_int(self, name: str, *, minimum: int | None = None) -> int | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(name, "must be an integer")
        if minimum is not None and value < minimum:
            raise self._fail(name, f"must be at least {minimum}")
        return value

    def opt_enum(self, name: str, allowed: Collection[str]) -> str | None:
        value = self.opt_str(name)
        if value is not None and value not in allowed:
            raise self._fail(name, f"must be one of {', '.join(sorted(allowed))}")
        return value

    def opt_obj(self, name: str) -> Body | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._fail(name, "must be an object")
        return Body(value, f"{self.where(name)}.")

    def req_obj(self, name: str) -> Body:
        value = self.opt_obj(name)
        if value is None:
            raise self._fail(name, "is required")
        return value

    def obj_list(self, name: str) -> list[Body]:
        value = self.data.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._fail(name, "must be an array")
        out: list[Body] = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self._fail(f"{name}[{i}]", "must be an object")
            out.append(Body(item, f"{self.where(name)}[{i}]."))
        return out

    def opt_str_list(self, name: str) -> list[str] | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(name, "must be an array of strings")
        return list(value)

    def opt_str_map(self, name: str) -> dict[str, str] | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise self._fail(name, "must be an object of strings")
        return dict(value)
