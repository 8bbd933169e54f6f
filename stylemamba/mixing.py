"""Weighted mixes, of prompts (a TextDirection) and of trained styles (a StyleModel): one rule for both.

Weights are non-negative with a positive sum and are stored normalised (summing to 1); blending two
mixes A and B with a share ``b`` scales A's weights by ``1 - b`` and B's by ``b`` (the paper's
multiple-style transfer, and the Conditioning Mix / Mix Styles nodes).
"""
from __future__ import annotations

import math
from typing import Any, Sequence


def normalise_weights(weights: Sequence[float] | None, n: int, what: str) -> tuple[float, ...]:
    """``n`` weights scaled to sum 1 (None: equal weights); ``what`` ("prompt", "style") names them in errors."""
    if n < 1:
        raise ValueError(f"no {what} given: give at least one")
    w = [1.0] * n if weights is None else [float(x) for x in weights]
    if len(w) != n or any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"{what} weights {list(weights or [])} must be {n} non-negative numbers with a positive sum")
    if not math.isfinite(sum(w)):  # huge weights (1e308, 1e308): their sum is inf, which made every weight 0
        w = [x / max(w) for x in w]
    total = sum(w)
    return tuple(x / total for x in w)


def blend(parts_a: tuple[Sequence[Any], Sequence[float]], parts_b: tuple[Sequence[Any], Sequence[float]],
          share_b: float) -> tuple[list[Any], list[float]]:
    """Mix two weighted lists: A's weights (normalised) times ``1 - share_b``, B's times ``share_b``.

    Items whose weight becomes zero are dropped (blend 0 is exactly A). Items are not merged, so
    mixing the same prompt or style twice keeps two entries whose weights add up.
    """
    if not 0.0 <= float(share_b) <= 1.0:
        raise ValueError(f"blend {share_b} must lie in [0, 1] (0 = only A, 1 = only B)")
    items, weights = [], []
    for (things, ws), scale in ((parts_a, 1.0 - float(share_b)), (parts_b, float(share_b))):
        total = float(sum(ws)) or 1.0
        for thing, w in zip(things, ws):
            if scale * w > 0:
                items.append(thing)
                weights.append(scale * w / total)
    return items, weights
