"""Docs: the configuration reference is generated from the schemas and every field is described."""
from __future__ import annotations

from pathlib import Path

import pytest

from phasestem.docgen import SCHEMAS, config_reference, load_schema, missing_descriptions

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("target", [t for _, t in SCHEMAS])
def test_every_schema_field_has_a_description(target):
    assert missing_descriptions(load_schema(target)) == []


def test_committed_config_reference_is_current():
    committed = (ROOT / "docs" / "config_reference.md").read_text()
    assert committed == config_reference(), "regenerate: python -m phasestem.docgen docs/config_reference.md"


def test_missing_description_is_detected():
    from pydantic import BaseModel, Field

    class Inner(BaseModel):
        a: int = Field(1, description="described")
        b: int = 2

    class Outer(BaseModel):
        inner: Inner = Field(default_factory=Inner, description="a section")

    assert missing_descriptions(Outer) == ["inner.b"]
