"""A training loss curve drawn as an image tensor, so front ends without matplotlib can show it.

The loss terms of a style differ by orders of magnitude (the weighted total is ~1e4, the cosine
terms lie in [0, 2]), so every term is drawn unweighted on one shared log10 axis. Pillow draws it
(it ships with torchvision and ComfyUI); matplotlib is not needed.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

# Distinct colours (Tableau 10), one per loss term in drawing order.
_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
_FLOOR = 1e-6  # used only when every value is zero


def _nice_decades(lo: float, hi: float) -> list[int]:
    return list(range(math.floor(lo), math.ceil(hi) + 1))


def loss_curve_image(history: Sequence[Mapping[str, float]], width: int = 640, height: int = 360,
                     keys: Sequence[str] | None = None, title: str = "StyleMamba training losses") -> torch.Tensor:
    """Plot per-step loss terms (``TrainResult.history``) -> ``(3, height, width)`` float image in [0, 1].

    ``keys`` picks and orders the terms (default: every term that appears, ``total`` first).
    An empty history gives a blank plot that says so, never an error.
    """
    from PIL import Image, ImageDraw

    # room for the axis labels (52 px) and the legend (124 px): at 160 px wide the plot area was negative, an error
    width, height = max(240, int(width)), max(120, int(height))
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    lines = title_lines(title, lambda text: draw.textlength(text, font=font), width - 16)
    for i, line in enumerate(lines):
        draw.text((8, 4 + 13 * i), line, fill=(0, 0, 0), font=font)
    if keys is None:
        seen: list[str] = []
        for row in history:
            seen.extend(k for k in row if k not in seen)
        keys = (["total"] if "total" in seen else []) + [k for k in seen if k != "total"]
    series = {k: [float(row[k]) for row in history if k in row and math.isfinite(float(row[k]))] for k in keys}
    series = {k: v for k, v in series.items() if v}
    left, right, top, bottom = 52, width - 124, 12 + 13 * len(lines), height - 26
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    if not series:
        draw.text((left + 8, (top + bottom) // 2), "no training steps yet", fill=(120, 0, 0), font=font)
        return _to_tensor(img)
    # zero terms (e.g. the second-order loss before it switches on) sit a decade below the smallest value
    positive = [abs(x) for v in series.values() for x in v if x != 0]
    floor = min(positive) / 10 if positive else _FLOOR
    logs = {k: [math.log10(max(abs(x), floor)) for x in v] for k, v in series.items()}
    lo = min(min(v) for v in logs.values())
    hi = max(max(v) for v in logs.values())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    steps = max(len(v) for v in logs.values())

    def xy(i: int, value: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(1, steps - 1))
        y = bottom - (bottom - top) * ((value - lo) / (hi - lo))
        return x, y

    for decade in _nice_decades(lo, hi):
        if lo <= decade <= hi:
            _, y = xy(0, decade)
            draw.line([(left, y), (right, y)], fill=(225, 225, 225))
            draw.text((4, y - 6), f"1e{decade}", fill=(80, 80, 80), font=font)
    draw.text((left, bottom + 6), "step 1", fill=(80, 80, 80), font=font)
    draw.text((right - 48, bottom + 6), f"step {steps}", fill=(80, 80, 80), font=font)
    for n, (key, values) in enumerate(logs.items()):
        colour = _COLOURS[n % len(_COLOURS)]
        points = [xy(i, v) for i, v in enumerate(values)]
        if len(points) == 1:
            x, y = points[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        else:
            draw.line(points, fill=colour, width=2)
        legend_y = top + 4 + 14 * n
        draw.line([(right + 8, legend_y + 6), (right + 22, legend_y + 6)], fill=colour, width=3)
        draw.text((right + 26, legend_y), f"{key} {series[key][-1]:.3g}", fill=(0, 0, 0), font=font)
    return _to_tensor(img)


def _font():
    """DejaVu Sans where the system has it (accented, Greek and Cyrillic prompts), else Pillow's own font."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", 10)
    except OSError:
        return ImageFont.load_default()


def title_lines(title: str, measure, max_width: float, max_lines: int = 3) -> list[str]:
    """``title`` wrapped at spaces into lines at most ``max_width`` wide (``measure(text)`` gives a width);
    past ``max_lines`` the last line ends in an ellipsis. No word is cut off at the image border."""
    lines: list[str] = []
    for word in str(title).split():
        if lines and measure(lines[-1] + " " + word) <= max_width:
            lines[-1] += " " + word
            continue
        while measure(word) > max_width and len(word) > 1:  # a word wider than the image is split
            cut = next(n for n in range(len(word) - 1, 0, -1) if measure(word[:n]) <= max_width or n == 1)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    lines = lines or [""]
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and measure(last + " …") > max_width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last.rstrip() + " …"]
    return lines


def _to_tensor(img) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
