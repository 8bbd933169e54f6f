"""Memory planning for training: the cheapest way to run a recipe in the GPU memory that is free.

Four ways to trade time for memory, all giving the gradient of the full batch (tests/test_memory_plan.py):

* ``micro_batch``: the content images go through the step in groups of this many; each group's loss
  terms are scaled by its share of the batch and the gradients accumulate (4 images cost about the
  memory of 1).
* ``view_chunk``: the image-tower views (whole image, 64 crops, masked image per content image) go
  through the tower in chunks of this many, each chunk checkpointed (its activations recomputed in
  backward), so the tower holds the activations of one chunk instead of all views. 0 = all at once.
* ``checkpointing``: the decoder's activations are recomputed in backward.
* ``tower_checkpointing``: the image tower's layers recompute their activations in backward, one layer at a
  time, on all views at once: the tower keeps only each layer's input (unlike ``view_chunk``, the views stay
  one batch, so the tower's kernels stay as fast as without saving). Needs a tower that names its layers
  (``image_layers()``, e.g. :class:`~stylemamba.encoders.TextImageEncoder`).

:func:`choose_plan` is a pure function of the free memory and the recipe; :func:`estimate_bytes` is
its model, calibrated on explicit plans measured on an H200 (``python -m stylemamba.experiments.plan_sweep``,
2026-12-03, ``bench/results/defaults_h200/``: eager, bf16, the default recipe at 512 px with 66 views, the
decoder in NCHW with bf16 GroupNorms, no VGG term, Triton scan). Working memory = peak allocated minus
the frozen networks:

=============================  ========  ====================================================================
constant                       value     source (measured working memory, GB)
=============================  ========  ====================================================================
``DECODER_PER_IMAGE``          2.6 GB    what decoder checkpointing saves per image: 8.41 - 5.86 (1 image),
                                         (30.9 - 20.3) / 4 (4 images)
``TOWER_PER_VIEW``             70 MB     1 image, checkpointed decoder: 66 views 5.86, chunks of 32 3.22
                                         (78 MB / view); per extra image 4.81 GB holds 66 views
``TOWER_CKPT_PER_VIEW``        30 MB     with the tower's layers recomputed (tower_checkpointing), 66 views cost 2.0 GB in
                                         all four plans measured: 1 image 5.80 (decoder kept) / 3.24 (checkpointed),
                                         4 images one at a time 6.17 / 3.61 (2026-12-03, callD)
``TOWER_MIN_VIEWS``            24        chunks smaller than this saved nothing more (chunks of 8: 5.21 vs
                                         the 4.35 a linear model gives)
``OTHER_PER_IMAGE``            0.19 GB   the rest of an image's 4.81 GB (fusion module, LPIPS, views, Y)
``LPIPS_TARGET_PER_IMAGE``     64 MB     computed, not measured (the calibration predates it): the LPIPS-VGG16
                                         features of every content image, kept for the whole run (32 M values at
                                         512 px, bf16 as the backbone returns them under autocast)
``BASE``                       1.0 GB    1 image checkpointed 5.86 - 4.81: trained weights, gradients, Adam
``ACCUMULATION``               0.4 GB    with micro-batches: 4 images one at a time 8.78 vs 1 image 8.41
``RESIDENT``                   1.3 GB    the frozen networks of the benchmark (SD VAE, SigLIP B/16, LPIPS
                                         VGG16, VGG19; fp32), not part of the estimate
=============================  ========  ====================================================================

The decoder and "other" terms scale with (resolution / 512)^2; tower views are always resized to the
tower's size, so their cost does not. Every measured plan is within 0.5 GB (tests/test_memory_plan.py).

Time model (relative; picks among plans that fit): seconds per 20 steps, per group of m images
``A + P * m`` (A = 0.9, P = 1.3: 1 image 2.0 s, 4 images at once 5.9 s, in 2 groups 7.9 s, in 4 groups
9.4 s); decoder checkpointing x1.25 (1.14-1.52 measured); the tower's layers recomputed x1.3 (1.11-1.47 measured:
the tower alone on 66 views 34 -> 60 ms forward + backward); tower chunks cost x(1 + 0.5 per extra chunk)
(1 image: chunks of 32 x2.15, of 8 x4.6): splitting the views slows the tower itself (66 views in one
call 26 ms forward + backward, in chunks of 32 77 ms, plan_sweep --tower), so chunks come last.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

import torch

from .options import as_switch, plain

GB = 1e9
DECODER_PER_IMAGE = 2.6 * GB
TOWER_PER_VIEW = 0.07 * GB
TOWER_CKPT_PER_VIEW = 0.03 * GB
TOWER_MIN_VIEWS = 24
OTHER_PER_IMAGE = 0.19 * GB
LPIPS_TARGET_PER_IMAGE = 2 * (64 * 512 ** 2 + 128 * 256 ** 2 + 256 * 128 ** 2 + 512 * 64 ** 2 + 512 * 32 ** 2)
BASE = 1.0 * GB
ACCUMULATION = 0.4 * GB
RESIDENT = 1.3 * GB
SAFETY = 0.9  # plan for this share of the free memory: fragmentation, cuDNN workspaces, estimate error [choice]
GROUP_S, PER_IMAGE_S = 0.9, 1.3
CHECKPOINTING_COST, TOWER_CHECKPOINTING_COST, CHUNK_COST = 1.25, 1.3, 0.5
VIEW_CHUNKS = (64, 32, 16, 8)
MODES = ("auto", "fast")


@dataclass(frozen=True)
class MemoryPlan:
    """How one training run spends memory (see the module docstring); ``reason`` says why it was chosen."""

    micro_batch: int
    view_chunk: int = 0
    checkpointing: bool = False
    tower_checkpointing: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        parts = [f"micro_batch={self.micro_batch}", f"view_chunk={self.view_chunk or 'all'}",
                 f"checkpointing={'on' if self.checkpointing else 'off'}"]
        if self.tower_checkpointing:
            parts.append("tower_checkpointing=on")
        return ", ".join(parts)


@dataclass(frozen=True)
class Recipe:
    """What of a recipe memory depends on."""

    n_images: int
    resolution: int = 512
    views_per_image: int = 66  # whole image + n_crops + masked image
    lpips: bool = True  # the LPIPS term is on (its targets are kept for every image)

    @classmethod
    def of(cls, n_images: int, config, has_lpips: bool = True) -> Recipe:
        """From a :class:`~stylemamba.train.TrainConfig`; ``has_lpips``: an LPIPS network is given (without one the
        term is skipped and nothing of it is kept)."""
        lc = config.loss
        views = 1 + (lc.n_crops if lc.patch > 0 else 0) + (1 if lc.md > 0 else 0)
        return cls(int(n_images), int(config.resolution), views, lc.lpips > 0 and has_lpips)


def estimate_bytes(plan: MemoryPlan, recipe: Recipe) -> float:
    """Working memory (bytes) of a run under ``plan``, frozen networks NOT included (see module docstring)."""
    m = _group(plan, recipe)
    area = (recipe.resolution / 512) ** 2
    views = m * recipe.views_per_image
    if plan.tower_checkpointing and not plan.view_chunk:
        tower = views * TOWER_CKPT_PER_VIEW
    else:
        tower = min(views, max(plan.view_chunk or views, TOWER_MIN_VIEWS)) * TOWER_PER_VIEW
    decoder = 0.0 if plan.checkpointing else m * DECODER_PER_IMAGE * area
    accumulation = ACCUMULATION if m < recipe.n_images else 0.0
    lpips_targets = recipe.n_images * LPIPS_TARGET_PER_IMAGE * area if recipe.lpips else 0.0
    return BASE + accumulation + decoder + tower + m * OTHER_PER_IMAGE * area + lpips_targets


def relative_time(plan: MemoryPlan, recipe: Recipe) -> float:
    """Seconds per 20 default steps the time model predicts (only compared between plans)."""
    n = recipe.n_images
    m = _group(plan, recipe)
    t = math.ceil(n / m) * GROUP_S + n * PER_IMAGE_S
    if plan.checkpointing:
        t *= CHECKPOINTING_COST
    if plan.tower_checkpointing:
        t *= TOWER_CHECKPOINTING_COST
    views = m * recipe.views_per_image
    if plan.view_chunk and plan.view_chunk < views:
        t *= 1 + CHUNK_COST * (math.ceil(views / plan.view_chunk) - 1)
    return t


def _group(plan: MemoryPlan, recipe: Recipe) -> int:
    """Images per group under ``plan``: micro_batch 0 (an explicit plan without one) is the whole batch, not none."""
    return min(plan.micro_batch or recipe.n_images, recipe.n_images)


def candidate_plans(recipe: Recipe, micro_batching: bool = True, checkpointing: bool | None = None,
                    tower_layers: bool = True) -> list[MemoryPlan]:
    """Every plan :func:`choose_plan` considers; ``checkpointing`` True/False fixes that choice;
    ``tower_layers`` False: the tower cannot checkpoint its layers (it names none)."""
    sizes = range(recipe.n_images, 0, -1) if micro_batching else [recipe.n_images]
    ckpt = (False, True) if checkpointing is None else (checkpointing,)
    towers = [(0, False)] + ([(0, True)] if tower_layers else []) + [(c, False) for c in VIEW_CHUNKS]
    return [MemoryPlan(m, c, k, t) for m in sizes for c, t in towers for k in ckpt]


def _fastest(plans: list[MemoryPlan], recipe: Recipe) -> MemoryPlan:
    """The plan the time model says is fastest; among equals the one using more memory (less recomputation)."""
    return min(plans, key=lambda p: (relative_time(p, recipe), -estimate_bytes(p, recipe)))


def choose_plan(free_bytes: float | None, recipe: Recipe, micro_batching: bool = True,
                checkpointing: bool | None = None, tower_layers: bool = True) -> MemoryPlan:
    """The fastest plan whose estimate fits in ``SAFETY * free_bytes`` (free = after the frozen networks loaded).

    ``free_bytes`` None (CPU, or nothing known): the fast plan. Nothing fits: the smallest plan, said in
    its reason. ``micro_batching`` False keeps the whole batch (a loss that cannot be split is on);
    ``tower_layers`` False: the tower cannot checkpoint its layers.
    """
    fast = MemoryPlan(recipe.n_images, 0, bool(checkpointing))
    if free_bytes is None:
        return replace(fast, reason="no GPU memory limit known: no saving")
    budget = SAFETY * free_bytes
    plans = candidate_plans(recipe, micro_batching, checkpointing, tower_layers)
    fitting = [p for p in plans if estimate_bytes(p, recipe) <= budget]
    need = f"{estimate_bytes(fast, recipe) / GB:.1f} GB"
    if fitting:
        best = _fastest(fitting, recipe)
        if best == fast:
            why = f"fits: the fast plan needs ~{need} of {free_bytes / GB:.1f} GB free"
        else:
            why = (f"the fast plan needs ~{need} but {free_bytes / GB:.1f} GB are free: the fastest plan that fits "
                   f"needs ~{estimate_bytes(best, recipe) / GB:.1f} GB")
        return replace(best, reason=why)
    small = min(plans, key=lambda p: (estimate_bytes(p, recipe), relative_time(p, recipe)))
    why = (f"nothing fits: even the smallest plan needs ~{estimate_bytes(small, recipe) / GB:.1f} GB and "
           f"{free_bytes / GB:.1f} GB are free; trying it")
    return replace(small, reason=why)


def smaller_plan(plan: MemoryPlan, recipe: Recipe, micro_batching: bool = True,
                 tower_layers: bool = True) -> MemoryPlan | None:
    """After ``plan`` ran out of memory: the fastest plan whose estimate, beyond the fixed ``BASE``, is at most
    3/4 of ``plan``'s (the estimates can be low by a GB, e.g. with fragmentation), or None when nothing is
    smaller."""
    limit = BASE + 0.75 * (estimate_bytes(plan, recipe) - BASE)
    smaller = [p for p in candidate_plans(recipe, micro_batching, tower_layers=tower_layers)
               if estimate_bytes(p, recipe) <= limit
               and (p.checkpointing or not plan.checkpointing)]  # a checkpointed decoder stays checkpointed
    if not smaller:
        return None
    best = _fastest(smaller, recipe)
    return replace(best, reason=f"{plan.describe()} ran out of memory: retrying the step with a plan estimated at "
                                f"~{estimate_bytes(best, recipe) / GB:.1f} GB")


def parse_plan(value: str | Mapping[str, Any]) -> str | MemoryPlan:
    """``TrainConfig.memory_plan``: "auto", "fast", or an explicit plan as a mapping or a string such as
    ``"micro_batch=1,view_chunk=16,checkpointing=on"`` (missing keys: whole batch, all views, off)."""
    if isinstance(value, MemoryPlan):
        return value
    if isinstance(value, str) and value.strip().lower() in MODES:
        return value.strip().lower()
    rule = ('"auto", "fast", or "micro_batch=N,view_chunk=N,checkpointing=on|off,tower_checkpointing=on|off" '
            '(e.g. "micro_batch=1,view_chunk=16,checkpointing=on" or "checkpointing=on,tower_checkpointing=on")')
    if isinstance(value, str):
        try:
            pairs = [part.split("=", 1) for part in value.replace(" ", "").split(",") if part]
            items = dict(pairs)
        except ValueError:
            raise ValueError(f"memory_plan {value!r} is not understood: use {rule}") from None
        if len(items) < len(pairs):  # "micro_batch=1,micro_batch=2" took the last one without a word
            raise ValueError(f"memory_plan {value!r} names a key twice: use {rule}")
    elif isinstance(value, Mapping):
        items = dict(value)
    else:
        raise ValueError(f"memory_plan {value!r} is not understood: use {rule}")
    unknown = sorted(set(items) - {"micro_batch", "view_chunk", "checkpointing", "tower_checkpointing", "reason"})
    if unknown:
        raise ValueError(f"memory_plan has unknown keys {unknown}: use {rule}")
    try:
        micro, chunk = (_count(items.get(key, 0)) for key in ("micro_batch", "view_chunk"))
        ckpt, tower = (_switch(items.get(key, False)) for key in ("checkpointing", "tower_checkpointing"))
    except (TypeError, ValueError):
        raise ValueError(f"memory_plan {value!r} is not understood: use {rule}") from None
    if micro < 0 or chunk < 0:
        raise ValueError(f"memory_plan {value!r}: micro_batch and view_chunk must be >= 0 (0 = all at once); use {rule}")
    if chunk and tower:
        raise ValueError(f"memory_plan {value!r}: view_chunk and tower_checkpointing both save the image tower's "
                         "memory; use one of them (tower_checkpointing is the faster)")
    return MemoryPlan(micro, chunk, ckpt, tower, "explicit (TrainConfig.memory_plan)")


def _count(value: Any) -> int:
    """A micro_batch / view_chunk entry: a whole number (1.5 was cut to 1, True read as 1, and numpy's 2.5 as 2)."""
    value = plain(value)
    if isinstance(value, bool) or (isinstance(value, numbers.Real) and not float(value).is_integer()):
        raise ValueError(value)
    return int(value)


def _switch(value: Any) -> bool:
    """An on/off plan entry: a bool, 0 / 1, or on/off/true/false/1/0, as the options' switches (2 or None read as
    on / off without a word)."""
    value = plain(value)
    if isinstance(value, str):
        if value.lower() not in ("on", "off", "true", "false", "1", "0"):
            raise ValueError(value)
        return value.lower() in ("on", "true", "1")
    switch = as_switch(value)
    if switch is None:
        raise ValueError(value)
    return switch


def plan_to_option(plan: str | MemoryPlan) -> str | dict[str, Any]:
    """What :class:`~stylemamba.train.TrainConfig` stores (JSON-friendly)."""
    if isinstance(plan, MemoryPlan):
        option = {"micro_batch": plan.micro_batch, "view_chunk": plan.view_chunk, "checkpointing": plan.checkpointing}
        if plan.tower_checkpointing:  # only when on: recipes without it read as before (and by older versions)
            option["tower_checkpointing"] = True
        return option
    return plan


def free_training_memory(device: torch.device) -> float | None:
    """Bytes this process can still allocate on ``device`` (None on CPU), honouring
    ``torch.cuda.set_per_process_memory_fraction`` (what the benchmark's emulated small GPUs set)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    if device.index is None:  # the per-process fraction needs an index
        device = torch.device("cuda", torch.cuda.current_device())
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    available = free + torch.cuda.memory_reserved(device) - allocated
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if fraction is not None:
        available = min(available, fraction(device) * total - allocated)
    return float(max(0.0, available))
