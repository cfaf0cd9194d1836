"""The spec reference (docs/spec-reference.md), generated from the pydantic schema so it cannot drift.

``python -m ablate.spec.reference > docs/spec-reference.md`` (or ``make docs``) writes it;
``tests/spec/test_reference.py`` fails when the committed file is stale.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ablate.spec.schema import Spec
from ablate.spec.units import parse_params, parse_tokens

HEADER = """\
# Spec reference

Generated from `ablate/spec/schema.py` by `python -m ablate.spec.reference` (`make docs`); do not edit by
hand. Every section and field a spec may have, with its type, default and limits. Unknown keys are
errors. Every number must be finite (`.inf`, `.nan`, `1e309` are refused). Token counts take suffixes (`20k`, `1.8B`, `380B`). `extends: base.yaml` deep-merges a base spec
(relative to the file that names it). `sweep.grid` keys are dotted paths into this reference (plus
`target` and `seed`).
"""


def _models(model: type[BaseModel], path: str, out: list[tuple[str, type[BaseModel]]]) -> None:
    out.append((path, model))
    for name, info in model.model_fields.items():
        for sub in _nested(info.annotation):
            _models(sub, f"{path}.{name}" if path else name, out)


def _nested(annotation: Any) -> list[type[BaseModel]]:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _nested(arg)
    return found


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{json.dumps(a)}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in typing.get_args(annotation))
    if origin in (list, tuple, dict):
        args = ", ".join(_type(a) for a in typing.get_args(annotation) if a is not Ellipsis)
        return f"{origin.__name__}[{args}]"
    if annotation is type(None):
        return "null"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return "section"
    name = getattr(annotation, "__name__", str(annotation))
    return {"int": "integer", "float": "number", "str": "string", "bool": "boolean"}.get(name, name)


def _metadata(annotation: Any) -> list[Any]:
    """Constraint objects inside an annotation (``PositiveFloat | None`` keeps its ``Gt`` in the union)."""
    out: list[Any] = []
    if typing.get_origin(annotation) is typing.Annotated:
        for extra in typing.get_args(annotation)[1:]:
            out += list(getattr(extra, "metadata", None) or [extra])
        return out + _metadata(typing.get_args(annotation)[0])
    for arg in typing.get_args(annotation):
        out += _metadata(arg)
    return out


def _limits(info: FieldInfo) -> str:
    parts = []
    for meta in [*info.metadata, *_metadata(info.annotation)]:
        for attr, word in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length >="),
                           ("max_length", "length <="), ("pattern", "matches")):  # fmt: skip
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{word} `{value}`" if attr == "pattern" else f"{word} {value}")
        if getattr(meta, "allow_inf_nan", None) is False:
            parts.append("finite")
        if getattr(meta, "func", None) is parse_tokens:
            parts.append("token count (20k, 1.8B)")
        if getattr(meta, "func", None) is parse_params:
            parts.append("parameter count (89M, 8B)")
    return ", ".join(dict.fromkeys(parts))


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return "**required**"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value, default=str)}`"


def _doc(model: type[BaseModel]) -> str:
    doc = inspect.getdoc(model) or ""
    if model.__doc__ is None or doc.startswith(("Usage docs:", "A base class")):
        return ""
    return re.sub(r"\s+", " ", doc).strip()


def render_reference() -> str:
    """The whole reference as markdown."""
    models: list[tuple[str, type[BaseModel]]] = []
    _models(Spec, "", models)
    lines = [HEADER]
    seen: set[str] = set()
    for path, model in models:
        if path in seen:
            continue
        seen.add(path)
        lines += [f"## `{path or '(top level)'}`", ""]
        if _doc(model):
            lines += [_doc(model), ""]
        lines += ["| field | type | default | limits | notes |", "|---|---|---|---|---|"]
        for name, info in model.model_fields.items():
            note = (info.description or "").replace("|", "\\|")
            lines.append(
                f"| `{info.alias or name}` | {_type(info.annotation)} | {_default(info)} | {_limits(info)} | {note} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_reference(), end="")
