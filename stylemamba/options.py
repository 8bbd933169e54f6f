"""Building option dataclasses (recipes, loss and fusion configs) from plain mappings (JSON, metadata)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def from_options(cls: type[T], data: Mapping[str, Any], what: str) -> T:
    """``cls(**data)``, refusing unknown keys (usually typos) with a message naming the valid ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; valid: {sorted(known)}")
    return cls(**dict(data))
