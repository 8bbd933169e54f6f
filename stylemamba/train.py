"""Training a style: the paper's recipe (Sec. 4.1) and the optimisation loop.

One *epoch* is one optimisation step over the whole content batch with fresh random crops and
masks (METHOD.md: Table 2's 23 s for 20 epochs against CLIPstyler's 403 s for 200 iterations means
about one step per epoch); ``steps_per_epoch`` scales that. Everything frozen is computed once
before the loop (content latents, text direction, content image embeddings, content VGG
features), and all SigLIP inputs of a step go through the image tower in ONE batched call.
"""
from __future__ import annotations

import copy
import functools
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from . import losses as L
from .encoders import TextImageEncoder
from .decoder_parts import check_part, restrict_training
from .errors import OutOfMemory
from .fusion import FusionConfig, build_fusion
from .model import StyleMamba
from .options import from_options
from .precision import autocast, autocast_dtype
from .speed import COMPILE_MODES, compile_callable, compile_module_
from .style_file import Style
from .vae import SDVAE, decoder_state
from .vae_layout import to_ldm

log = logging.getLogger("stylemamba")


@dataclass
class TrainConfig:
    """The paper's recipe as defaults; every number is an option."""

    epochs: int = 20
    steps_per_epoch: int = 1
    lr: float = 5e-4
    lr_decay_epoch: int = 10  # lr is multiplied by lr_decay from this epoch on
    lr_decay: float = 0.5
    resolution: int = 512  # content images are resized (short side) and centre-cropped to this square
    seed: int = 0
    amp: str = "auto"  # "auto" (bf16 on CUDA, fp16 on pre-Ampere GPUs, off on CPU) | "bf16" | "fp16" | "off"
    channels_last: bool = True
    gradient_checkpointing: bool = False  # recompute decoder activations in backward: less memory, ~30% slower
    # "off" | a torch.compile mode ("default", "max-autotune-no-cudagraphs"): compiles the decoder and the image
    # tower (stylemamba/speed.py); on an H200 the step drops from 109 to 68 ms, but the first style in a
    # process pays ~55 s of compilation (docs/BENCHMARK.md)
    compile: str = "off"
    preview_every: int = 0  # steps between preview images in the progress callback (0 = none)
    # the part of the decoder a style trains and stores (decoder_parts.py): "all", "none", "top1".."top3"
    train_decoder: str = "all"
    loss: L.LossConfig = field(default_factory=L.LossConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def __post_init__(self):
        if isinstance(self.loss, dict):
            self.loss = L.LossConfig.from_dict(self.loss)
        if isinstance(self.fusion, dict):
            self.fusion = FusionConfig.from_dict(self.fusion)
        checks = [("epochs", self.epochs >= 1, ">= 1"), ("steps_per_epoch", self.steps_per_epoch >= 1, ">= 1"),
                  ("lr", self.lr > 0, "> 0"), ("resolution", self.resolution >= 64 and self.resolution % 8 == 0,
                  "a multiple of 8, >= 64"), ("amp", self.amp in ("auto", "bf16", "fp16", "off"),
                  "one of auto, bf16, fp16, off"), ("compile", self.compile in COMPILE_MODES,
                  f"one of {', '.join(COMPILE_MODES)}")]
        check_part(self.train_decoder)
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
        return from_options(cls, d, "training")


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


class TrainingCancelled(Exception):
    """Raised when ``should_stop`` asks to stop; ``partial`` holds the usable style of the last finished step."""

    def __init__(self, partial: TrainResult | None):
        super().__init__("training cancelled")
        self.partial = partial


def prepare_content(images: torch.Tensor | list[torch.Tensor], resolution: int) -> torch.Tensor:
    """(B,3,H,W) or a list of (3,H,W)/(1,3,H,W) images in [0,1] -> (B,3,res,res): short side resized, centre crop."""
    items = list(images) if isinstance(images, (list, tuple)) else list(images.unbind(0)) if images.dim() == 4 else [images]
    if not items:
        raise ValueError("no content images: give at least one image to train the style on")
    out = []
    for i, im in enumerate(items):
        if im.dim() == 4 and im.shape[0] == 1:
            im = im[0]
        if im.dim() != 3 or im.shape[0] not in (1, 3, 4):
            raise ValueError(f"content image {i} has shape {tuple(im.shape)}; expected (3,H,W) RGB in [0,1]")
        im = im.float()
        if im.shape[0] == 1:
            im = im.expand(3, -1, -1)
        elif im.shape[0] == 4:
            im = im[:3]
        h, w = im.shape[-2:]
        if min(h, w) < 8:
            raise ValueError(f"content image {i} is {h}x{w}; it must be at least 8 pixels on each side")
        scale = resolution / min(h, w)
        nh, nw = max(resolution, round(h * scale)), max(resolution, round(w * scale))
        im = F.interpolate(im[None], size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)[0]
        top, left = (nh - resolution) // 2, (nw - resolution) // 2
        out.append(im[:, top:top + resolution, left:left + resolution].clamp(0, 1))
    return torch.stack(out)


def style_direction(text: TextImageEncoder, prompts: list[str] | str, weights: list[float] | None,
                    source_prompt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(e_t, e_src, raw direction e_t - e_src): several prompts are mixed with weights (multiple-style transfer)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    emb = text.encode_text(prompts)
    w = torch.tensor(weights if weights is not None else [1.0] * len(prompts), dtype=emb.dtype, device=emb.device)
    if w.numel() != len(prompts) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"prompt weights {weights} must be {len(prompts)} non-negative numbers with a positive sum")
    e_t = F.normalize((w[:, None] * emb).sum(0), dim=-1)
    e_src = text.encode_text([source_prompt])[0]
    return e_t, e_src, e_t - e_src


@dataclass
class TowerViews:
    """The image-tower inputs of one step: Y's global view, crops and masked view in one batch (``of_y``),
    and the matching crops / masked view of the content image X (``of_x``) when a reference is "same"."""

    of_y: torch.Tensor
    of_x: torch.Tensor | None
    n_crops: int
    masked: bool


def tower_views(y: torch.Tensor, x: torch.Tensor, lc: L.LossConfig, size: int,
                gen: torch.Generator | None) -> TowerViews:
    """Build the views of a step for an image tower of input ``size``: global view of Y, then ``n_crops``
    crops per image (patch loss), then Y with 50 % of its patches masked (masked loss).

    With ``crop_reference="same"`` the crops of X use the same boxes and perspective as Y's (Y and X are
    cropped as one 6-channel picture); with ``mask_reference="same"`` X gets the same mask.
    """
    b = y.shape[0]
    resize = functools.partial(F.interpolate, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    of_y, of_x = [resize(y)], []
    n_crops = 0
    if lc.use_patch and lc.patch > 0:
        crop = lc.crop_size_for(y.shape[-2], y.shape[-1])
        same = lc.crop_reference == "same"
        both = torch.cat([y, x.to(y.dtype)], dim=1) if same else y
        crops = L.random_crops(both, lc.n_crops, crop, size, perspective=lc.crop_perspective, generator=gen)
        of_y.append(crops[:, :3])
        if same:
            of_x.append(crops[:, 3:])
        n_crops = lc.n_crops
    masked = lc.md > 0
    if masked:
        mask = L.patch_mask(b, y.shape[-2], y.shape[-1], patch=lc.mask_patch_for(y.shape[-2], size),
                            ratio=lc.mask_ratio, generator=gen, device=y.device)
        of_y.append(resize(L.apply_mask(y, mask, fill=lc.mask_fill)))
        if lc.mask_reference == "same":
            of_x.append(resize(L.apply_mask(x.to(y.dtype), mask, fill=lc.mask_fill)))
    cat = lambda views: torch.cat([v.to(y.dtype) for v in views])  # noqa: E731
    return TowerViews(cat(of_y), cat(of_x).detach() if of_x else None, n_crops, masked)


class StyleTrainer:
    """Holds everything a training run needs; ``run()`` executes it. Usable once."""

    def __init__(self, vae: SDVAE, text: TextImageEncoder, content: torch.Tensor | list[torch.Tensor],
                 prompts: list[str] | str, config: TrainConfig | None = None,
                 prompt_weights: list[float] | None = None, vgg: torch.nn.Module | None = None,
                 lpips: torch.nn.Module | None = None, device: torch.device | str | None = None):
        self.cfg = config or TrainConfig()
        self.device = torch.device(device) if device is not None else vae.device
        self.vae, self.text, self.vgg, self.lpips = vae, text, vgg, lpips
        for what, dev in (("VAE", vae.device), ("text model", text.device)):
            if dev.type != self.device.type:
                raise ValueError(f"the {what} is on {dev} but training was asked to run on {self.device}: "
                                 f"move it first (e.g. .to('{self.device}')) or pass device={str(dev)!r}")
        self.prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        self.prompt_weights = prompt_weights
        lc = self.cfg.loss
        vgg_on = lc.content_weight_start > 0 or lc.content_weight_end > 0
        self.skipped_losses = []  # recorded in the style's metadata
        if vgg_on and vgg is None:
            log.warning("no VGG network given: the VGG content loss is skipped")
            self.skipped_losses.append("vgg")
        if lc.lpips > 0 and lpips is None:
            log.warning("no LPIPS network given: the LPIPS loss is skipped")
            self.skipped_losses.append("lpips")

        torch.manual_seed(self.cfg.seed)
        self.gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        with torch.no_grad():
            self.x = prepare_content(content, self.cfg.resolution).to(self.device)
            self.e_t, self.e_src, self.text_dir_raw = style_direction(text, self.prompts, prompt_weights,
                                                                      lc.source_prompt)
            self.z = vae.encode(self.x)
            with autocast(self.device, self.cfg.amp):
                self.emb_x = text.encode_image(self.x).float()
                self.feats_x = [f.detach() for f in vgg(self.x)] if (vgg is not None and vgg_on) else None
        b = self.x.shape[0]
        self.text_dir = self.text_dir_raw.expand(b, -1)
        self.cond = self.e_t.expand(b, -1)
        fcfg = copy.deepcopy(self.cfg.fusion)
        fcfg.text_dim = int(self.e_t.shape[-1])
        fcfg.latent_channels = int(self.z.shape[1])
        self.fusion_cfg = fcfg
        self.model = StyleMamba(vae, build_fusion(fcfg).to(self.device), vae.make_decoder())
        self.trained_decoder = set(restrict_training(self.model.decoder, self.cfg.train_decoder))
        if self.cfg.channels_last and self.device.type == "cuda":
            self.model.decoder.to(memory_format=torch.channels_last)
        if self.cfg.gradient_checkpointing:
            dec = self.model.decoder.decoder
            if hasattr(dec, "gradient_checkpointing"):  # diffusers' Decoder
                dec.gradient_checkpointing = True
                dec._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint,
                                                                     use_reentrant=False)
            else:
                log.warning("this decoder (%s) has no gradient checkpointing; training without it",
                            type(self.model.decoder.decoder).__name__)
        # torch.compile (speed.py) of the two networks where it paid on an H200 (docs/BENCHMARK.md): the
        # decoder in place (state-dict keys unchanged) and the shared image tower through a wrapper
        compile_module_(self.model.decoder, self.cfg.compile)
        self._encode_image = compile_callable(text.encode_image, self.cfg.compile)
        # the fused Adam kernel: one launch for all parameters (0.6 ms instead of 1.8 ms per step on an H200)
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=self.cfg.lr,
                                    fused=True if self.device.type == "cuda" else None)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none
        scaler_cls = getattr(getattr(torch, "amp", None), "GradScaler", None) or torch.cuda.amp.GradScaler
        self.scaler = scaler_cls(enabled=autocast_dtype(self.device, self.cfg.amp) == torch.float16)
        self.prev_emb: torch.Tensor | None = None
        self.history: list[dict[str, torch.Tensor]] = []

    # ------------------------------------------------------------------ one step
    def lr_at(self, epoch: int) -> float:
        return self.cfg.lr * (self.cfg.lr_decay if epoch >= self.cfg.lr_decay_epoch else 1.0)

    def step(self, epoch: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One optimisation step; returns the detached loss terms and the output Y (no host sync)."""
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(epoch)
        with autocast(self.device, self.cfg.amp):
            y = self.model.decode(self.z, self.cond)
            terms = self.loss_terms(y, epoch)
            total = L.total_loss(terms, self.cfg.loss.weights(epoch))
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        terms = {k: v.detach().float() for k, v in terms.items()}
        terms["total"] = total.detach().float()
        return terms, y.detach()

    def loss_terms(self, y_raw: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        """The unweighted loss terms of a step on the decoder's raw output ``y_raw`` (see :func:`total_loss`).

        The one place where the output is clamped (``clamp_output``: the losses see what stylising gives
        users) and penalised for leaving [0, 1] (``range_weight``).
        """
        lc, b = self.cfg.loss, y_raw.shape[0]
        y = y_raw.clamp(0, 1) if lc.clamp_output else y_raw
        views = tower_views(y, self.x, lc, self.text.image_size, self.gen)
        emb = self._encode_image(views.of_y)  # one batched SigLIP call
        emb_y, rest = emb[:b], emb[b:]
        ref = None
        if views.of_x is not None:  # the same crops / mask of the content image: references, no gradient
            with torch.no_grad():
                ref = self._encode_image(views.of_x).float()
        n = b * views.n_crops
        crop_embs = rest[:n] if views.n_crops else None
        masked_emb = rest[n:n + b] if views.masked else None
        same_crop = ref is not None and views.n_crops and lc.crop_reference == "same"
        same_mask = ref is not None and views.masked and lc.mask_reference == "same"
        prev = self.prev_emb if lc.so > 0 else None
        terms = L.style_loss(emb_y, self.emb_x, self.text_dir, lc, epoch, crop_embs=crop_embs,
                             masked_emb=masked_emb, prev_img_emb=prev, text_dir_raw=self.text_dir_raw,
                             src_crop_embs=ref[:n] if same_crop else None,
                             src_masked_emb=ref[-b:] if same_mask else None)
        if "so_gate" in terms:  # log the second-order term as it enters the total (gated)
            terms["so"] = terms.pop("so_gate") * terms["so"]
        if self.feats_x is not None:
            terms["vgg"] = L.content_loss(self.vgg(y), self.feats_x, lc.content_reduction)
        if self.lpips is not None and lc.lpips > 0:
            terms["lpips"] = self.lpips(y, self.x)
        if lc.tv > 0:
            terms["tv"] = L.total_variation(y, form=lc.tv_form)
        if lc.range_weight > 0:
            terms["range"] = L.range_penalty(y_raw)
        self._last_emb = emb_y.detach().float()
        return terms

    # ------------------------------------------------------------------ the loop
    def run(self, on_step: Callable[[StepInfo], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> TrainResult:
        cfg = self.cfg
        total_steps = cfg.epochs * cfg.steps_per_epoch
        t0 = time.perf_counter()
        step = 0
        for epoch in range(cfg.epochs):
            for _ in range(cfg.steps_per_epoch):
                if should_stop is not None and should_stop():
                    partial = self.result(time.perf_counter() - t0, step, cancelled=True) if step else None
                    raise TrainingCancelled(partial)
                terms, y = self.step(epoch)
                self.history.append(terms)
                step += 1
                if on_step is not None:
                    preview = None
                    if cfg.preview_every and (step % cfg.preview_every == 0 or step == total_steps):
                        preview = y[0].float().clamp(0, 1).cpu()
                    on_step(StepInfo(step, total_steps, epoch, {k: float(v) for k, v in terms.items()},
                                     time.perf_counter() - t0, preview))
            self.prev_emb = self._last_emb  # Y(i) for the second-order loss of the next epoch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.result(time.perf_counter() - t0, step)

    def result(self, seconds: float, steps: int, cancelled: bool = False) -> TrainResult:
        """Package the current weights as a :class:`Style` (CPU tensors; consistent after any whole step)."""
        base = decoder_state(self.vae.decoder, self.vae.post_quant_conv)
        trained = self.model.decoder.state_dict()
        if self.cfg.train_decoder != "all":  # the trained part only (decoder_parts.py); the rest is unchanged
            trained = {k: v for k, v in trained.items() if k in self.trained_decoder}
        # stored in the LDM key layout (vae_layout) so the style works on the same VAE however it was loaded
        delta = to_ldm({k: (trained[k].detach().float() - base[k].detach().float().to(trained[k].device)).cpu()
                        for k in trained})
        history = [{k: float(v) for k, v in h.items()} for h in self.history]
        meta = {
            "prompts": self.prompts, "prompt_weights": self.prompt_weights, "source_prompt": self.cfg.loss.source_prompt,
            "text_model": getattr(self.text, "name", ""), "text_model_kind": getattr(self.text, "kind", ""),
            "recipe": self.cfg.to_dict(), "base_vae": self.vae.identity, "base_vae_name": self.vae.name,
            "scaling_factor": self.vae.scaling_factor, "losses_skipped": self.skipped_losses,
            "train_seconds": round(seconds, 3), "steps": steps, "cancelled": cancelled,
            "content_images": int(self.x.shape[0]),
            "final_losses": history[-1] if history else {},
        }
        fusion_state = {k: v.detach().float().cpu() for k, v in self.model.fusion.state_dict().items()}
        style = Style(self.fusion_cfg.to_dict(), fusion_state, delta, self.e_t.detach().float().cpu(), meta)
        return TrainResult(style, history, seconds, steps, cancelled)


def train_style(vae: SDVAE, text: TextImageEncoder, content, prompts, config: TrainConfig | None = None,
                prompt_weights: list[float] | None = None, vgg=None, lpips=None, device=None,
                on_step: Callable[[StepInfo], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train a style from prompt(s) on content image(s). See :class:`TrainConfig` for the recipe."""
    trainer = None
    try:
        trainer = StyleTrainer(vae, text, content, prompts, config, prompt_weights, vgg, lpips, device)
        return trainer.run(on_step, should_stop)
    except torch.cuda.OutOfMemoryError as exc:
        cfg = config or TrainConfig()
        raise OutOfMemory(
            f"out of memory while training at {cfg.resolution}x{cfg.resolution} with {cfg.loss.n_crops} crops "
            f"on {len(content) if isinstance(content, (list, tuple)) else content.shape[0]} content image(s). "
            "Lower the resolution (e.g. 384), the number of crops or content images, or enable gradient "
            "checkpointing; close other GPU work and retry."
        ) from exc
    finally:
        if trainer is not None:
            trainer.opt = None
            trainer.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
