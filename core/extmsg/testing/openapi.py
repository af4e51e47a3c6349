"""Validate wire bodies against Unblu's own OpenAPI descriptions.

The specs are the contract for everything extmsg sends to Unblu and everything the sandbox
emits. They are read from ``EXTMSG_UNBLU_SPECS`` (default ``../shared/specs`` next to the
checkout); :func:`load_spec` raises :class:`SpecUnavailable` when they are not there so that
tests can skip with a clear reason.

Needs the ``test`` extra (PyYAML, openapi-schema-validator).
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ContractViolation",
    "SpecUnavailable",
    "UnbluSpec",
    "load_spec",
    "specs_dir",
]

ApiVersion = Literal["v3", "v4"]

_FILES: dict[str, str] = {"v3": "unblu-openapi-v3.yaml", "v4": "unblu-openapi-v4.yaml"}


class SpecUnavailable(RuntimeError):
    """The vendor specs are not present on this machine."""


class ContractViolation(AssertionError):
    """A body does not match the schema of the operation it belongs to."""


def specs_dir() -> Path:
    env = os.environ.get("EXTMSG_UNBLU_SPECS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared" / "specs"


@dataclass
class _Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    op: dict[str, Any]


@dataclass
class UnbluSpec:
    """One loaded Unblu OpenAPI document with lookup and validation helpers."""

    version: ApiVersion
    doc: dict[str, Any]
    _ops: list[_Operation] = field(default_factory=list)
    _callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for template, item in self.doc["paths"].items():
            regex = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
            for method, op in item.items():
                if not isinstance(op, dict) or method.startswith("x-"):
                    continue
                self._ops.append(_Operation(method.upper(), template, re.compile(regex), op))
                for callbacks in (op.get("callbacks") or {}).values():
                    for cb_item in callbacks.values():
                        post = cb_item.get("post")
                        if post and "summary" in post:
                            self._callbacks[post["summary"]] = post
        # Literal paths win over templated ones ("/x/getByName" before "/x/{id}").
        self._ops.sort(key=lambda o: o.template.count("{"))

    # -- look-ups -------------------------------------------------------------------------
    def operation(self, method: str, path: str) -> dict[str, Any]:
        """The operation object for ``method path`` (path relative to ``/rest/vN``)."""
        path = path.split("?", 1)[0]
        for op in self._ops:
            if op.method == method.upper() and op.pattern.match(path):
                return op.op
        raise ContractViolation(f"{self.version}: no operation {method.upper()} {path} in the spec")

    def callback(self, name: str) -> dict[str, Any]:
        """A callback (webhook event or outbound request) by its name, e.g. ``outbound.ping``."""
        try:
            return self._callbacks[name]
        except KeyError:
            raise ContractViolation(f"{self.version}: no callback named {name!r}") from None

    def callback_names(self) -> list[str]:
        return sorted(self._callbacks)

    def has_schema(self, name: str) -> bool:
        return name in self.doc["components"]["schemas"]

    # -- validation ------------------------------------------------------------------------
    def validate_schema(self, schema: dict[str, Any], instance: Any, where: str) -> None:
        from openapi_schema_validator import OAS30Validator

        root = {**schema, "components": self.doc["components"]}
        errors = sorted(OAS30Validator(root).iter_errors(instance), key=lambda e: list(e.path))
        if errors:
            lines = [
                f"{'/'.join(str(p) for p in e.absolute_path) or '<body>'}: {e.message[:300]}"
                for e in errors[:5]
            ]
            raise ContractViolation(f"{self.version} {where}: " + "; ".join(lines))

    def validate_component(self, name: str, instance: Any) -> None:
        self.validate_schema({"$ref": f"#/components/schemas/{name}"}, instance, name)

    def validate_request(self, method: str, path: str, body: Any) -> None:
        op = self.operation(method, path)
        schema = _json_schema(op.get("requestBody"))
        if schema is None:
            if body not in (None, b"", ""):
                raise ContractViolation(f"{self.version} {method} {path}: takes no body")
            return
        self.validate_schema(schema, body, f"request {method} {path}")

    def validate_response(self, method: str, path: str, status: int, body: Any) -> None:
        op = self.operation(method, path)
        responses = op.get("responses", {})
        resp = responses.get(str(status)) or responses.get("default")
        if resp is None:
            raise ContractViolation(
                f"{self.version} {method} {path}: status {status} not in {sorted(responses)}"
            )
        schema = _json_schema(resp)
        if schema is not None:
            self.validate_schema(schema, body, f"response {status} {method} {path}")

    def validate_callback_request(self, name: str, body: Any) -> None:
        schema = _json_schema(self.callback(name).get("requestBody"))
        if schema is None:
            raise ContractViolation(f"{self.version} callback {name}: no request schema")
        self.validate_schema(schema, body, f"callback {name} request")

    def validate_callback_response(self, name: str, body: Any) -> None:
        resp = self.callback(name).get("responses", {}).get("200", {})
        schema = _json_schema(resp)
        if schema is not None:
            self.validate_schema(schema, body, f"callback {name} response")


def _json_schema(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    if not obj:
        return None
    content = obj.get("content") or {}
    for media in ("application/json", "*/*"):
        if media in content and "schema" in content[media]:
            schema: dict[str, Any] = content[media]["schema"]
            return schema
    return None


@functools.cache
def load_spec(version: ApiVersion) -> UnbluSpec:
    """Load (once per process) the vendor spec for ``version``."""
    path = specs_dir() / _FILES[version]
    if not path.is_file():
        raise SpecUnavailable(
            f"Unblu OpenAPI spec not found at {path} (set EXTMSG_UNBLU_SPECS to its folder)"
        )
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as fh:
        doc = yaml.load(fh, Loader=loader)  # noqa: S506 - a safe loader is used
    return UnbluSpec(version, doc)
