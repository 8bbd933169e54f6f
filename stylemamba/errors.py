"""Errors the library raises on purpose, and the one wording of the out-of-memory advice.

Front ends name the same knob differently (Python's ``TrainConfig.resolution``, the Train node's
input ``'resolution'``, the CLI's ``--resolution``): they pass their spelling of each knob (a name
missing from it falls back to the library's; ``None`` leaves that knob out where a front end has
no such option); what to lower and why is written once, here.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

# How the library spells each knob the advice names (front ends pass their own names).
LIBRARY_NAMES: dict[str, str | None] = {
    "resolution": "TrainConfig.resolution",
    "n_crops": "LossConfig.n_crops",
    "images": "the number of content images",
    "gradient_checkpointing": "TrainConfig.gradient_checkpointing",
    "batch_size": "batch_size",
    "tile_size": "tile_size",
    "device": None,
}


def _lower(names: list[str]) -> str:
    """". Lower a, b or c" (nothing when there is nothing this front end can lower)."""
    if not names:
        return ""
    return ". Lower " + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1])


def _fixes(lower: list[str], other: str | None) -> str:
    """". Lower a or b, or use c"; without anything to lower ". Use c" (it was "..., or use c" after nothing)."""
    text = _lower(lower)
    if other:
        text += f", or {other}" if text else f". {other[0].upper()}{other[1:]}"
    return text


def _close_others(memory: str) -> str:
    return "close other GPU work" if memory == "GPU memory" else "close other programs"


def _training(n: Mapping[str, str | None], resolution: int, n_crops: int, n_images: int,
              memory: str = "GPU memory") -> str:
    lower = [f"{n['resolution']} (e.g. 384 or 256)"] * bool(n["resolution"]) + [n[k] for k in ("n_crops", "images")
                                                                               if n[k]]
    text = (f"out of {memory} while training at {resolution}x{resolution} with {n_crops} crops on {n_images} "
            f"content image(s)"
            f"{_fixes(lower, n['gradient_checkpointing'] and 'turn on ' + n['gradient_checkpointing'])}")
    return text + f"; {_close_others(memory)} and retry. A trained style works at any image size afterwards."


def _stylizing(n: Mapping[str, str | None], what: str, batch_size: int, tile_size: int,
               memory: str = "GPU memory", largest_side: int | None = None) -> str:
    # only what can still go lower: a batch above 1, a tile above the smallest without seams (256) on a picture
    # that smaller tiles would cut (a 64 px picture is one tile whatever tile_size says)
    tiled = min(tile_size, largest_side or tile_size)
    lower = [f"{n['batch_size']} (now {batch_size})" if n["batch_size"] and batch_size > 1 else None,
             f"{n['tile_size']} (now {tile_size}, e.g. {max(256, tiled // 16 * 8)})"
             if n["tile_size"] and tiled > 256 else None]
    device = n["device"] and memory == "GPU memory" and f"use {n['device']}"
    text = f"out of {memory} while stylising {what}{_fixes([k for k in lower if k], device)}"
    return text + f"; {_close_others(memory)} and retry."


def _other(n: Mapping[str, str | None], detail: str) -> str:
    knobs = [n[k] for k in ("resolution", "batch_size", "tile_size") if n[k]]
    text = f"out of memory ({detail}){_fixes(knobs, n['device'] and 'use ' + n['device'])}"
    return text + "; close other GPU work or programs and retry."


_ADVICE = {"training": _training, "stylizing": _stylizing, "other": _other}


class OutOfMemory(torch.cuda.OutOfMemoryError):
    """Ran out of (GPU) memory; the message says what to lower.

    A subclass of torch's own OOM error, so callers that react to OOM (ComfyUI unloads its cached
    models on it) still do. ``advice(names)`` words the same advice with a front end's knob names.
    """

    def __init__(self, job: str, facts: Mapping[str, Any], names: Mapping[str, str | None] | None = None):
        self.job, self.facts = job, dict(facts)
        super().__init__(self.advice(names))

    def advice(self, names: Mapping[str, str | None] | None = None) -> str:
        return _ADVICE[self.job]({**LIBRARY_NAMES, **(names or {})}, **self.facts)


def training_out_of_memory(resolution: int, n_crops: int, n_images: int,
                           names: Mapping[str, str | None] | None = None, memory: str = "GPU memory") -> OutOfMemory:
    return OutOfMemory("training", {"resolution": int(resolution), "n_crops": int(n_crops),
                                    "n_images": int(n_images), "memory": memory}, names)


def stylizing_out_of_memory(what: str, batch_size: int, tile_size: int,
                            names: Mapping[str, str | None] | None = None, memory: str = "GPU memory",
                            largest_side: int | None = None) -> OutOfMemory:
    """``batch_size``: the batch that ran (at most the number of pictures); ``largest_side``: the pictures' longest
    side, which says whether smaller tiles would cut them."""
    return OutOfMemory("stylizing", {"what": what, "batch_size": int(batch_size), "tile_size": int(tile_size),
                                     "memory": memory, "largest_side": largest_side}, names)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's GPU out-of-memory error, Python's MemoryError, or the CPU allocator's, which torch raises as a
    plain RuntimeError ("DefaultCPUAllocator: can't allocate memory")."""
    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and any(s in str(exc) for s in ("can't allocate memory", "out of memory")))


def memory_kind(exc: BaseException) -> str:
    """What ran out, in words: "GPU memory" for torch's CUDA error, "memory" (the machine's) otherwise."""
    if isinstance(exc, OutOfMemory):
        return exc.facts.get("memory", "GPU memory")
    return "GPU memory" if isinstance(exc, torch.cuda.OutOfMemoryError) else "memory"


def out_of_memory(detail: str, names: Mapping[str, str | None] | None = None) -> OutOfMemory:
    """Advice for an out-of-memory error that no job above turned into advice (e.g. while loading models)."""
    return OutOfMemory("other", {"detail": detail}, names)
