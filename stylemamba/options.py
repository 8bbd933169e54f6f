"""Building option dataclasses (recipes, loss and fusion configs) from plain mappings (JSON, metadata)."""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def from_options(cls: type[T], data: Mapping[str, Any], what: str, renamed: Mapping[str, str] | None = None) -> T:
    """``cls(**data)``, refusing unknown keys (usually typos) with a message naming the valid ones.

    ``renamed`` maps option names of older versions to today's (config files and the recipes stored
    in old style files keep loading); giving both the old and the new name is an error.
    """
    data = dict(data)
    for old, new in (renamed or {}).items():
        if old in data:
            if new in data:
                raise ValueError(f"{what} options {old!r} (the old name) and {new!r} are both given; keep {new!r}")
            data[new] = data.pop(old)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; valid: {sorted(known)}")
    return cls(**data)


SEED_RULE = "from -2**63 to 2**64 - 1, what torch's generators take"


def in_seed_range(seed: int) -> bool:
    """Whether torch.Generator.manual_seed takes ``seed`` (outside: 'Overflow when unpacking long long', naming
    nothing); the one rule of TrainConfig.seed and the seed flags (SEED_RULE says it)."""
    return -2**63 <= seed < 2**64


_KINDS = {"bool": "true or false", "int": "an integer", "float": "a finite number"}


def check_kinds(options: Any, what: str) -> None:
    """Refuse, by name, a value of the wrong kind in a field annotated ``int``, ``float`` or ``bool``: from the Python
    API a string "8" failed later with "'>=' not supported", 2.5 epochs ran, and the string "false" turned a switch on.
    """
    for f in dataclasses.fields(options):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind not in _KINDS:
            continue
        value = plain(getattr(options, f.name))
        if kind == "bool":
            switch = as_switch(value)
            ok = switch is not None
            value = switch if ok else value
        elif kind == "int":
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        elif kind == "float":
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            raise ValueError(f"{what}.{f.name} must be {_KINDS[kind]}, got {value!r}")
        setattr(options, f.name, value)


def as_switch(value: Any) -> bool | None:
    """A switch's value: a bool, or 0 / 1 (numpy's too); None for anything else (2, None, "false"). The one rule of
    the recipes' bool fields and memory_plan's switches."""
    value = plain(value)
    if isinstance(value, bool) or (type(value) is int and value in (0, 1)):
        return bool(value)
    return None


def plain(value: Any) -> Any:
    """A numpy scalar or a 0-d array / tensor as the Python number it holds: np.bool_ (a numpy comparison) and
    torch.tensor(1e-3) trained before the kinds were checked, and a plain number is what a recipe is written with."""
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        return value.item()
    return value
