"""docs/spec-reference.md is generated from the schema; a stale copy fails here."""

from __future__ import annotations

from pathlib import Path

from ablate.spec.reference import render_reference
from ablate.spec.schema import Spec

DOC = Path(__file__).resolve().parents[2] / "docs" / "spec-reference.md"


def test_the_committed_reference_matches_the_schema():
    assert DOC.read_text() == render_reference(), "stale: run `make docs` (python -m ablate.spec.reference)"


def test_every_field_of_every_section_is_in_the_reference():
    text = render_reference()
    for name in Spec.model_fields:
        assert f"| `{name}` |" in text
    assert "## `distill`" in text and "## `resources.trial`" in text and "## `report`" in text
