"""Validate-time checks of the `align` section that need more than the schema: TRL installed, each stage's
data readable with the columns its method needs and enough records for one optimizer step, and a chat
template for a tokenizer that has none. Each problem is (path in the spec, message)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ablate.spec.schema import Spec

Where = tuple[Any, ...]


def check_align(spec: Spec, spec_path: Path) -> list[tuple[Where, str]]:
    align = spec.align
    if align is None:
        return []
    problems: list[tuple[Where, str]] = []
    if importlib.util.find_spec("trl") is None:
        problems.append(
            (
                ("align",),
                "the align section runs on TRL, which is not installed (pip install 'ablate[align]')",
            )
        )
    from ablate.align.sets import AlignDataError, load_set

    for name, stage in align.stages.items():
        where = ("align", "stages", name)
        try:
            data = load_set(stage.data, stage.method, stage.held_out, spec_path.parent)
        except AlignDataError as exc:
            problems.append(((*where, "data"), str(exc)))
            continue
        if stage.examples is None and len(data.train) < stage.global_batch:
            problems.append(
                (
                    (*where, "examples"),
                    f"one pass over the {len(data.train)} training records is less than one optimizer step "
                    f"(global_batch {stage.global_batch}); set examples to at least {stage.global_batch} "
                    "(the set repeats) or lower global_batch",
                )
            )
    if align.chat_template is None:
        problems += _check_tokenizer_template(spec.teacher.model, spec_path)
    return problems


def _check_tokenizer_template(ref: str, spec_path: Path) -> list[tuple[Where, str]]:
    """The teacher's tokenizer (the students keep it) has a chat template; a tokenizer that cannot be
    loaded here is not judged (the stage fails with its own message when it runs)."""
    from ablate.models.registry import load_tokenizer

    local = spec_path.parent / ref
    try:
        tokenizer = load_tokenizer(str(local) if not ref.startswith("builtin:") and local.exists() else ref)
    except Exception:  # noqa: BLE001 - not here (a hub id on an offline machine): checked when it runs
        return []
    if getattr(tokenizer, "chat_template", None):
        return []
    return [
        (
            ("align", "chat_template"),
            f"the tokenizer of {ref} has no chat template (got none); set align.chat_template to chatml (the "
            "ChatML template that ships with ablate) or to a Jinja chat template",
        )
    ]
