"""Training a style: the paper's recipe (Sec. 4.1) and the optimisation loop.

One *epoch* is one optimisation step over the whole content batch with fresh random crops and
masks (METHOD.md: Table 2's 23 s for 20 epochs against CLIPstyler's 403 s for 200 iterations means
about one step per epoch); ``steps_per_epoch`` scales that. Everything frozen is computed once
before the loop (content latents, content image embeddings, content VGG features; the text
direction comes encoded, as a :class:`~stylemamba.direction.TextDirection`), and all image-tower
inputs of a step (:func:`step_views`) go through the tower in ONE batched call. The forward pass is
:class:`~stylemamba.style_model.StyleModel`'s, the same one Stylize runs. When memory is short, the
step runs in micro-batches / tower chunks / with decoder checkpointing (:mod:`stylemamba.memory_plan`)
and still takes the full batch's gradient.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from . import losses as L
from .current_device import indexed, runs_on_device_of, same_device
from .decoder_attention import attention_by_matmul_
from .direction import TextDirection
from .distributed import StopRequest
from .encoders import ImageTextModel, check_image_text_model
from .cuda_graphs import (CapturedCalls, GraphCaptureError, check_cuda_graph_option, is_launch_bound, timed_call,
                          trim_graph_memory, uses_async_allocator, why_the_allocator_forbids_graphs)
from .errors import OutOfMemory, is_out_of_memory, memory_kind, training_out_of_memory
from .fusion import FusionConfig
from .image_io import check_pixels, load_image
from .memory_plan import (MemoryPlan, Recipe, choose_plan, free_training_memory, parse_plan, plan_to_option,
                          smaller_plan)
from .options import SEED_RULE, check_kinds, from_options, in_seed_range
from .precision import autocast, autocast_dtype, check_precision, grad_scaler, groupnorm_in_autocast_dtype_
from .speed import COMPILE_MODES, compile_callable, compile_module_, train_in_channels_last_
from .style_file import Style, UniversalModel
from .style_model import StyleModel
from .vae import SDVAE

log = logging.getLogger("stylemamba")


STYLE_LOSSES = ("dir", "patch", "md", "so")  # the terms that pull toward the prompt (the others keep content)


def resolution_ok(resolution: int) -> bool:
    """The recipe's rule for the training size: a multiple of 8 (the VAE's latent is 1/8 of the picture), >= 64."""
    return resolution >= 64 and resolution % 8 == 0


@dataclass
class TrainConfig:
    """The paper's recipe as defaults (with the loss changes measured in docs/METHOD_CHOICES.md: LossConfig);
    every number is an option."""

    epochs: int = 20
    steps_per_epoch: int = 1
    lr: float = 5e-4
    lr_decay_epoch: int = 10  # lr is multiplied by lr_decay from this epoch on
    lr_decay: float = 0.5
    resolution: int = 512  # content images are resized (short side) and centre-cropped to this square
    seed: int = 0
    precision: str = "auto"  # "auto" (bf16 on CUDA, fp16 on pre-Ampere GPUs, fp32 on CPU) | "bf16" | "fp16" | "fp32"
    # the trained decoder in channels_last on CUDA (speed.train_in_channels_last_). cuDNN's convolutions run in
    # NHWC, so in NCHW they convert their inputs and outputs. H200, side by side (bench/results/steady_h200/callAO):
    # the step replayed as a graph 58.98 vs 62.89 ms NCHW, compiled 49.82 ms; inside ComfyUI 68-71 ms (callAO)
    # vs 74-76 in NCHW (callAG); under the 8 GB cap 1.16x the uncapped time vs 1.20x in NCHW (callAM, callAE).
    # False: NCHW
    channels_last: bool = True
    # the decoder's GroupNorms in the autocast dtype (bf16) instead of autocast's fp32 (precision.AutocastGroupNorm;
    # with NCHW 51 instead of 58 ms); no effect in fp32
    autocast_groupnorm: bool = True
    # the decoder's attention as two matrix products instead of scaled_dot_product_attention, whose only kernel
    # for its 512-wide head spent ~6 ms per H200 step in backward (stylemamba/decoder_attention.py)
    matmul_attention: bool = True
    gradient_checkpointing: bool = False  # recompute decoder activations in backward: less memory, ~30% slower
    # "off" | a torch.compile mode ("default", "max-autotune-no-cudagraphs"): compiles the decoder and the image
    # tower (stylemamba/speed.py); on an H200 the step drops from 109 to 68 ms, but the first style in a
    # process pays ~55 s of compilation (docs/BENCHMARK.md)
    compile: str = "off"
    # "auto": the fastest plan that fits the free GPU memory (stylemamba/memory_plan.py); "fast": no saving;
    # or explicit, e.g. "micro_batch=1,view_chunk=16,checkpointing=on" (or the same as a mapping)
    memory_plan: Any = "auto"
    # CUDA graphs for the training steps (stylemamba/cuda_graphs.py; only where the whole batch runs at once and
    # no fp16 gradient scaler is needed): "auto" replays the steps after the second as one graph when the second,
    # timed, shows the GPU waiting for the host's launches (a slow host, tiny or compiled networks), or when a
    # timed trial replay beats it (the fourth step); "on" always from the second step; "off": eager
    cuda_graphs: str = "auto"
    preview_every: int = 0  # steps between preview images in the progress callback (0 = none)
    loss: L.LossConfig = field(default_factory=L.LossConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def __post_init__(self):
        if isinstance(self.loss, dict):
            self.loss = L.LossConfig.from_dict(self.loss)
        if isinstance(self.fusion, dict):
            self.fusion = FusionConfig.from_dict(self.fusion)
        for name, kind, example in (("loss", L.LossConfig, '{"dir": 500}'), ("fusion", FusionConfig, '{"depth": 2}')):
            if not isinstance(getattr(self, name), kind):  # a recipe's "loss": null failed after the models loaded
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is invalid: it must be the {name} "
                                 f"settings, a JSON object such as {example}, or left out for the defaults")
        if not any(getattr(self.loss, k) > 0 for k in STYLE_LOSSES):
            raise ValueError(f"the recipe turns off every style loss ({', '.join('loss.' + k for k in STYLE_LOSSES)} "
                             "are all 0): nothing would pull the picture toward the prompt, and the style would "
                             "ignore it; set at least one above 0 (the defaults are "
                             f"{', '.join(f'{k} {getattr(L.LossConfig, k):g}' for k in STYLE_LOSSES)})")
        check_kinds(self, type(self).__name__)
        self.precision = check_precision(self.precision, f"{type(self).__name__}.precision")
        try:
            check_cuda_graph_option(self.cuda_graphs)
        except ValueError as exc:
            raise ValueError(f"TrainConfig.{exc}") from None
        try:
            self.memory_plan = plan_to_option(parse_plan(self.memory_plan))
        except ValueError as exc:
            raise ValueError(f"TrainConfig.{exc}") from None
        checks = [("epochs", self.epochs >= 1, ">= 1"), ("steps_per_epoch", self.steps_per_epoch >= 1, ">= 1"),
                  ("lr", self.lr > 0, "> 0"), ("lr_decay", self.lr_decay > 0, "> 0"),
                  ("lr_decay_epoch", self.lr_decay_epoch >= 0, ">= 0"),
                  ("preview_every", self.preview_every >= 0, ">= 0"),
                  ("resolution", resolution_ok(self.resolution), "a multiple of 8, >= 64"), ("compile", self.compile in COMPILE_MODES,
                  f"one of {', '.join(COMPILE_MODES)}"),
                  ("seed", in_seed_range(self.seed), SEED_RULE)]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is invalid: it must be {rule}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["loss"] = self.loss.to_dict()
        d["fusion"] = self.fusion.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a mapping (a --config file, or the recipe of a style file); 0.1.0's ``amp`` is ``precision``."""
        return from_options(cls, d, "training", renamed={"amp": "precision"})


# Named recipes: "paper" is the defaults (the paper's, with the measured loss changes of docs/METHOD_CHOICES.md); "cpu" trains in minutes on a CPU instead of hours
# (fewer patch crops, a narrower and shallower fusion module, 256 px; one step costs about a tenth).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": {"resolution": 256, "loss": {"n_crops": 16}, "fusion": {"width": 128, "depth": 2}},
}


def apply_preset(config: TrainConfig, name: str) -> TrainConfig:
    """``config`` with the values of preset ``name`` (see :data:`PRESETS`) set over it."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    d = config.to_dict()
    for key, value in PRESETS[name].items():
        if isinstance(value, dict):
            d[key] = {**d[key], **value}
        else:
            d[key] = value
    return type(config).from_dict(d)


@dataclass
class StepInfo:
    """What the progress callback receives after each step."""

    step: int
    total_steps: int
    epoch: int
    losses: dict[str, float]
    seconds: float
    preview: torch.Tensor | None = None  # (3,H,W) in [0,1] on CPU, every `preview_every` steps


@dataclass
class TrainResult:
    style: Style
    history: list[dict[str, float]]
    seconds: float
    steps: int
    cancelled: bool = False
    # where the time went, seconds: "setup" (content encoded, decoder copied, plan chosen), "steps" (the loop),
    # "package" (the weights to the CPU as a Style), "median_step" (between steps queued); train_style fills setup
    phases: dict[str, float] = field(default_factory=dict)

    def describe_time(self) -> str:
        """'set-up 0.31 s, 20 steps 4.52 s (median 212 ms), packaging 0.08 s': where a front end's time went."""
        p = self.phases
        if "steps" not in p:
            return f"{self.steps} steps in {self.seconds:.2f} s"
        return (f"set-up {p.get('setup', 0.0):.2f} s, {self.steps} steps {p['steps']:.2f} s (median "
                f"{p['median_step'] * 1e3:.0f} ms), packaging {p['package']:.2f} s")


