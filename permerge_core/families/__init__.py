"""The supported model families, each declared in a module of its own (schema: `schema.py`).

To add a family: write its module with one `FAMILY = Family(...)` and list the module here.
What else a family knows (its architecture aliases, its heads) is asked of its `Family` value.
"""

from __future__ import annotations

from dataclasses import replace

from . import bert, gpt2, gpt_neox, roberta
from .schema import Family, Touch

FAMILIES: dict[str, Family] = {module.FAMILY.name: module.FAMILY for module in (bert, roberta, gpt2, gpt_neox)}


def supported_architectures() -> list[str]:
    return [name for fam in FAMILIES.values() for name in fam.heads]


def family_for_model_type(model_type: str) -> Family | None:
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    return None


def expand(touches: tuple[Touch, ...], layer: int | None) -> list[Touch]:
    """Fill the layer index into name templates."""
    if layer is None:
        return list(touches)
    return [replace(t, name=t.name.format(i=layer)) for t in touches]
