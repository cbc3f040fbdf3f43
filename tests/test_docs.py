"""Docs: the configuration reference is generated from the schemas and every field is described."""
from __future__ import annotations

from pathlib import Path

import pytest

from phasestem.cli.docgen import SCHEMAS, config_reference, load_schema, missing_descriptions

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("target", [t for _, t in SCHEMAS])
def test_every_schema_field_has_a_description(target):
    assert missing_descriptions(load_schema(target)) == []


def test_committed_config_reference_is_current():
    committed = (ROOT / "docs" / "config_reference.md").read_text()
    assert committed == config_reference(), "regenerate: python -m phasestem.cli.docgen docs/config_reference.md"


def test_missing_description_is_detected():
    from pydantic import BaseModel, Field

    class Inner(BaseModel):
        a: int = Field(1, description="described")
        b: int = 2

    class Outer(BaseModel):
        inner: Inner = Field(default_factory=Inner, description="a section")

    assert missing_descriptions(Outer) == ["inner.b"]


def test_nested_sections_are_headed_by_their_dotted_path():
    """A section two levels down is headed as a user writes its keys (``constraints.obj_clamp``); the heading once
    lost the dot (``constraintsobj_clamp``)."""
    headings = [line for line in config_reference().splitlines() if line.startswith("#### ")]
    assert "#### `constraints.obj_clamp`" in headings and "#### `model.initial_phase`" in headings, headings
    assert not any("constraintsobj" in h for h in headings)
