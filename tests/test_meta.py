"""The plugin API stays honest: every hook has a test and a documented entry."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from extmsg import hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "writing-plugins.md"
HOOKS = sorted(
    name
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("extmsg_")
)


def _test_names() -> set[str]:
    names: set[str] = set()
    for folder in [ROOT / "tests", *ROOT.glob("plugins/*/tests")]:
        for path in folder.rglob("test_*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names.update(
                node.name
                for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return names


def test_hookspecs_exist() -> None:
    assert len(HOOKS) >= 15


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str) -> None:
    assert f"test_hook_{hook}" in _test_names(), f"write test_hook_{hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"^### {hook}\n(.*?)(?=^### |\Z)", text, re.M | re.S)
    assert match, f"docs/writing-plugins.md has no '### {hook}' section"
    section = match.group(1)
    params = list(inspect.signature(getattr(hookspecs, hook)).parameters)
    signature_line = next(
        (line for line in section.splitlines() if line.startswith(f"{hook}(")), ""
    )
    for name in params:
        assert f"{name}:" in signature_line, f"{hook}: argument {name!r} is not documented"
    assert "->" in signature_line, f"{hook}: the return value is not documented"
    assert section.count("```python") >= 2, f"{hook}: needs the signature and an example"
    spec = getattr(hookspecs, hook)
    firstresult = spec.extmsg_spec["firstresult"]
    assert ("*First result.*" in section) == firstresult, f"{hook}: first-result flag"


def test_every_unit_method_is_documented_in_the_unit_table() -> None:
    """A hook a messenger unit can implement is in the guide's table of unit methods, named
    with its hook."""
    from extmsg.messenger import HOOK_METHODS

    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## The messenger unit") : text.index("## The rules")]
    for method in HOOK_METHODS:
        row = next((line for line in section.splitlines() if line.startswith(f"| `{method}(")), "")
        assert f"[extmsg_{method}](#extmsg_{method})" in row, f"unit method {method} undocumented"


def test_every_model_field_and_error_is_in_the_reference() -> None:
    """The guide's reference names every field of the models a plugin meets, and every error."""
    import msgspec

    from extmsg import errors, models

    text = DOC.read_text(encoding="utf-8")
    reference = text[text.index("## Reference: models and errors") :]
    for name in models.__all__:
        model = getattr(models, name)
        if not (isinstance(model, type) and issubclass(model, msgspec.Struct)):
            continue
        if name in ("MessengerType", "ProviderFake", "Route"):
            continue  # documented with the hook that declares them
        assert f"**`{name}`**" in reference, f"model {name} is not in the reference"
        for field in msgspec.structs.fields(model):
            assert f"`{field.name}`" in reference, f"{name}.{field.name} is not in the reference"
    for name in ("SignatureError", "BadInbound", "RetryableError", "PermanentError", "NotYet"):
        assert f"`{name}(" in reference, f"{name} is not in the reference"
    for attribute in ("message", "status", "code", "retry_after", "retryable"):
        assert hasattr(errors.RetryableError("x"), attribute)
        assert f"`{attribute}`" in reference
