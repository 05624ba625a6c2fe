"""The weighted total of several named rewards, and the column names rewards get.

    total({"math": 1.0, "format": 0.0}, {"format": 0.5})   # -> 1.0   (weights default to 1)
    total({"math": None, "format": 1.0}, {})               # -> None  (a null component makes the total null)

Null propagates on purpose: a row whose math answer could not be checked has no meaningful total, and
turning it into 0 would teach the policy that a correct answer with an unparseable gold is wrong. A component
with weight 0 is recorded in `rewards` but left out of the total, so its null does not null the total.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence


def total(rewards: Mapping[str, float | None], weights: Mapping[str, float]) -> float | None:
    """sum(weight * reward) over the components with a non-zero weight; None if any of those is None."""
    acc = 0.0
    for name, value in rewards.items():
        w = weights.get(name, 1.0)
        if w == 0:
            continue
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        acc += w * value
    return acc


def unique_names(names: Sequence[str]) -> list[str]:
    """Suffix repeated names in order: `format, format, math` -> `format, format_2, math`."""
    seen: dict[str, int] = {}
    taken = set(names)
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        if seen[name] == 1:
            out.append(name)
            continue
        k = seen[name]
        while f"{name}_{k}" in taken:
            k += 1
        seen[name] = k
        taken.add(f"{name}_{k}")
        out.append(f"{name}_{k}")
    return out


def parse_weights(items: Sequence[str], names: Sequence[str]) -> dict[str, float]:
    """`["format=0.5"]` -> {"format": 0.5}; every name must be one of the reward columns `names`."""
    weights: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"weight {item!r}: write NAME=WEIGHT, e.g. format=0.5")
        if name not in names:
            raise ValueError(f"weight {item!r}: no reward named {name!r}; reward columns are {', '.join(names)}")
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"weight {item!r}: {value!r} is not a number") from None
        if not math.isfinite(w):
            raise ValueError(f"weight {item!r}: must be a finite number")
        weights[name] = w
    return weights