class TrainingDiverged(ValueError):
    """The weights became NaN or infinite (a learning rate too high for the recipe): a style of them stylises every
    picture black, so none is made."""


class TrainingCancelled(Exception):
    """Raised when ``should_stop`` (or, without one, Ctrl-C) asks to stop; ``partial`` holds the usable style of the
    last finished step. Its message says where the style is: a script that does not catch it still has it (in
    IPython / Jupyter as ``sys.last_value.partial``)."""

    signum: int | None = None  # the signal that stopped it, where train_style's own handler took one

    def __init__(self, partial: TrainResult | None):
        super().__init__(f"training cancelled after {partial.steps} steps; the style of those steps is this "
                         "exception's .partial.style (save it with stylemamba.style_file.save_style)"
                         if partial is not None else "training cancelled before the first step: nothing trained")
        self.partial = partial


def load_content(path: str | Path, resolution: int) -> torch.Tensor:
    """An image file as training content (1,3,res,res), brought to the training size as it is read: a folder of
    phone photos kept at full size until training held gigabytes (12 MP: 144 MB each); a mistake names the file."""
    return prepare_content(load_image(path), resolution, names=[Path(path).name])


def prepare_content(images: torch.Tensor | list[torch.Tensor], resolution: int,
                    names: Sequence[str] | None = None, first: int = 0) -> torch.Tensor:
    """(B,3,H,W) or a list of (3,H,W)/(1,3,H,W) images in [0,1] -> (B,3,res,res): short side resized, centre crop.
    ``names``: what errors call the images (their files), else their positions, counted from ``first`` (the
    position of the first one in a larger set, prepared one at a time)."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if len(items) == 1 and torch.is_tensor(items[0]) and items[0].dim() == 4:
        items = list(items[0].unbind(0))
    if not items:
        raise ValueError("no content images: give at least one image to train the style on")
    out = []
    for i, im in enumerate(items):
        what = f"content image {names[i] if names else first + i}"
        if not torch.is_tensor(im):  # a path, a PIL or numpy image: a bare AttributeError ('.dim') before
            raise TypeError(f"{what} is a {type(im).__name__}: give image tensors (3,H,W) or (B,3,H,W), floats in "
                            "[0, 1]; for a file or folder, stylemamba.train.load_content(path, resolution) reads it")
        if im.dim() == 4 and im.shape[0] == 1:
            im = im[0]
        if im.dim() != 3 or im.shape[0] not in (1, 3, 4):
            raise ValueError(f"{what} has shape {tuple(im.shape)}; expected (3,H,W) RGB in [0,1]")
        check_pixels(im[None], "content image", first=first + i)
        im = im.float()
        if im.shape[0] == 1:
            im = im.expand(3, -1, -1)
        elif im.shape[0] == 4:
            im = im[:3]
        h, w = im.shape[-2:]
        if min(h, w) < 8:
            raise ValueError(f"{what} is {w}x{h} (width x height); it must be at least 8 pixels on each side")
        scale = resolution / min(h, w)
        nh, nw = max(resolution, round(h * scale)), max(resolution, round(w * scale))
        im = F.interpolate(im[None], size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)[0]
        top, left = (nh - resolution) // 2, (nw - resolution) // 2
        out.append(im[:, top:top + resolution, left:left + resolution].clamp(0, 1))
    return torch.stack(out)


Direction = TextDirection | str | Sequence[str]


def splittable_recipe(cfg: TrainConfig) -> bool:
    """Whether the recipe can run in micro-batches: CLIPstyler's TV form is one norm over the whole batch, which
    micro-batches cannot reproduce."""
    return not (cfg.loss.tv > 0 and cfg.loss.tv_form == "clipstyler")


def micro_batches_refused(option: str | MemoryPlan, batch: int, cfg: TrainConfig) -> bool:
    """Whether an explicit memory plan splits a batch the recipe cannot split (a front end asks before any model
    loads, to name its own flags)."""
    return (isinstance(option, MemoryPlan) and min(option.micro_batch or batch, batch) < batch
            and not splittable_recipe(cfg))


def skipped_losses(loss: L.LossConfig, vgg: torch.nn.Module | None, lpips: torch.nn.Module | None) -> list[str]:
    """The content losses that are weighted but cannot run for want of their network: "vgg", "lpips".

    The trainer decides with this and records the result in the style's metadata (``losses_skipped``);
    front ends call it to say so before training starts.
    """
    out = []
    if loss.uses_vgg and vgg is None:
        out.append("vgg")
    if loss.lpips > 0 and lpips is None:
        out.append("lpips")
    return out


def warn_skipped_losses(names: list[str]) -> None:
    """Say which content losses :func:`skipped_losses` found; each under the topic "<name> loss skipped", so a
    front end that said it in its own words (logs.said_already) is not repeated."""
    for name in names:
        log.warning("no %s network given: the %s loss is skipped", name.upper(), name.upper(),
                    extra={"topic": f"{name} loss skipped"})


def memory_estimate(n_images: int, resolution: int, n_crops: int) -> float:
    """Rough bytes a training run allocates on the GPU besides the VAE (for a front end to make room)."""
    return 1.5e9 + n_images * (n_crops + 2) * 6e7 + n_images * 4e9 * (resolution / 512) ** 2


@dataclass
class StepViews:
    """What the image tower sees in one training step, as ONE batch (image-major within each kind).

    Rows: the whole output Y resized to the tower's size (``batch`` rows), then ``n_crops`` random
    perspective crops per image (patch directional loss), then Y with 50 % of its patches masked
    (masked directional loss, Eq. 3), when those losses are on. ``references``: the same crops and / or
    the same masked view of the CONTENT image X (``crop_reference="same-crop"`` / ``mask_reference=
    "same-mask"``), for a gradient-free tower call; None when both references are the whole X.
    """

    images: torch.Tensor
    batch: int
    n_crops: int
    masked: bool
    references: torch.Tensor | None = None
    ref_crops: bool = False
    ref_masked: bool = False

    def split(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The tower's embeddings of :attr:`images` -> (whole images, crops or None, masked images or None)."""
        b, k = self.batch, self.batch * self.n_crops
        crops = emb[b:b + k] if self.n_crops else None
        masked = emb[b + k:b + k + b] if self.masked else None
        return emb[:b], crops, masked

    def split_references(self, emb: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The tower's embeddings of :attr:`references` -> (same crops of X or None, same-masked X or None)."""
        if emb is None:
            return None, None
        k = self.batch * self.n_crops if self.ref_crops else 0
        return (emb[:k] if self.ref_crops else None), (emb[k:k + self.batch] if self.ref_masked else None)


def resize_for_tower(y: torch.Tensor, size: int) -> torch.Tensor:
    """Images at the image tower's size; on the CPU in fp32 (its antialiased bicubic has no bf16 / fp16 kernel,
    so ``precision="bf16"`` on a CPU failed in the first step), back in ``y``'s dtype."""
    if y.device.type == "cpu" and y.dtype in (torch.bfloat16, torch.float16):
        return resize_for_tower(y.float(), size).to(y.dtype)
    return F.interpolate(y, size=(size, size), mode="bicubic", align_corners=False, antialias=True)


@dataclass
class ViewDraws:
    """The random part of a step's views for a whole batch: crop grids (row b = image b) and patch masks.

    Drawn once per step (crops first, then masks: the order :func:`~stylemamba.losses.random_crops` and
    :func:`~stylemamba.losses.patch_mask` use) and sliced per micro-batch, so micro-batches see the crops
    and masks one big batch would.
    """

    grid: torch.Tensor | None
    valid: torch.Tensor | None
    mask: torch.Tensor | None

    @classmethod
    def draw(cls, batch: int, y: torch.Tensor, loss: L.LossConfig, image_size: int,
             generator: torch.Generator | None) -> ViewDraws:
        h, w = y.shape[-2:]
        grid = valid = mask = None
        if loss.patch > 0:
            # fp32 coordinates with autocast off, as random_crops does (bf16 would lose up to half a pixel)
            dtype = torch.float64 if y.dtype == torch.float64 else torch.float32
            with torch.autocast(y.device.type, enabled=False):
                grid, valid = L.crop_grid(batch, h, w, loss.n_crops, loss.crop_size_for(h, w), image_size,
                                          loss.crop_perspective, generator, y.device, dtype)
        if loss.md > 0:
            mask = L.patch_mask(batch, h, w, patch=loss.mask_patch_for(h, image_size), ratio=loss.mask_ratio,
                                generator=generator, device=y.device)
        return cls(grid, valid, mask)

    def rows(self, start: int, end: int) -> ViewDraws:
        def cut(t):
            return None if t is None else t[start:end]
        return ViewDraws(cut(self.grid), cut(self.valid), cut(self.mask))


def _crops(y: torch.Tensor, grid: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """:func:`~stylemamba.losses.sample_crops` in fp32 with autocast off, back in ``y``'s dtype (as random_crops)."""
    dtype = y.dtype
    with torch.autocast(y.device.type, enabled=False):
        out = L.sample_crops(y.float() if dtype in (torch.float16, torch.bfloat16) else y, grid, valid)
    return out.to(dtype)


def step_views(y: torch.Tensor, loss: L.LossConfig, image_size: int,
               generator: torch.Generator | None = None, draws: ViewDraws | None = None,
               content: torch.Tensor | None = None) -> StepViews:
    """The image-tower inputs a training step builds from its output ``y`` (B,3,H,W) (see :class:`StepViews`).

    Crops and masks are drawn from ``generator`` (crops first, then masks), as the trainer does, unless
    ``draws`` (for exactly these B images) is given. ``content``: the content images X of these rows,
    needed when a reference is the same crop / mask of X (``LossConfig.references``).
    """
    b = y.shape[0]
    if draws is None:
        draws = ViewDraws.draw(b, y, loss, image_size, generator)
    views, refs = [resize_for_tower(y, image_size)], []
    ref_crops = loss.patch > 0 and loss.crop_reference == "same-crop"
    ref_masked = loss.md > 0 and loss.mask_reference == "same-mask"
    if (ref_crops or ref_masked) and content is None:
        raise ValueError("step_views: the same-crop / same-mask references need the content images (content=...)")
    n_crops = 0
    if loss.patch > 0:
        views.append(_crops(y, draws.grid, draws.valid))
        n_crops = loss.n_crops
        if ref_crops:
            refs.append(_crops(content.to(y.dtype), draws.grid, draws.valid))
    if loss.md > 0:
        views.append(resize_for_tower(L.apply_mask(y, draws.mask, fill=loss.mask_fill), image_size))
        if ref_masked:
            masked = L.apply_mask(content.to(y.dtype), draws.mask, fill=loss.mask_fill)
            refs.append(resize_for_tower(masked, image_size))
    references = torch.cat([v.to(y.dtype) for v in refs]).detach() if refs else None
    return StepViews(torch.cat([v.to(y.dtype) for v in views]), b, n_crops, loss.md > 0, references, ref_crops,
                     ref_masked)


def seen_output(y_raw: torch.Tensor, loss: L.LossConfig) -> torch.Tensor:
    """What the losses see of the decoder's raw output: clamped to [0, 1] (``clamp_output``, as users get it)
    or raw (the paper)."""
    return y_raw.clamp(0, 1) if loss.clamp_output else y_raw


def content_terms(y: torch.Tensor, y_raw: torch.Tensor, x: torch.Tensor, feats_x: Sequence[torch.Tensor] | None,
                  loss: L.LossConfig, vgg: torch.nn.Module | None, lpips: torch.nn.Module | None,
                  lpips_x: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The unweighted content and prior terms of a step (vgg, lpips, tv on what the losses see; range on
    the raw output); ``feats_x``: X's VGG features, or None when the VGG loss is off or skipped; ``lpips_x``:
    X's LPIPS target features (:func:`lpips_targets`), or None to compute them from X."""
    terms = {}
    if feats_x is not None and vgg is not None:
        terms["vgg"] = L.content_loss(vgg(y), feats_x, loss.vgg_reduction)
    if lpips is not None and loss.lpips > 0:
        terms["lpips"] = lpips(y, target=lpips_x) if lpips_x is not None else lpips(y, x)
    if loss.tv > 0:
        terms["tv"] = L.total_variation(y, form=loss.tv_form)
    if loss.range_weight > 0:
        terms["range"] = L.range_penalty(y_raw)
    return terms


def lpips_targets(lpips: torch.nn.Module | None, x: torch.Tensor, loss: L.LossConfig) -> list[torch.Tensor] | None:
    """X's LPIPS features, computed once per style (see ``LPIPSLoss.target_features``; call it without gradients);
    None without the LPIPS term or for an LPIPS network that cannot take them (it then compares with X every
    step)."""
    if lpips is None or loss.lpips <= 0 or not hasattr(lpips, "target_features"):
        return None
    return lpips.target_features(x)


def enable_decoder_checkpointing(decoder: torch.nn.Module) -> None:
    """Recompute the trainable decoder's activations in the backward pass (less memory, ~30 % slower)."""
    dec = decoder.decoder
    if hasattr(dec, "gradient_checkpointing"):  # diffusers' Decoder
        dec.gradient_checkpointing = True
        dec._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    else:
        log.warning("this decoder (%s) has no gradient checkpointing; training without it", type(dec).__name__)


@contextlib.contextmanager
def layers_recomputed(layers: Sequence[torch.nn.Module]):
    """Within the block, each layer keeps only its inputs for backward and recomputes the rest there (the image
    tower's layers: all views still go through each layer as one batch). No random state is saved: the frozen
    tower runs in eval mode and draws nothing. The layers are restored afterwards (the tower is shared)."""
    patched = []
    try:
        for layer in layers:
            own = layer.__dict__.get("forward")  # an instance-level forward someone else set, kept
            inner = own if own is not None else type(layer).forward.__get__(layer)
            layer.forward = functools.partial(torch.utils.checkpoint.checkpoint, inner, use_reentrant=False,
                                              preserve_rng_state=False)
            patched.append((layer, own))
        yield
    finally:
        for layer, own in patched:
            if own is None:
                del layer.forward
            else:
                layer.forward = own


def tower_layers(text: ImageTextModel) -> list[torch.nn.Module]:
    """The image tower's layers a memory plan may checkpoint, [] when the model names none."""
    layers = getattr(text, "image_layers", None)
    return list(layers()) if callable(layers) else []


# cuda_graphs="auto": whether graphs paid (True) for a kind of step in this process, so the next style of the same
# recipe, shapes and networks replays from its second step instead of measuring again (an eager step, a trial and
# synchronisations less per style; the host does not change within a process)
_graphs_pay: dict[tuple, bool] = {}

# a replay must take at most this share of the eager step's time to keep the graphs (a trial of one replay
# decides where the eager step was not plainly launch-bound)
GRAPH_GAIN = 0.95


def _never_free(obj: Any) -> None:
    """Keep ``obj`` until the process ends, its shutdown included (one reference nothing drops): what captures
    allocated under cudaMallocAsync for graphs that never ran, whose free aborts the process
    (:meth:`StyleTrainer._drop_gradients_of_unrun_graph`)."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def step_kind(trainer: StyleTrainer) -> tuple:
    """What decides whether a trainer's steps replay faster as graphs: the networks, the device, the content's
    shape and the recipe apart from its seed, learning rates, step counts and previews (they change values or
    how many steps run, not a step's launches)."""
    plan = dataclasses.replace(trainer.plan, reason="")  # the reason quotes the free memory of the moment
    return (str(trainer.device), tuple(trainer.x.shape), _recipe_kind(trainer.cfg), plan,
            _network_kind(trainer.vae, trainer.text, trainer.vgg, trainer.lpips))


def _recipe_kind(cfg: TrainConfig) -> str:
    """The recipe apart from what changes a step's values or the number of steps, not its launches: seed, learning
    rates, step counts, previews, the source prompt."""
    recipe = {k: v for k, v in cfg.to_dict().items()
              if k not in ("seed", "lr", "lr_decay", "epochs", "steps_per_epoch", "lr_decay_epoch", "preview_every")}
    recipe["loss"] = {k: v for k, v in recipe["loss"].items() if k != "source_prompt"}
    return repr(sorted(recipe.items()))


def _network_kind(vae: SDVAE, text, vgg, lpips, addresses: bool = False) -> tuple:
    """The networks by identity (the VAE by its decoder: a front end may wrap the same VAE anew each time), with
    their type and size so that a network freed and replaced at the same address (ComfyUI unloading one model,
    loading another) is unlikely to be taken for it; ``addresses``: and where their weights are (a CUDA graph
    reads them there: moved to the CPU and back, they are elsewhere)."""
    def kind(m, addresses):
        if m is None:
            return None
        params = list(m.parameters())
        where = tuple(t.data_ptr() for t in (*params, *m.buffers())) if addresses else ()
        return id(m), type(m).__name__, sum(p.numel() for p in params), where
    # the VAE is only read outside the steps (its encoder before them, its decoder's weights by a restart)
    return (kind(vae.decoder, False), kind(text, addresses), kind(vgg, addresses), kind(lpips, addresses))


def workspace_kind(vae: SDVAE, text, vgg, lpips, device: torch.device | str | None, n_images: int,
                   config: TrainConfig) -> tuple:
    """When a trainer can be restarted for a new style (:meth:`StyleTrainer.restart`): the same networks (those the
    steps read still at the same addresses), device, latent scaling, number of images and recipe (apart from seed,
    learning rates, step counts, previews and prompts, which a restart sets)."""
    device = torch.device(device) if device is not None else vae.device
    return (str(device), int(n_images), float(vae.scaling_factor), _recipe_kind(config),
            _network_kind(vae, text, vgg, lpips, addresses=True))


def image_count(content) -> int:
    """How many content images ``content`` holds (a list, a (B,3,H,W) batch or one (3,H,W) image)."""
    if isinstance(content, (list, tuple)):
        return len(content)
    return content.shape[0] if content.dim() == 4 else 1


def _copied(*outputs: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Copies of a replayed step's outputs (the next replay overwrites them; None stays None). The step has
    already updated the weights, so copies that find no memory must not make the caller retry the whole step:
    the cache is emptied and they are tried once more."""
    for attempt in (0, 1):
        try:
            return tuple(None if t is None else t.clone() for t in outputs)
        except torch.cuda.OutOfMemoryError:
            if attempt:
                raise
            torch.cuda.empty_cache()


class CaptureOutOfMemory(torch.cuda.OutOfMemoryError):
    """The step's graph did not fit beside what the eager steps keep (12 GB card, fast plan, call J), though the
    plan fitted eagerly: :meth:`StyleTrainer.step_within_memory` takes a smaller plan, or eager steps."""


def why_steps_run_eagerly(plan: MemoryPlan, batch: int, device: torch.device, precision: str,
                          compiled: bool = False) -> str | None:
    """Why a training step on CUDA cannot be replayed as one CUDA graph, or None when it can. Every memory plan
    can: micro-batches, tower chunks and recomputation are more launches of the same static shapes, all on the
    GPU (so the plans that small cards need are the ones that gain most from graphs)."""
    forbidden = why_the_allocator_forbids_graphs(compiled, device)
    if forbidden:
        return forbidden
    if autocast_dtype(device, precision) == torch.float16:
        return "fp16's gradient scaler checks for overflow on the host"
    return None


def _as_direction(text: ImageTextModel, direction: Direction, prompt_weights: list[float] | None,
                  source_prompt: str) -> TextDirection:
    if isinstance(direction, TextDirection):
        if prompt_weights is not None:
            raise ValueError("prompt_weights belong to the TextDirection: pass them to TextDirection.encode")
        direction.check_text_model(text)
    else:
        direction = TextDirection.encode(text, direction, prompt_weights, source_prompt)
    return _check_length(direction)


def _check_same_text_model_kind(start: Style, text: ImageTextModel) -> None:
    """A style fine-tuned with another kind of text model of the same width (SigLIP-base and CLIP-L are both 768-d):
    its fusion module reads another embedding space, and it trained on without a word."""
    trained, now = start.metadata.get("text_model_kind"), getattr(text, "kind", "")
    if trained and now and trained != now:
        raise ValueError(f"style '{start.name}' was trained with a {trained} text model "
                         f"({start.metadata.get('text_model', '?')}), this run encodes with a {now} one: its fusion "
                         "module reads another embedding space; give the text model it was trained with (--text-model, "
                         "or the Load Text Model node)")


def _check_length(direction: TextDirection) -> TextDirection:
    """Refuse a style that points nowhere: its prompt encodes as the source prompt (or its reference picture as
    the content photos), so the directional losses stay at 1 and give no gradient; the "style" would be noise."""
    length = float(direction.direction.norm())
    styles = ", ".join(repr(p) for p in direction.prompts)
    if not math.isfinite(length):  # NaN embeddings (a broken text or image model): every loss would be NaN
        raise ValueError(f"the style {styles} encodes as NaN or infinite values: the text model "
                         f"{direction.text_model!r} (or, for a reference picture, its image tower) gives invalid "
                         "embeddings; check that model's files")
    if length < 1e-4:
        raise ValueError(f"the style {styles} encodes the same as the source prompt {direction.source_prompt!r} "
                         f"(direction length {length:.1e}): there is nothing to learn; write a style prompt that "
                         "differs from the source prompt (for a reference picture: one that does not look like the "
                         "content photos)")
    return direction


class StyleTrainer:
    """Holds everything a training run needs; ``run()`` executes it. Usable once.

    ``direction``: a :class:`~stylemamba.direction.TextDirection` (used as it is), or prompt(s)
    encoded here with ``text`` (``prompt_weights``, ``config.loss.source_prompt``).
    """

    @runs_on_device_of("vae")
    def __init__(self, vae: SDVAE, text: ImageTextModel, content: torch.Tensor | list[torch.Tensor],
                 direction: Direction, config: TrainConfig | None = None,
                 prompt_weights: list[float] | None = None, vgg: torch.nn.Module | None = None,
                 lpips: torch.nn.Module | None = None, device: torch.device | str | None = None,
                 free_memory: float | None = None, start: Style | UniversalModel | None = None):
        check_image_text_model(text)
        config = config or TrainConfig()
        self.device = indexed(device) if device is not None else vae.device  # "cuda": the VAE's GPU (current here)
        self.vae, self.text, self.vgg, self.lpips = vae, text, vgg, lpips
        self.tower_layers = tower_layers(text)  # what tower_checkpointing recomputes
        for what, dev in (("VAE", vae.device), ("text model", text.device)):
            if not same_device(dev, self.device):
                raise ValueError(f"the {what} is on {dev} but training was asked to run on {self.device}: "
                                 f"move it first (e.g. .to('{self.device}')) or pass device={str(dev)!r}")
        self.gen = torch.Generator(device=self.device)
        self._take_style(content, direction, config, prompt_weights, start)
        lc = self.cfg.loss
        self.model = StyleModel.for_training(vae, self.cfg.fusion, self.direction.e_t, start=self.start)
        if self.cfg.autocast_groupnorm:
            groupnorm_in_autocast_dtype_(self.model.decoder)
        if self.cfg.matmul_attention:
            attention_by_matmul_(self.model.decoder)
        if self.cfg.channels_last and self.device.type == "cuda":
            train_in_channels_last_(self.model.decoder)
        self.plan = self._plan(free_memory)
        log.info("memory plan: %s (%s)", self.plan.describe(), self.plan.reason)
        if self.plan.checkpointing:
            enable_decoder_checkpointing(self.model.decoder)
        # torch.compile (speed.py) of the two networks where it paid on an H200 (docs/BENCHMARK.md): the
        # decoder in place (state-dict keys unchanged) and the shared image tower through a wrapper
        compile_module_(self.model.decoder, self.cfg.compile)
        self.encode_image = compile_callable(text.encode_image, self.cfg.compile)  # the step's image tower
        self.scaler = grad_scaler(self.device, self.cfg.precision)
        self.graphs = self._step_graphs()
        # the fused Adam kernel: one launch for all parameters (0.6 ms instead of 1.8 ms per step on an H200);
        # replayed in a graph it keeps its state and the learning rate on the device
        lr = torch.tensor(self.cfg.lr, device=self.device) if self.graphs is not None else self.cfg.lr
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, fused=True if self.device.type == "cuda" else None,
                                    capturable=self.graphs is not None)
        # the loss weights as device tensors under graphs (set before each replay), python floats otherwise
        self._weights = ({k: torch.zeros((), device=self.device) for k in lc.weights(0)}
                         if self.graphs is not None else None)
        self._prev_buffer: torch.Tensor | None = None
        self._on_device: dict[str, float] = {}  # the values last set in the learning-rate and weight tensors
        self._term_names: dict[Any, tuple[str, ...]] = {}  # per graph: the names of its stacked loss terms
        self._warm = False
        self._graphs_decided = False  # cuda_graphs="auto": whether the timed step has decided yet
        self._trial: tuple | None = None  # "auto": (key, seconds) of the timed eager step while its trial is pending
        self.prev_emb: torch.Tensor | None = None  # F_I(Y(i)) of the previous epoch (second-order loss)
        self.last_emb: torch.Tensor | None = None  # F_I(Y) of the last step
        self.history: list[dict[str, torch.Tensor]] = []

    def _take_style(self, content, direction: Direction, config: TrainConfig, prompt_weights: list[float] | None,
                    start: Style | UniversalModel | None) -> None:
        """What one style's training starts from: its direction, recipe, seeds and the frozen networks' view of
        its content (latents, image embeddings, VGG features), computed once before the steps."""
        self._recipe = _recipe_kind(config)  # what a restart must keep (the buffers the steps read depend on it)
        self.direction = _as_direction(self.text, direction, prompt_weights, config.loss.source_prompt)
        if isinstance(start, UniversalModel):  # fine-tuning: the universal model's style for this direction,
            from .universal import style_from_universal  # checked to come from its text model (universal imports us)

            start = style_from_universal(start, self.direction)
        elif start is not None:
            _check_same_text_model_kind(start, self.text)
        self.start = start
        # the recipe recorded in the style names the source prompt the direction really used (and the
        # architecture of the starting style's fusion module, when there is one)
        fusion_cfg = FusionConfig.from_dict(start.fusion_config) if start is not None else config.fusion
        self.cfg = dataclasses.replace(config, fusion=fusion_cfg, loss=dataclasses.replace(
            config.loss, source_prompt=self.direction.source_prompt))
        lc = self.cfg.loss
        self.skipped_losses = skipped_losses(lc, self.vgg, self.lpips)  # recorded in the style's metadata
        warn_skipped_losses(self.skipped_losses)

        torch.manual_seed(self.cfg.seed)
        self.gen.manual_seed(self.cfg.seed)
        with torch.no_grad():
            self.x = prepare_content(content, self.cfg.resolution).to(self.device)
            self.z = self.vae.encode(self.x)
            with autocast(self.device, self.cfg.precision):
                self.emb_x = self.text.encode_image(self.x).float()
                self.feats_x = ([f.detach() for f in self.vgg(self.x)] if (self.vgg is not None and lc.uses_vgg)
                                else None)
                self.lpips_x = lpips_targets(self.lpips, self.x, lc)
        # e_t - e_src, raw: the cosine losses normalise it, the norm-ratio losses need its length (one row per
        # image, stored: a restarted trainer copies the next style's into it)
        self.text_dir = self.direction.direction.to(self.device).expand(self.x.shape[0], -1).contiguous()

    @runs_on_device_of("self")
    def restart(self, content, direction: Direction, config: TrainConfig | None = None,
                prompt_weights: list[float] | None = None) -> None:
        """Make this trainer, after a run, train a NEW style of the same kind (:func:`workspace_kind`) as a
        fresh one would: same recipe semantics, same random draws, same result. Every tensor the steps read
        keeps its address (new values are copied in), so the decoder copy, the optimizer and the CUDA graphs
        of the last style are used again (what :class:`TrainingWorkspace` is for): no decoder copy, no eager first
        step and no capture (the first step's graph, which a fresh trainer ran eagerly, is recorded when the
        workspace keeps the trainer: :meth:`record_restart_step`)."""
        config = config or TrainConfig()
        if _recipe_kind(config) != self._recipe:
            raise ValueError("StyleTrainer.restart: the new recipe is of another kind than the one this trainer was "
                             "built for (only seed, learning rates, step counts, previews and prompts may change): "
                             "build a new StyleTrainer, or let TrainingWorkspace choose")
        if image_count(content) != self.x.shape[0]:
            raise ValueError(f"StyleTrainer.restart: {image_count(content)} content image(s) where this trainer "
                             f"was built for {self.x.shape[0]}: build a new StyleTrainer, or let TrainingWorkspace "
                             "choose")
        kept = (self.x, self.z, self.emb_x, self.feats_x, self.lpips_x, self.text_dir)
        self._take_style(content, direction, config, prompt_weights, None)
        fresh = (self.x, self.z, self.emb_x, self.feats_x, self.lpips_x, self.text_dir)
        with torch.no_grad():
            for old, new in zip(kept, fresh):  # (the features are lists, or None without their loss)
                for o, n in zip(*((old, new) if isinstance(old, list) else ([old], [new]))):
                    if o is not None:
                        o.copy_(n)
            self.x, self.z, self.emb_x, self.feats_x, self.lpips_x, self.text_dir = kept
            self.model.restart_training_(self.cfg.fusion, self.direction.e_t)
            for state in self.opt.state.values():  # Adam's moments and step count back to their start, in place
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        value.zero_()
        self.scaler = grad_scaler(self.device, self.cfg.precision)  # fp16's loss scale starts again too
        self.opt.zero_grad(set_to_none=True)
        self.prev_emb = self.last_emb = None
        self.history = []  # a trial replay still pending (a style too short to reach it) stays pending

    def _plan(self, free_memory: float | None) -> MemoryPlan:
        """The memory plan of this run: TrainConfig.memory_plan, or chosen from the free memory ("auto")."""
        cfg, b = self.cfg, self.x.shape[0]
        splittable = self._splittable()
        option = parse_plan(cfg.memory_plan)
        forced = cfg.gradient_checkpointing
        if option == "fast":
            return MemoryPlan(b, 0, forced, reason="TrainConfig.memory_plan='fast': no memory saving")
        if option == "auto":
            free = free_memory if free_memory is not None else free_training_memory(self.device)
            if free is None and self.device.type == "cpu":
                return MemoryPlan(b, 0, forced, reason="training on the CPU: no GPU memory to save")
            return choose_plan(free, Recipe.of(b, cfg, self.lpips is not None), splittable, True if forced else None,
                               bool(self.tower_layers))
        micro = min(option.micro_batch or b, b)
        if micro_batches_refused(option, b, cfg):
            raise ValueError(f"memory_plan micro_batch={micro} cannot be used with the 'clipstyler' total variation "
                             "(one norm over the whole batch): set micro_batch to 0 (whole batch) or "
                             "LossConfig.tv_form='l1'")
        if option.tower_checkpointing and not self.tower_layers:
            log.warning("memory_plan tower_checkpointing: this image-text model (%s) names no layers to checkpoint; "
                        "its tower runs as without it", type(self.text).__name__)
        return dataclasses.replace(option, micro_batch=micro, checkpointing=option.checkpointing or forced)

    def _step_graphs(self) -> CapturedCalls | None:
        """CUDA graphs for the steps (``cuda_graphs="auto"``) where they can be captured, else None (logged)."""
        if self.cfg.cuda_graphs == "off" or self.device.type != "cuda":
            return None
        why = why_steps_run_eagerly(self.plan, self.x.shape[0], self.device, self.cfg.precision,
                                    compiled=self.cfg.compile != "off")
        if why:
            log.info("stylemamba: training steps run eagerly, without CUDA graphs: %s", why)
            return None
        log.info("stylemamba: training steps %s (cuda_graphs=%r)", "replay as CUDA graphs after the first"
                 if self.cfg.cuda_graphs == "on" else "may replay as CUDA graphs (decided on the second)",
                 self.cfg.cuda_graphs)
        return CapturedCalls((self.gen,))

    def _splittable(self) -> bool:
        return splittable_recipe(self.cfg)

    # ------------------------------------------------------------------ one step
    def lr_at(self, epoch: int) -> float:
        return self.cfg.lr * (self.cfg.lr_decay if epoch >= self.cfg.lr_decay_epoch else 1.0)

    @runs_on_device_of("self")
    def step(self, epoch: int, keep_output: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """One optimisation step; returns the detached loss terms and the raw output Y (no host sync), or None
        for Y when ``keep_output`` is False (a replayed step then copies nothing it will not need).

        Under a plan with micro-batches each group's terms are scaled by its share of the batch (every
        term is a mean over images, crops or pixels) and the gradients accumulate: the gradient, the
        logged terms and Y are the whole batch's.
        """
        for i, group in enumerate(self.opt.param_groups):
            if isinstance(group["lr"], torch.Tensor):
                self._set_on_device(f"lr {i}", group["lr"], self.lr_at(epoch))
            else:
                group["lr"] = self.lr_at(epoch)
        weights = self.cfg.loss.weights(epoch)
        if self._weights is not None:  # graphs: the same tensors in every replay, new values
            for k, v in weights.items():
                self._set_on_device(k, self._weights[k], v)
            weights = self._weights
        terms, y, self.last_emb = self._eager_or_graphed_step(epoch, weights, keep_output)
        return terms, y

    def _set_on_device(self, name: str, tensor: torch.Tensor, value: float) -> None:
        """``tensor.fill_(value)`` only when the value changed: the weights and the learning rate change at a few
        epochs, and each fill is a launch the host pays around every replayed step."""
        if self._on_device.get(name) != value:
            tensor.fill_(value)
            self._on_device[name] = value

    def _eager_or_graphed_step(self, epoch: int, weights: dict, keep_output: bool = True
                               ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor]:
        """:meth:`_step_body` run eagerly or replayed as a CUDA graph. A replay runs no Python, so everything the
        step produces leaves it as an output; a graph's outputs are overwritten by its next replay, so the loss
        terms (one stacked tensor) and Y (when kept) are copied, and F_I(Y) is read by :meth:`end_epoch` before
        the next replay."""
        if self.graphs is None:
            return self._step_body(epoch, weights)
        key = self._graph_key(epoch)
        if not self._warm:  # the run's first step: eager (builds the optimizer state, warms up what is lazy)
            self._warm = True
            return self._step_body(epoch, weights)
        if self.cfg.cuda_graphs == "auto" and not self._graphs_decided:
            self._graphs_decided = True
            known = _graphs_pay.get(step_kind(self))
            if known is None:
                return self._timed_eager_step(epoch, weights, key)
            log.info("stylemamba: steps of this kind were measured earlier in this process: %s",
                     "they replay as a CUDA graph" if known else "training stays eager")
            if not known:
                self._train_eagerly()
                return self._step_body(epoch, weights)
        if key not in self.graphs:
            # the gradients of the steps before go now rather than inside the capture, which cannot give their memory
            # back (under cudaMallocAsync torch defers those frees)
            self.opt.zero_grad(set_to_none=True)
        if not len(self.graphs):
            # the eager steps' cached blocks go back before the graph's own pool is filled: on a card with room
            # for one step's memory but not two, the capture ran out of memory with them held (12 GB emulated,
            # fast plan, call J), and the allocator cannot free them during a capture
            torch.cuda.empty_cache()
        body = self._graph_body(epoch, weights, key)
        try:
            if self._trial is not None and self._trial[0] == key and key in self.graphs:
                stacked, y, emb = self._timed_replay_decides(key, body)
            else:
                stacked, y, emb = self.graphs(key, body)
        except GraphCaptureError as exc:
            self._drop_gradients_of_unrun_graph()
            if isinstance(exc.__cause__, torch.cuda.OutOfMemoryError):
                raise CaptureOutOfMemory(str(exc)) from None  # no traceback holding the capture's tensors
            log.warning("stylemamba: CUDA graph capture of the training step failed; training eagerly (%s)", exc)
            _graphs_pay[step_kind(self)] = False  # later styles of this kind: eager, no capture to fail
            self._train_eagerly()
            return self._step_body(epoch, weights)
        # F_I(Y) is copied only when the graphs were just dropped (a losing trial): their outputs must not outlive
        # them; otherwise end_epoch reads it before the next replay
        stacked, y, kept_emb = _copied(stacked, y if keep_output else None, emb if self.graphs is None else None)
        return dict(zip(self._term_names[key], stacked.unbind(0))), y, emb if kept_emb is None else kept_emb

    def _graph_key(self, epoch: int) -> tuple[bool, bool]:
        """The kind of step a graph records: whether L_so has a previous epoch's image, and whether it applies."""
        lc = self.cfg.loss
        return (self.prev_emb is not None, lc.so > 0 and epoch >= lc.so_interval and epoch % lc.so_interval == 0)

    def _graph_body(self, epoch: int, weights: dict, key: tuple) -> Callable[[], tuple]:
        def body():  # the terms as ONE tensor: one copy per step instead of one per term
            logged, y, emb = self._step_body(epoch, weights)
            self._term_names[key] = tuple(logged)
            return torch.stack(list(logged.values())), y, emb
        return body

    @runs_on_device_of("self")
    def record_restart_step(self) -> bool:
        """Record now the graph of a restarted style's first step, which a fresh trainer ran eagerly: the next style
        (:meth:`restart`) then replays from its first step instead of capturing it (~0.1 s of host time at 512 px
        on an H200, the first restart's extra in callAS/AV). With torch's own allocator nothing runs on the GPU
        (a capture only records); under cudaMallocAsync the graph runs once (~60 ms of GPU time, see below), and
        the restart resets all it changes. False when there is nothing to record (eager steps, a trial pending,
        already recorded) or the recording failed (then the restart records it, as before)."""
        if self.graphs is None or not len(self.graphs) or self._trial is not None or self.model is None:
            return False
        prev, self.prev_emb = self.prev_emb, None  # as after restart()
        try:
            key = self._graph_key(0)
            if key in self.graphs:
                return False
            self.opt.zero_grad(set_to_none=True)  # as a restart's first step (outside the capture)
            body = self._graph_body(0, self._weights, key)
            try:
                self.graphs.record(key, body)
            except (GraphCaptureError, torch.cuda.OutOfMemoryError) as exc:
                self._drop_gradients_of_unrun_graph()
                log.info("stylemamba: the next style's first step was not recorded ahead (%s); it will be then", exc)
                return False
            if uses_async_allocator():
                # under cudaMallocAsync what a capture allocates exists only once its graph has run, and the restart
                # frees the gradients the capture made: freed first, they aborted ComfyUI ("invalid argument",
                # callAW). So the graph runs once now; the restart resets all it changes (weights, Adam's state,
                # the generator)
                try:
                    self.graphs(key, body)
                except Exception as exc:  # noqa: BLE001 - a launch that failed: the steps go on eagerly
                    _never_free(self.graphs.entry(key))  # its outputs were allocated by a graph that never ran
                    self._drop_gradients_of_unrun_graph()
                    self._train_eagerly()
                    log.warning("stylemamba: the recorded first step of the next style did not run (%s); the next "
                                "styles train eagerly", exc)
                    return False
            return True
        finally:
            self.prev_emb = prev

    def _drop_gradients_of_unrun_graph(self) -> None:
        """The gradients set to None after a capture whose graph never ran (it failed, or its launch did). Under
        cudaMallocAsync such a capture's allocations never came to exist and freeing them aborts the process
        ("invalid argument", callAW), so they are kept, unused, until it ends."""
        if uses_async_allocator():
            _never_free([p.grad for p in self.model.parameters() if p.grad is not None])
        self.opt.zero_grad(set_to_none=True)

    def _train_eagerly(self) -> None:
        """The steps from here on run eagerly: the graphs (their pool) and the buffer they read go."""
        self.graphs, self._prev_buffer = None, None

    def _timed_eager_step(self, epoch: int, weights: dict, key) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                                         torch.Tensor]:
        """The second step, eager and timed from an idle GPU. When the host needed nearly as long to launch it as
        the GPU to run it (:func:`~stylemamba.cuda_graphs.is_launch_bound`), the next steps replay as a graph.
        Otherwise the ratio cannot tell: the full-size step launched in 62 of its 81 ms replayed in 65 ms against
        90 ms eagerly (ComfyUI with --disable-cuda-malloc, call N), the host falling behind in some phases and
        running ahead in others; so the next step is captured and the one after it, a timed replay, decides
        (:meth:`_timed_replay_decides`: a replay of this same kind of step, ``key``)."""
        out, launched, ran = timed_call(lambda: self._step_body(epoch, weights), self.device)
        if is_launch_bound(launched, ran):
            _graphs_pay[step_kind(self)] = True
            log.info("stylemamba: the step is launch-bound (launched in %.1f of its %.1f ms): the next steps replay "
                     "as a CUDA graph", launched * 1e3, ran * 1e3)
        else:
            self._trial = (key, ran)
            log.info("stylemamba: the step launched in %.1f of its %.1f ms: a trial replay decides whether CUDA "
                     "graphs pay", launched * 1e3, ran * 1e3)
        return out

    def _timed_replay_decides(self, key, body) -> Any:
        """A replay of a captured step, timed from an idle GPU like the eager step: the graphs stay when it took at
        most :data:`GRAPH_GAIN` of the eager time, else training goes on eagerly (their memory freed)."""
        eager, self._trial = self._trial[1], None
        out, _, ran = timed_call(lambda: self.graphs(key, body), self.device)
        pays = ran <= GRAPH_GAIN * eager
        _graphs_pay[step_kind(self)] = pays
        log.info("stylemamba: a replay took %.1f ms against %.1f ms eagerly: %s", ran * 1e3, eager * 1e3,
                 "the steps replay as a CUDA graph" if pays else "training goes on eagerly")
        if not pays:  # the outputs keep their blocks of the graphs' pool until the caller's copies replace them
            self._train_eagerly()
        return out

    def _step_body(self, epoch: int, weights: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Forward, backward and optimizer update -> (logged terms, Y, F_I(Y) for the next epoch's L_so)."""
        b = self.x.shape[0]
        groups = [(s, min(s + self.plan.micro_batch, b)) for s in range(0, b, self.plan.micro_batch)]
        gate = self._second_order_gate(epoch, groups) if len(groups) > 1 else None
        self.opt.zero_grad(set_to_none=True)
        draws, ys, embs, logged, total_sum = None, [], [], {}, None
        for start, end in groups:
            with autocast(self.device, self.cfg.precision):
                y, emb_y, terms, draws = self._forward_terms(start, end, epoch, gate, draws)
                if len(groups) > 1:
                    terms = {k: v * ((end - start) / b) for k, v in terms.items()}
                total = L.total_loss(terms, weights)
            self.scaler.scale(total).backward()
            ys.append(y.detach())
            embs.append(emb_y.detach().float())
            for k, v in terms.items():
                logged[k] = v.detach().float() if k not in logged else logged[k] + v.detach().float()
            total_sum = total.detach().float() if total_sum is None else total_sum + total.detach().float()
        self.scaler.step(self.opt)
        self.scaler.update()
        logged["total"] = total_sum
        return logged, ys[0] if len(ys) == 1 else torch.cat(ys), embs[0] if len(embs) == 1 else torch.cat(embs)

    @runs_on_device_of("self")
    def loss_terms(self, epoch: int) -> dict[str, torch.Tensor]:
        """The unweighted terms of the whole batch at the current weights, as a step at ``epoch`` would take
        them, with the graph kept (for diagnostics such as each term's share of the gradient). The random
        generator is left as it was, so training continues unchanged; nothing is optimised."""
        state = self.gen.get_state()
        try:
            with autocast(self.device, self.cfg.precision):
                return self._forward_terms(0, self.x.shape[0], epoch, None, None)[2]
        finally:
            self.gen.set_state(state)

    def _forward_terms(self, start: int, end: int, epoch: int, gate: torch.Tensor | None, draws: ViewDraws | None
                       ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], ViewDraws]:
        """Images ``start:end`` through the style, their step views and the image tower -> (raw output Y,
        whole-image embeddings, unweighted terms, the step's draws). ``draws``: the whole batch's crops and
        masks, drawn here from the trainer's generator when None (call under autocast)."""
        lc = self.cfg.loss
        y = self.model.raw_output(self.z[start:end])
        seen = seen_output(y, lc)
        if draws is None:
            draws = ViewDraws.draw(self.x.shape[0], y, lc, self.text.image_size, self.gen)
        views = step_views(seen, lc, self.text.image_size, draws=draws.rows(start, end), content=self.x[start:end])
        emb_y, crop_embs, masked_emb = views.split(self._image_tower(views.images))
        refs = None
        if views.references is not None:  # the same crops / mask of X: references, no gradient
            with torch.no_grad():
                refs = self.encode_image(views.references).float()
        terms = self._loss_terms(y, seen, emb_y, crop_embs, masked_emb, views.split_references(refs), epoch, start,
                                 end, gate)
        return y, emb_y, terms, draws

    def _image_tower(self, images: torch.Tensor) -> torch.Tensor:
        """The tower on a step's views: one call (its layers recomputed in backward under
        ``plan.tower_checkpointing``), or checkpointed chunks of ``plan.view_chunk`` views.

        The random state is not saved for the recomputation: the frozen tower draws nothing (eval mode), and
        saving it made the checkpointed tower ~5 % slower on an H200 (122 vs 117 ms; plan_sweep --tower).
        Chunks are slow however they run (66 views whole 26 ms, in chunks of 32 77 ms, not yet explained), so
        memory_plan tries them last."""
        chunk = self.plan.view_chunk
        if not chunk or images.shape[0] <= chunk:
            with layers_recomputed(self.tower_layers if self.plan.tower_checkpointing else ()):
                return self.encode_image(images)
        return torch.cat([torch.utils.checkpoint.checkpoint(self.encode_image, part, use_reentrant=False,
                                                            preserve_rng_state=False)
                          for part in images.split(chunk)])

    def _loss_terms(self, y_raw, y, emb_y, crop_embs, masked_emb, refs, epoch: int, start: int, end: int,
                    gate: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Unweighted terms of images ``start:end`` (means over them): ``y_raw`` the decoder's output, ``y``
        what the losses see of it (:func:`seen_output`); ``refs``: (same crops of X, same-masked X) embeddings
        or Nones; ``gate``: the whole batch's L_so gate."""
        lc = self.cfg.loss
        prev = self.prev_emb[start:end] if (lc.so > 0 and self.prev_emb is not None) else None
        terms = L.style_loss(emb_y, self.emb_x[start:end], self.text_dir[start:end], lc, epoch, crop_embs=crop_embs,
                             masked_emb=masked_emb, prev_img_emb=prev, src_crop_embs=refs[0], src_masked_emb=refs[1])
        if "so_gate" in terms:  # log the second-order term as it enters the total (gated)
            own = terms.pop("so_gate")
            terms["so"] = (own if gate is None else gate) * terms["so"]
        feats_x = [f[start:end] for f in self.feats_x] if self.feats_x is not None else None
        lpips_x = [f[start:end] for f in self.lpips_x] if self.lpips_x is not None else None
        terms.update(content_terms(y, y_raw, self.x[start:end], feats_x, lc, self.vgg, self.lpips, lpips_x))
        return terms

    def _second_order_gate(self, epoch: int, groups: list[tuple[int, int]]) -> torch.Tensor | None:
        """With micro-batches, the L_so gate I(L_dir < theta) of the WHOLE batch, known before any backward.

        On the epochs where the gate can open it takes one gradient-free forward pass (decoder and the
        whole-image view) per micro-batch; otherwise it is 0 and costs nothing.
        """
        lc = self.cfg.loss
        if lc.so <= 0 or self.prev_emb is None:
            return None
        zero = torch.zeros((), device=self.device)
        if not (epoch >= lc.so_interval and epoch % lc.so_interval == 0):
            return L.second_order_gate(zero, epoch, lc.so_theta, lc.so_interval)
        b, dir_loss = self.x.shape[0], zero
        with torch.no_grad(), autocast(self.device, self.cfg.precision):
            for start, end in groups:
                y = seen_output(self.model.raw_output(self.z[start:end]), lc)
                emb = self.encode_image(resize_for_tower(y, self.text.image_size).to(y.dtype))
                part = L.directional_loss(emb, self.emb_x[start:end], self.text_dir[start:end])
                dir_loss = dir_loss + part.float() * ((end - start) / b)
        return L.second_order_gate(dir_loss, epoch, lc.so_theta, lc.so_interval)

    @runs_on_device_of("self")
    def step_within_memory(self, epoch: int, keep_output: bool = True
                           ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """:meth:`step`; under ``memory_plan="auto"`` a step that runs out of GPU memory is retried with a
        smaller plan (the estimates can be low: fragmentation, another program) until none is left. Where the
        steps could replay as graphs, the smaller plan's steps do too (after one eager step of it): a graphed
        smaller plan beat the eager larger one on the emulated 12 GB card (x1.11 against ~x1.3), and an eager
        smaller plan was the worst of all (x2.26, call P, where the graphed fast plan ran out outside its capture)."""
        while True:
            try:
                return self.step(epoch, keep_output)
            except torch.cuda.OutOfMemoryError as exc:
                in_capture = isinstance(exc, CaptureOutOfMemory)
                where = ("capturing the step's CUDA graph" if in_capture else "a replayed step"
                         if self.graphs is not None and len(self.graphs) else "an eager step")
                smaller = None
                if parse_plan(self.cfg.memory_plan) == "auto":
                    smaller = smaller_plan(self.plan, Recipe.of(self.x.shape[0], self.cfg, self.lpips is not None),
                                           self._splittable(), bool(self.tower_layers))
                if smaller is None and not in_capture:
                    raise
            self.opt.zero_grad(set_to_none=True)  # the failed step's partial gradients
            graphed = self.graphs is not None
            self.graphs, self._trial = None, None  # the old plan's graphs and their pool go first
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if smaller is None:  # only the capture ran out: the plan fits eagerly
                log.warning("stylemamba: the CUDA graph of the step did not fit in memory; training eagerly")
                continue
            if graphed:  # captured in turn after one eager step of the new plan (captured first, the recomputing
                # plans failed with "a different number of tensors was saved": callL); "auto" decides for the new
                # kind of step as for the first (remembered, timed, or a trial)
                self.graphs, self._warm, self._graphs_decided = CapturedCalls((self.gen,)), False, False
            if smaller.checkpointing and not self.plan.checkpointing:
                enable_decoder_checkpointing(self.model.decoder)
            self.plan = smaller
            log.warning("memory plan: %s (out of memory in %s; %s)", smaller.describe(), where, smaller.reason)

    @runs_on_device_of("self")
    def end_epoch(self) -> None:
        """The last output becomes Y(i), the previous epoch's image of the second-order loss (copied into one
        buffer under CUDA graphs: the graph reads it at a fixed address, and its own output is overwritten)."""
        if self.graphs is None or self.last_emb is None:
            self.prev_emb = self.last_emb
            return
        if self._prev_buffer is None:
            self._prev_buffer = self.last_emb.clone()
        else:
            self._prev_buffer.copy_(self.last_emb)
        self.prev_emb = self._prev_buffer

    # ------------------------------------------------------------------ the loop
    @runs_on_device_of("self")
    def run(self, on_step: Callable[[StepInfo], None] | None = None,
            should_stop: Callable[[], bool] | None = None, lag_reports: bool = True) -> TrainResult:
        """The recipe's steps. ``on_step`` hears of each step once the NEXT one is queued (the last at the end):
        reading a step's losses waits for the GPU to finish it, and reading them right away would leave the GPU
        idle while the host prepares the next step (10-25 ms of a 65-90 ms step on an H200, call I). So the
        trainer is one step ahead while ``on_step`` runs; ``lag_reports=False`` reports each step right after
        it, for callers that inspect the trainer itself (weights, gradients) at that step."""
        cfg = self.cfg
        total_steps = cfg.epochs * cfg.steps_per_epoch
        t0 = time.perf_counter()
        step = 0
        queued_at = [t0]  # when each step was queued: their differences are the steps' host-visible times
        unreported: list[tuple] = []  # (step, epoch, terms, y) of the last step queued, not yet reported

        def report_queued() -> None:
            while unreported:
                self._report(on_step, *unreported.pop(), t0)

        for epoch in range(cfg.epochs):
            for _ in range(cfg.steps_per_epoch):
                if should_stop is not None and should_stop():
                    report_queued()  # the progress shows the steps the partial style holds
                    partial = self.result(time.perf_counter() - t0, step, cancelled=True) if step else None
                    raise TrainingCancelled(partial)
                try:
                    terms, y = self.step_within_memory(epoch, keep_output=on_step is not None and self._previews(
                        step + 1, total_steps))
                except BaseException:
                    report_queued()  # the last good step still reaches the progress
                    raise
                self.history.append(terms)
                step += 1
                queued_at.append(time.perf_counter())
                if on_step is not None:
                    report_queued()
                    unreported.append((step, epoch, terms, y))
                    if not lag_reports:
                        report_queued()
            self.end_epoch()
        report_queued()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        steps_done = time.perf_counter()
        result = self.result(steps_done - t0, step)
        gaps = sorted(b - a for a, b in zip(queued_at, queued_at[1:]))
        result.phases.update(steps=steps_done - t0, package=time.perf_counter() - steps_done,
                             median_step=gaps[len(gaps) // 2] if gaps else 0.0)
        return result

    def _report(self, on_step: Callable[[StepInfo], None], step: int, epoch: int, terms: dict[str, torch.Tensor],
                y: torch.Tensor, t0: float) -> None:
        total_steps = self.cfg.epochs * self.cfg.steps_per_epoch
        preview = y[0].float().clamp(0, 1).cpu() if self._previews(step, total_steps) else None
        # the step's loss values in ONE device-to-host copy (a float() per term waits for the GPU each time)
        values = torch.stack([v.detach().float() for v in terms.values()]).tolist()
        on_step(StepInfo(step, total_steps, epoch, dict(zip(terms, values)), time.perf_counter() - t0, preview))

    def _previews(self, step: int, total_steps: int) -> bool:
        """Whether step ``step`` (from 1) shows a preview in the progress (every ``preview_every`` and the last)."""
        every = self.cfg.preview_every
        return bool(every) and (step % every == 0 or step == total_steps)

    def result(self, seconds: float, steps: int, cancelled: bool = False) -> TrainResult:
        """Package the current weights as a :class:`Style` (CPU tensors; consistent after any whole step)."""
        self._refuse_diverged(steps)
        values = (torch.cat([torch.stack([torch.as_tensor(v).float().reshape(()) for v in h.values()])
                             for h in self.history]).tolist() if self.history else [])  # one device-to-host copy
        history, at = [], 0
        for h in self.history:
            history.append(dict(zip(h, values[at:at + len(h)])))
            at += len(h)
        meta = {
            **self.direction.metadata(), "text_model_kind": getattr(self.text, "kind", ""),
            "recipe": self.cfg.to_dict(), "losses_skipped": self.skipped_losses,
            "train_seconds": round(seconds, 3), "steps": steps, "cancelled": cancelled,
            "content_images": int(self.x.shape[0]), "final_losses": history[-1] if history else {},
            "memory_plan": self.plan.to_dict(),
        }
        if self.start is not None:
            meta["started_from"] = self.start.metadata.get("universal_model") or self.start.name
        return TrainResult(self.model.to_style(meta), history, seconds, steps, cancelled)

    def _refuse_diverged(self, steps: int) -> None:
        """Raise :class:`TrainingDiverged` when a trained weight is NaN or infinite (one check of them all, on their
        device: a diverged run saved a NaN style and said it succeeded)."""
        params = [p for group in self.opt.param_groups for p in group["params"]]
        if not params or bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            return
        totals = [float(h["total"]) for h in self.history if "total" in h]
        first = next((i + 1 for i, t in enumerate(totals) if not math.isfinite(t)), None)
        at = f"at step {first} of {steps}" if first else f"within its {steps} steps"
        raise TrainingDiverged(f"training diverged {at}: the style's weights became NaN or infinite, so no style was "
                               f"made; the learning rate {self.cfg.lr:g} is too high for this recipe (the default is "
                               f"{TrainConfig.lr:g}): lower it (--lr, or the Train node's learning_rate) and train "
                               "again")


@runs_on_device_of("vae")
def train_style(vae: SDVAE, text: ImageTextModel, content, direction: Direction, config: TrainConfig | None = None,
                prompt_weights: list[float] | None = None, vgg=None, lpips=None, device=None,
                on_step: Callable[[StepInfo], None] | None = None,
                should_stop: Callable[[], bool] | None = None, free_memory: float | None = None,
                start: Style | UniversalModel | None = None,
                workspace: TrainingWorkspace | None = None) -> TrainResult:
    """Train a style on content image(s). See :class:`TrainConfig` for the recipe.

    ``direction``: a :class:`~stylemamba.direction.TextDirection` (e.g. from the Text Conditioning
    node; not encoded again), or prompt(s) to encode with ``text`` (with ``prompt_weights``).
    ``free_memory``: bytes free for training once the networks are on the device (a host's own count,
    e.g. ComfyUI's); None measures it with torch. ``config.memory_plan`` "auto" plans with it.
    ``start``: fine-tune from a universal model (its style for this direction) or from a trained style,
    instead of a fresh fusion module and the VAE's decoder (the recipe's fusion architecture is then
    the starting style's). ``workspace``: a :class:`TrainingWorkspace` that keeps the trainer for the next style
    (faster; holds GPU memory until released). Without ``should_stop``, Ctrl-C, SIGTERM or SIGHUP (a closed
    terminal; in the main thread) stop after the current step and raise :class:`TrainingCancelled` with the style
    trained so far, as the CLI does.
    """
    trainer, kept = None, False
    try:
        t0 = time.perf_counter()
        if workspace is not None:
            trainer = workspace.trainer(vae, text, content, direction, config, prompt_weights, vgg, lpips, device,
                                        free_memory, start)
        else:
            trainer = StyleTrainer(vae, text, content, direction, config, prompt_weights, vgg, lpips, device,
                                   free_memory, start)
        setup = time.perf_counter() - t0
        if should_stop is None:  # Ctrl-C, a kill, a closed terminal would lose the steps trained: stop after this one
            with StopRequest(keeps="keeping the style of the finished steps") as ctrl_c:
                try:
                    result = trainer.run(on_step, lambda: ctrl_c.asked)
                except TrainingCancelled as cancelled:
                    cancelled.signum = ctrl_c.signum
                    raise
        else:
            result = trainer.run(on_step, should_stop)
        result.phases["setup"] = setup
        if workspace is not None:
            kept = workspace.keep(trainer)
        return result
    except TrainingCancelled:
        if workspace is not None:  # a cancelled trainer stopped between whole steps: it can start the next style
            kept = workspace.keep(trainer)
        raise
    except (RuntimeError, MemoryError) as exc:  # torch's GPU and CPU out-of-memory errors, Python's
        if not is_out_of_memory(exc) or isinstance(exc, OutOfMemory):
            raise
        cfg = config or TrainConfig()
        raise training_out_of_memory(cfg.resolution, cfg.loss.n_crops, image_count(content),
                                     memory=memory_kind(exc)) from exc
    finally:
        if trainer is not None and not kept:
            _free(trainer)  # the graphs' memory pools first of all
        if torch.cuda.is_available() and not kept:
            torch.cuda.empty_cache()


class TrainingWorkspace:
    """The last style's trainer, kept to train the next style of the same kind (:func:`workspace_kind`):
    :meth:`StyleTrainer.restart` reuses its decoder copy, optimizer and CUDA graphs, so a new style skips
    the decoder copy (37 ms on an H200), the eager first step and the capture of its graphs (the graph of a
    restarted style's first step is recorded when the trainer is first kept).

    It holds GPU memory between styles: the decoder copy and Adam's moments (~0.6 GB for an SD VAE) and, where
    the steps replay as CUDA graphs, the graphs' pool (the step's working memory: ~8.5 GB for the fast plan at
    512 px). A graph's pool is reserved, not allocated, between replays, and hosts that count torch's reserved
    but unallocated memory as free (ComfyUI does) cannot use it, so ``max_share`` (of the card) bounds what is
    kept: a trainer holding more is released after its style. :meth:`release` gives the memory back; the Train
    node releases it when ComfyUI unloads its training networks. Pass one to :func:`train_style`
    (``workspace=``) for every style.
    """

    def __init__(self, max_share: float | None = None):
        self.max_share = max_share
        self._trainer: StyleTrainer | None = None
        self._kind: tuple | None = None
        # what the kept trainer holds, measured after its first style with the caches emptied: ``held_bytes`` in
        # all (reserved: the graphs' pool included) and ``counted_bytes`` the part torch counts as allocated,
        # which hosts count as used: a front end asks its host for that much less working memory (the next
        # style reuses it, or it is released before a new trainer is built)
        self.held_bytes = self.counted_bytes = 0
        self._before: tuple[int, int] | None = None  # _memory_in_use before a new trainer's first style
        self._held_while_out = (0, 0)

    @property
    def holds(self) -> bool:
        """Whether a trainer (and its memory) is kept."""
        return self._trainer is not None

    @runs_on_device_of("vae")
    def trainer(self, vae: SDVAE, text: ImageTextModel, content, direction: Direction, config: TrainConfig | None,
                prompt_weights: list[float] | None, vgg, lpips, device, free_memory: float | None,
                start: Style | UniversalModel | None) -> StyleTrainer:
        """The kept trainer restarted for this style when it is of the same kind, else a new trainer (the kept
        one released first: its memory goes before the new one takes its own). A fine-tuning (``start``) is
        never restarted: its starting weights and fusion architecture are its own. A restarted trainer keeps
        the memory plan (and graphs or eager steps) its last style ended with."""
        config = config or TrainConfig()
        kind = (workspace_kind(vae, text, vgg, lpips, device, image_count(content), config)
                if start is None else None)
        # out while it trains: a failure leaves nothing half-used, and nothing is counted as held meanwhile
        trainer, self._trainer = self._trainer, None
        held, self._held_while_out = (self.held_bytes, self.counted_bytes), (0, 0)
        self.held_bytes = self.counted_bytes = 0
        if trainer is not None and kind is not None and kind == self._kind:
            try:
                trainer.restart(content, direction, config, prompt_weights)
            except BaseException:
                self._kind = None
                _drop(trainer)
                raise
            self._held_while_out = held
            log.info("stylemamba: training in the last style's workspace (its decoder copy, optimizer%s; plan %s)",
                     " and CUDA graphs" if trainer.graphs is not None else "", trainer.plan.describe())
            return trainer
        if trainer is not None:
            _drop(trainer)
            del trainer
            if free_memory is not None:  # counted by the caller as used while the old trainer held it
                free_memory += held[1]
        self._kind, self._before = kind, None
        where = torch.device(device) if device is not None else vae.device
        if where.type == "cuda":  # what the new trainer will hold is measured from here (caches emptied)
            torch.cuda.empty_cache()
            self._before = _memory_in_use(where)
        return StyleTrainer(vae, text, content, direction, config, prompt_weights, vgg, lpips, device, free_memory,
                            start)

    def keep(self, trainer: StyleTrainer | None) -> bool:
        """Keep ``trainer`` (after a finished or cancelled run) for the next style; False when it cannot be (or
        holds more than ``max_share`` of the card: then it is released)."""
        if trainer is None or self._kind is None or trainer.model is None:
            return False
        self._trainer = trainer
        self.held_bytes, self.counted_bytes = self._held_while_out
        if self._before is None:  # a restarted trainer: its graph for the next style's first step is there
            return True
        self._measure(trainer)  # its first style: what it holds from now on
        total = torch.cuda.get_device_properties(trainer.device).total_memory
        if self.max_share is not None and self.held_bytes > self.max_share * total:
            log.info("stylemamba: not keeping the trainer for the next style: it holds %.1f GB, more than %.0f%% "
                     "of this %.0f GB card", self.held_bytes / 1e9, self.max_share * 100, total / 1e9)
            self.release()
            return False
        try:  # the next style's first step, recorded now rather than in that style's time
            recorded = trainer.record_restart_step()
        except Exception:  # noqa: BLE001 - the next style records it then, as without this
            log.warning("stylemamba: recording the next style's first step failed", exc_info=True)
            recorded = False
        if recorded:
            self._measure(trainer)
        self._before = None
        return True

    def _measure(self, trainer: StyleTrainer) -> None:
        """What the kept trainer holds since before its first style (caches emptied)."""
        torch.cuda.empty_cache()
        self.held_bytes, self.counted_bytes = (max(0, now - before)
                                               for now, before in zip(_memory_in_use(trainer.device), self._before))

    def release(self) -> None:
        """Drop the kept trainer and give its GPU memory back."""
        trainer, self._trainer, self._kind = self._trainer, None, None
        self.held_bytes = self.counted_bytes = 0
        if trainer is not None:
            _drop(trainer)


def _memory_in_use(device: torch.device) -> tuple[int, int]:
    """(bytes held, bytes a host counts as used) on ``device``; the differences before and after a trainer's first
    style are what it keeps. With torch's caching allocator: reserved (the graphs' pools included) and allocated.
    Under cudaMallocAsync (ComfyUI's default) the graphs' memory is the driver's, outside torch's counts, and hosts
    see it as used: both are the device's memory in use."""
    if uses_async_allocator():
        free, total = torch.cuda.mem_get_info(device)
        return total - free, total - free
    return torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)


def _drop(trainer: StyleTrainer) -> None:
    """:func:`_free` and the freed memory back to the device (a kept trainer let go between styles)."""
    device = trainer.device
    _free(trainer)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        if device.type == "cuda":
            trim_graph_memory(device)


def _free(trainer: StyleTrainer) -> None:
    """Let go of what a trainer holds on the device (graphs' pools, optimizer state, the decoder copy, the content's
    latents and features: the LPIPS features alone are 64 MB per 512 px image), even while something else still
    refers to the trainer (a caller's local, an exception's traceback), so that emptying the cache right after
    gives it back. The trainer cannot train afterwards."""
    if trainer.opt is not None:
        # through torch (the gradients' setter), where torch's warning about a graph-allocated tensor freed outside a
        # capture is a Python warning (cuda_graphs.ignore_captured_free_warnings); dropped with the model it is
        # printed on stderr, once per gradient (cudaMallocAsync only)
        trainer.opt.zero_grad(set_to_none=True)
    trainer.graphs = None
    trainer.opt = None
    trainer.model = None
    trainer.x = trainer.z = trainer.emb_x = trainer.feats_x = trainer.lpips_x = trainer.text_dir = None
    trainer.prev_emb = trainer.last_emb = trainer._prev_buffer = None
