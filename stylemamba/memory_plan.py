"""Memory planning for training: the cheapest way to run a recipe in the GPU memory that is free.

Three ways to trade time for memory, all giving the gradient of the full batch (tests/test_memory_plan.py):

* ``micro_batch``: the content images go through the step in groups of this many; each group's loss
  terms are scaled by its share of the batch and the gradients accumulate (4 images cost about the
  memory of 1).
* ``view_chunk``: the image-tower views (whole image, 64 crops, masked image per content image) go
  through the tower in chunks of this many, each chunk checkpointed (its activations recomputed in
  backward), so the tower holds the activations of one chunk instead of all views. 0 = all at once.
* ``checkpointing``: the decoder's activations are recomputed in backward.

:func:`choose_plan` is a pure function of the free memory and the recipe; :func:`estimate_bytes` is
its model, calibrated on measured H200 figures (bf16, full-size networks, 512 px, 64 crops):

=============================  ========  ====================================================================
constant                       value     source
=============================  ========  ====================================================================
``PER_IMAGE``                  9.7 GB    (41.5 - 12.4) / 3: mamba-ssm kernel, 4 images vs 1 image, eager
``DECODER_PER_IMAGE``          4.45 GB   what decoder checkpointing saved: (41.5 - 23.7) / 4 with 4 images,
                                         12.6 - 8.2 = 4.4 with 1 image
``TOWER_PER_VIEW``             60 MB     not measured alone: the per-view figure of ``train.memory_estimate``
                                         (SigLIP B/16 at 224 px keeps ~5 MB per layer per view for backward)
``OTHER_PER_IMAGE``            1.29 GB   the rest of PER_IMAGE (fusion module, VGG, LPIPS, images):
                                         9.7 - 4.45 - 66 * 0.06
``RESIDENT``                   2.0 GB    frozen networks in fp32 (docs/BENCHMARK.md, note 7)
``BASE``                       0.9 GB    12.6 - 9.7 - RESIDENT: trained weights, gradients, Adam state,
                                         workspaces (decoder + fusion ~50 M fp32 parameters x 4 = 0.8 GB)
=============================  ========  ====================================================================

The decoder and "other" terms scale with (resolution / 512)^2; tower views are always resized to the
tower's size, so their cost does not. Check: 4 images with checkpointing, 2.0 + 0.9 + 4 x 5.25 = 23.9 GB
against 23.7 GB measured.

Time model (relative; picks among plans that fit): a step of m images costs ``A + P * m`` with A = 0.73 s,
P = 1.62 s per 20 steps (measured on an H200: 2.35 s for 1 image, 7.2 s for 4); decoder checkpointing x1.14 (3.36 /
2.94 s); tower chunks x1.07 (the tower's forward is recomputed: ~8 of 109 ms per step, a third of
its 23.8 ms fwd+bwd in docs/BENCHMARK.md).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch

GB = 1e9
PER_IMAGE = 9.7 * GB
DECODER_PER_IMAGE = 4.45 * GB
TOWER_PER_VIEW = 0.06 * GB
OTHER_PER_IMAGE = PER_IMAGE - DECODER_PER_IMAGE - 66 * TOWER_PER_VIEW
RESIDENT = 2.0 * GB
BASE = 0.9 * GB
SAFETY = 0.85  # plan for this share of the free memory: fragmentation, cuDNN workspaces, estimate error [choice]
STEP_FIXED_S, STEP_PER_IMAGE_S = 0.733, 1.617
CHECKPOINTING_COST, CHUNK_COST = 1.143, 1.07
VIEW_CHUNKS = (64, 32, 16, 8)
MODES = ("auto", "fast")


@dataclass(frozen=True)
class MemoryPlan:
    """How one training run spends memory (see the module docstring); ``reason`` says why it was chosen."""

    micro_batch: int
    view_chunk: int = 0
    checkpointing: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        parts = [f"micro_batch={self.micro_batch}", f"view_chunk={self.view_chunk or 'all'}",
                 f"checkpointing={'on' if self.checkpointing else 'off'}"]
        return ", ".join(parts)


@dataclass(frozen=True)
class Recipe:
    """What of a recipe memory depends on."""

    n_images: int
    resolution: int = 512
    views_per_image: int = 66  # whole image + n_crops + masked image

    @classmethod
    def of(cls, n_images: int, config) -> Recipe:
        """From a :class:`~stylemamba.train.TrainConfig`."""
        lc = config.loss
        views = 1 + (lc.n_crops if lc.patch > 0 else 0) + (1 if lc.md > 0 else 0)
        return cls(int(n_images), int(config.resolution), views)


def estimate_bytes(plan: MemoryPlan, recipe: Recipe) -> float:
    """Working memory (bytes) of a run under ``plan``, frozen networks NOT included (see module docstring)."""
    m = min(plan.micro_batch, recipe.n_images)
    area = (recipe.resolution / 512) ** 2
    views = m * recipe.views_per_image
    tower = min(views, plan.view_chunk or views) * TOWER_PER_VIEW
    decoder = 0.0 if plan.checkpointing else m * DECODER_PER_IMAGE * area
    return BASE + decoder + tower + m * OTHER_PER_IMAGE * area


def relative_time(plan: MemoryPlan, recipe: Recipe) -> float:
    """Seconds per 20 default steps the time model predicts (only compared between plans)."""
    n = recipe.n_images
    t = math.ceil(n / plan.micro_batch) * STEP_FIXED_S + n * STEP_PER_IMAGE_S
    if plan.checkpointing:
        t *= CHECKPOINTING_COST
    if plan.view_chunk and plan.view_chunk < min(plan.micro_batch, n) * recipe.views_per_image:
        t *= CHUNK_COST
    return t


def candidate_plans(recipe: Recipe, micro_batching: bool = True, checkpointing: bool | None = None) -> list[MemoryPlan]:
    """Every plan :func:`choose_plan` considers; ``checkpointing`` True/False fixes that choice."""
    sizes = range(recipe.n_images, 0, -1) if micro_batching else [recipe.n_images]
    ckpt = (False, True) if checkpointing is None else (checkpointing,)
    return [MemoryPlan(m, c, k) for m in sizes for c in (0, *VIEW_CHUNKS) for k in ckpt]


def _fastest(plans: list[MemoryPlan], recipe: Recipe) -> MemoryPlan:
    """The plan the time model says is fastest; among equals the one using more memory (less recomputation)."""
    return min(plans, key=lambda p: (relative_time(p, recipe), -estimate_bytes(p, recipe)))


def choose_plan(free_bytes: float | None, recipe: Recipe, micro_batching: bool = True,
                checkpointing: bool | None = None) -> MemoryPlan:
    """The fastest plan whose estimate fits in ``SAFETY * free_bytes`` (free = after the frozen networks loaded).

    ``free_bytes`` None (CPU, or nothing known): the fast plan. Nothing fits: the smallest plan, said in
    its reason. ``micro_batching`` False keeps the whole batch (a loss that cannot be split is on).
    """
    fast = MemoryPlan(recipe.n_images, 0, bool(checkpointing))
    if free_bytes is None:
        return MemoryPlan(fast.micro_batch, 0, fast.checkpointing, "no GPU memory limit known: no saving")
    budget = SAFETY * free_bytes
    plans = candidate_plans(recipe, micro_batching, checkpointing)
    fitting = [p for p in plans if estimate_bytes(p, recipe) <= budget]
    need = f"{estimate_bytes(fast, recipe) / GB:.1f} GB"
    if fitting:
        best = _fastest(fitting, recipe)
        if best == fast:
            why = f"fits: the fast plan needs ~{need} of {free_bytes / GB:.1f} GB free"
        else:
            why = (f"the fast plan needs ~{need} but {free_bytes / GB:.1f} GB are free: the fastest plan that fits "
                   f"needs ~{estimate_bytes(best, recipe) / GB:.1f} GB")
        return MemoryPlan(best.micro_batch, best.view_chunk, best.checkpointing, why)
    small = min(plans, key=lambda p: estimate_bytes(p, recipe))
    why = (f"nothing fits: even the smallest plan needs ~{estimate_bytes(small, recipe) / GB:.1f} GB and "
           f"{free_bytes / GB:.1f} GB are free; trying it")
    return MemoryPlan(small.micro_batch, small.view_chunk, small.checkpointing, why)


def smaller_plan(plan: MemoryPlan, recipe: Recipe, micro_batching: bool = True) -> MemoryPlan | None:
    """After ``plan`` ran out of memory: the fastest plan whose estimate is at most 3/4 of ``plan``'s
    (the estimates can be low by a GB, e.g. with fragmentation), or None when nothing is smaller."""
    limit = 0.75 * estimate_bytes(plan, recipe)
    smaller = [p for p in candidate_plans(recipe, micro_batching) if estimate_bytes(p, recipe) <= limit
               and (p.checkpointing or not plan.checkpointing)]  # a checkpointed decoder stays checkpointed
    if not smaller:
        return None
    best = _fastest(smaller, recipe)
    return MemoryPlan(best.micro_batch, best.view_chunk, best.checkpointing,
                      f"{plan.describe()} ran out of memory: retrying the step with a plan estimated at "
                      f"~{estimate_bytes(best, recipe) / GB:.1f} GB")


def parse_plan(value: str | Mapping[str, Any]) -> str | MemoryPlan:
    """``TrainConfig.memory_plan``: "auto", "fast", or an explicit plan as a mapping or a string such as
    ``"micro_batch=1,view_chunk=16,checkpointing=on"`` (missing keys: whole batch, all views, off)."""
    if isinstance(value, MemoryPlan):
        return value
    if isinstance(value, str) and value.strip().lower() in MODES:
        return value.strip().lower()
    rule = ('"auto", "fast", or "micro_batch=N,view_chunk=N,checkpointing=on|off" (e.g. '
            '"micro_batch=1,view_chunk=16,checkpointing=on")')
    if isinstance(value, str):
        try:
            items = dict(part.split("=", 1) for part in value.replace(" ", "").split(",") if part)
        except ValueError:
            raise ValueError(f"memory_plan {value!r} is not understood: use {rule}") from None
    elif isinstance(value, Mapping):
        items = dict(value)
    else:
        raise ValueError(f"memory_plan {value!r} is not understood: use {rule}")
    unknown = sorted(set(items) - {"micro_batch", "view_chunk", "checkpointing", "reason"})
    if unknown:
        raise ValueError(f"memory_plan has unknown keys {unknown}: use {rule}")
    try:
        micro = int(items.get("micro_batch", 0))
        chunk = int(items.get("view_chunk", 0))
        ckpt = items.get("checkpointing", False)
        if isinstance(ckpt, str):
            if ckpt.lower() not in ("on", "off", "true", "false", "1", "0"):
                raise ValueError(ckpt)
            ckpt = ckpt.lower() in ("on", "true", "1")
    except (TypeError, ValueError):
        raise ValueError(f"memory_plan {value!r} is not understood: use {rule}") from None
    if micro < 0 or chunk < 0:
        raise ValueError(f"memory_plan {value!r}: micro_batch and view_chunk must be >= 0 (0 = all at once); use {rule}")
    return MemoryPlan(micro, chunk, bool(ckpt), "explicit (TrainConfig.memory_plan)")


def plan_to_option(plan: str | MemoryPlan) -> str | dict[str, Any]:
    """What :class:`~stylemamba.train.TrainConfig` stores (JSON-friendly)."""
    if isinstance(plan, MemoryPlan):
        return {"micro_batch": plan.micro_batch, "view_chunk": plan.view_chunk, "checkpointing": plan.checkpointing}
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
