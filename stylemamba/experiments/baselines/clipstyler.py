"""CLIPstyler (Kwon & Ye, CVPR 2022, arXiv 2112.00374): the baseline of the paper's Tables 1-2.

Per content image and prompt, a small U-Net (615,267 parameters) is optimised from scratch
for 200 iterations so that its output X -> Y moves along the CLIP text direction
(``e_t - e_src``) globally and in 64 random perspective-warped 128-px crops (at 512 px), while the
VGG19 conv4_2 / conv5_2 features stay close to the content's and a total-variation prior keeps it
smooth. Written from the paper and from reading the authors' repository; no code is copied. It
shares our loss functions (:mod:`stylemamba.losses`) and the text-image interface
(:class:`~stylemamba.encoders.TextImageEncoder`), so the real baseline is CLIP ViT-B/32 as in the
paper while tests run on tiny models. Conventions as our trainer: the global view and all crops go
through the image tower in ONE call, the shared autocast (:mod:`stylemamba.precision`: bf16, or fp16
with loss scaling on older GPUs), no host syncs inside :meth:`ClipStylerRun.step` (the benchmark
times it step by step beside :meth:`stylemamba.train.StyleTrainer.step`).

Differences from the authors' script, on purpose: the crop side scales with the image
(``crop_fraction``, 128 px at 512 px) so small test images work; content images are prepared like
ours (short side resized, centre crop, :func:`stylemamba.train.prepare_content`) so both methods see
the same pixels; prompt templates are our own short list (the script averages over CLIP's 79
ImageNet templates; pass yours with ``templates``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ... import losses as L
from ...options import from_options
from ...precision import autocast, check_precision, grad_scaler

log = logging.getLogger("stylemamba")

# Prompt templates averaged into one text embedding (CLIP's prompt-ensembling idea, our wording).
DEFAULT_TEMPLATES = (
    "{}",
    "a picture of {}.",
    "an image of {}.",
    "a rendering of {}.",
    "a painting of {}.",
    "a drawing of {}.",
    "an artwork showing {}.",
    "a photograph of {}.",
)


@dataclass
class ClipStylerConfig:
    """CLIPstyler's recipe (its paper and ``train_CLIPstyler.py`` defaults); every number is an option."""

    steps: int = 200
    lr: float = 5e-4
    lr_decay_step: int = 100  # lr is multiplied by lr_decay from this (0-based) step on
    lr_decay: float = 0.5
    resolution: int | None = 512  # content resized (short side) + centre-cropped to this square; None = keep size
    n_crops: int = 64
    crop_size: int = 128  # used when crop_fraction is None
    crop_fraction: float | None = 0.25  # crop side = fraction * short side (128 at 512)
    crop_perspective: float = 0.5  # RandomPerspective distortion scale
    patch_threshold: float = 0.7
    patch_weight: float = 9000.0
    dir_weight: float = 500.0
    content_weight: float = 150.0
    tv_weight: float = 2e-3
    content_reduction: str = "sum"  # CLIPstyler sums the MSE of conv4_2 and conv5_2; "mean" = ours
    base_channels: int = 16  # the U-Net's ngf
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    output_contrast: float = 1.5  # the script saves adjust_contrast(clamp(Y), 1.5) ...
    output_normalize: bool = True  # ... through save_image(normalize=True): min-max over the image
    seed: int = 0
    precision: str = "auto"  # stylemamba.precision: "auto" (bf16 on CUDA, fp16 on pre-Ampere GPUs, fp32 on CPU) | ...

    def __post_init__(self):
        self.templates = tuple(self.templates) if self.templates else ("{}",)
        self.precision = check_precision(self.precision, f"{type(self).__name__}.precision")
        checks = [
            ("steps", self.steps >= 1, ">= 1"), ("lr", self.lr > 0, "> 0"),
            ("lr_decay_step", self.lr_decay_step >= 0, ">= 0"), ("lr_decay", self.lr_decay > 0, "> 0"),
            ("resolution", self.resolution is None or (self.resolution >= 16 and self.resolution % 8 == 0),
             "None or a multiple of 8, >= 16"),
            ("n_crops", self.n_crops >= 0, ">= 0 (0 = no patch loss)"), ("crop_size", self.crop_size >= 1, ">= 1"),
            ("crop_fraction", self.crop_fraction is None or 0 < self.crop_fraction <= 1, "None or in (0, 1]"),
            ("crop_perspective", 0 <= self.crop_perspective <= 1, "in [0, 1]"),
            ("patch_threshold", 0 <= self.patch_threshold <= 2, "in [0, 2]"),
            ("content_reduction", self.content_reduction in ("sum", "mean"), "'sum' or 'mean'"),
            ("base_channels", self.base_channels >= 1, ">= 1"),
            ("templates", all("{}" in t for t in self.templates), "strings that contain {}"),
            ("output_contrast", self.output_contrast > 0, "> 0"),
        ]
        for name in ("patch_weight", "dir_weight", "content_weight", "tv_weight"):
            checks.append((name, getattr(self, name) >= 0, ">= 0"))
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"ClipStylerConfig.{name}={getattr(self, name)!r} is invalid: it must be {rule}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["templates"] = list(self.templates)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClipStylerConfig:
        return from_options(cls, d, "CLIPstyler", renamed={"amp": "precision"})


# ---------------------------------------------------------------------------------------------- the U-Net
class ResidualConvBlock(nn.Module):
    """Two 3x3 conv + InstanceNorm + ReLU layers plus a 1x1 shortcut (CLIPstyler's building block)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1), nn.InstanceNorm2d(cout), nn.ReLU(),
        )
        self.shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class StyleUNet(nn.Module):
    """CLIPstyler's image-to-image U-Net: 3 down and 3 up stages, widths c, c, 2c, 4c, bottleneck 8c.

    Down stage: residual block, then a stride-2 4x4 conv (its pre-downsampling features are the skip).
    Up stage: bilinear x2, concatenate the skip, residual block. A last residual block sees the
    up-path output concatenated with the stem features; 1x1 conv to RGB; sigmoid. With c = 16 this is
    the authors' size: 615,267 parameters. Input H, W must be multiples of 8
    (:func:`stylize_clipstyler` pads); output has the input's shape, in [0, 1].
    """

    def __init__(self, base_channels: int = 16, in_channels: int = 3, out_channels: int = 3):
        super().__init__()
        c = int(base_channels)
        self.stem = nn.Conv2d(in_channels, c, 1)
        self.stem_block = ResidualConvBlock(c, c)
        downs = [(c, c), (c, 2 * c), (2 * c, 4 * c)]
        self.down_blocks = nn.ModuleList(ResidualConvBlock(a, b) for a, b in downs)
        self.downsample = nn.ModuleList(nn.Conv2d(b, b, 4, stride=2, padding=1) for _, b in downs)
        self.bottleneck = ResidualConvBlock(4 * c, 8 * c)
        ups = [(8 * c, 4 * c), (4 * c, 2 * c), (2 * c, c)]  # (coming in, skip = going out)
        self.up_blocks = nn.ModuleList(ResidualConvBlock(a + b, b) for a, b in ups)
        self.head_block = ResidualConvBlock(2 * c, c)
        self.to_rgb = nn.Conv2d(c, out_channels, 1)

    def forward(self, x: torch.Tensor, use_sigmoid: bool = True) -> torch.Tensor:
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"StyleUNet needs H and W multiples of 8; got {x.shape[-1]}x{x.shape[-2]} (width x height)")
        stem = self.stem_block(self.stem(x))
        h, skips = stem, []
        for block, down in zip(self.down_blocks, self.downsample):
            h = block(h)
            skips.append(h)
            h = down(h)
        h = self.bottleneck(h)
        for block, skip in zip(self.up_blocks, reversed(skips)):
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        h = self.to_rgb(self.head_block(torch.cat([h, stem], dim=1)))
        return torch.sigmoid(h) if use_sigmoid else h


# ---------------------------------------------------------------------------------------------- helpers
@torch.no_grad()
def template_embedding(encoder, text: str, templates: Sequence[str]) -> torch.Tensor:
    """Mean of the normalised embeddings of ``text`` in every template, renormalised: (D,)."""
    emb = encoder.encode_text([t.format(text) for t in templates]).float()
    return F.normalize(emb.mean(0), dim=-1)


def finish_output(y: torch.Tensor, contrast: float = 1.5, normalize: bool = True) -> torch.Tensor:
    """What the authors' script writes to disk: clamp, contrast x``contrast`` around the mean gray, min-max.

    Contrast as torchvision's ``adjust_contrast`` (blend with the mean BT.601 gray of each image, clamp);
    ``normalize`` as ``save_image(normalize=True)`` (each image stretched to its own min..max).
    """
    y = y.float().clamp(0, 1)
    if contrast != 1.0:
        gray = (0.2989 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2]).mean(dim=(1, 2)).view(-1, 1, 1, 1)
        y = (contrast * y + (1 - contrast) * gray).clamp(0, 1)
    if normalize:
        lo = y.amin(dim=(1, 2, 3), keepdim=True)
        hi = y.amax(dim=(1, 2, 3), keepdim=True)
        y = (y - lo) / (hi - lo).clamp_min(1e-5)
    return y


# ---------------------------------------------------------------------------------------------- the run
class ClipStylerRun:
    """One CLIPstyler optimisation (one content image, one prompt). ``step(i)`` is one iteration; ``run()`` all.

    Everything frozen is computed once here: the prepared content, its CLIP embedding and VGG
    features, and the template-averaged text direction.
    """

    def __init__(self, image: torch.Tensor, prompt: str, text_encoder, vgg: nn.Module | None = None,
                 config: ClipStylerConfig | None = None, source_prompt: str = "a Photo",
                 device: torch.device | str | None = None):
        from ...train import prepare_content

        self.cfg = cfg = config or ClipStylerConfig()
        self.device = torch.device(device) if device is not None else text_encoder.device
        self.text, self.vgg = text_encoder, vgg
        self.prompt, self.source_prompt = prompt, source_prompt
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("empty style prompt: write what the style should look like")
        img = image if image.dim() == 4 else image.unsqueeze(0)
        if img.shape[0] != 1:
            raise ValueError(f"CLIPstyler optimises one image at a time; got a batch of {img.shape[0]}")
        if cfg.resolution is not None:
            img = prepare_content(img, cfg.resolution)
        img = img[:, :3].float().clamp(0, 1)
        self.out_hw = tuple(img.shape[-2:])
        ph, pw = (-img.shape[-2]) % 8, (-img.shape[-1]) % 8
        if ph or pw:  # the U-Net halves three times
            img = F.pad(img, (0, pw, 0, ph), mode="replicate")
        if vgg is None and cfg.content_weight > 0:
            log.warning("CLIPstyler: no VGG network given, the content loss is skipped")

        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        with torch.no_grad():
            self.x = img.to(self.device)
            e_t = template_embedding(text_encoder, prompt, cfg.templates)
            e_src = template_embedding(text_encoder, source_prompt, cfg.templates)
            self.text_dir = (e_t - e_src).unsqueeze(0)
            with autocast(self.device, cfg.precision):
                self.emb_x = text_encoder.encode_image(self.x).float()
                self.feats_x = [f.detach() for f in vgg(self.x)] if (vgg is not None and cfg.content_weight > 0) \
                    else None
        self.unet = StyleUNet(cfg.base_channels).to(self.device)
        if self.device.type == "cuda":
            self.unet = self.unet.to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=cfg.lr)
        self.scaler = grad_scaler(self.device, cfg.precision)
        self.history: list[dict[str, torch.Tensor]] = []
        self.last: torch.Tensor | None = None

    def lr_at(self, step: int) -> float:
        return self.cfg.lr * (self.cfg.lr_decay if step >= self.cfg.lr_decay_step else 1.0)

    def step(self, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One iteration; returns the detached (unweighted) loss terms plus ``total``, and Y (no host sync)."""
        cfg, enc = self.cfg, self.text
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step)
        with autocast(self.device, cfg.precision):
            y = self.unet(self.x)
            size = enc.image_size
            views = [F.interpolate(y, size=(size, size), mode="bicubic", align_corners=False, antialias=True)]
            if cfg.n_crops and cfg.patch_weight > 0:
                crop = L.crop_size_for(*self.out_hw, cfg.crop_fraction, cfg.crop_size)
                views.append(L.random_crops(y[..., :self.out_hw[0], :self.out_hw[1]], cfg.n_crops, crop, size,
                                            perspective=cfg.crop_perspective, generator=self.gen))
            emb = enc.encode_image(torch.cat([v.to(y.dtype) for v in views]))  # one batched CLIP call
            terms = {"dir": L.directional_loss(emb[:1], self.emb_x, self.text_dir)}
            weights = {"dir": cfg.dir_weight}
            if len(views) > 1:
                terms["patch"] = L.patch_directional_loss(emb[1:], self.emb_x, self.text_dir, cfg.patch_threshold)
                weights["patch"] = cfg.patch_weight
            if self.feats_x is not None:
                c = L.content_loss(self.vgg(y), self.feats_x)
                terms["content"] = c * len(self.feats_x) if cfg.content_reduction == "sum" else c
                weights["content"] = cfg.content_weight
            if cfg.tv_weight > 0:
                terms["tv"] = L.total_variation(y, form="clipstyler")
                weights["tv"] = cfg.tv_weight
            total = L.total_loss(terms, weights)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        out = {k: v.detach().float() for k, v in terms.items()}
        out["total"] = total.detach().float()
        self.last = y.detach()
        return out, self.last

    def run(self, on_step: Callable | None = None, should_stop: Callable[[], bool] | None = None) -> float:
        """All ``cfg.steps`` iterations (or until ``should_stop()``); returns the seconds spent.

        ``on_step(StepInfo)`` (see :class:`stylemamba.train.StepInfo`) after each step; it turns the
        losses into floats, i.e. syncs with the GPU, so leave it None when timing.
        """
        from ...train import StepInfo

        t0 = time.perf_counter()
        for i in range(self.cfg.steps):
            if should_stop is not None and should_stop():
                break
            terms, _ = self.step(i)
            self.history.append(terms)
            if on_step is not None:
                on_step(StepInfo(i + 1, self.cfg.steps, i, {k: float(v) for k, v in terms.items()},
                                 time.perf_counter() - t0))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0

    @torch.no_grad()
    def output(self, finish: bool = True) -> torch.Tensor:
        """The current result (1,3,H,W) on the CPU, at the prepared content's size; ``finish`` as the script saves it."""
        with autocast(self.device, self.cfg.precision):
            y = self.unet(self.x)
        y = y.float()[..., :self.out_hw[0], :self.out_hw[1]].cpu()
        return finish_output(y, self.cfg.output_contrast, self.cfg.output_normalize) if finish else y.clamp(0, 1)

    def history_floats(self) -> list[dict[str, float]]:
        return [{k: float(v) for k, v in h.items()} for h in self.history]


def stylize_clipstyler(image: torch.Tensor, prompt: str, text_encoder, vgg: nn.Module | None = None,
                       config: ClipStylerConfig | None = None, source_prompt: str = "a Photo",
                       on_step: Callable | None = None, should_stop: Callable[[], bool] | None = None,
                       device: torch.device | str | None = None) -> tuple[torch.Tensor, list[dict[str, float]], float]:
    """Stylise one image with CLIPstyler: returns (image (1,3,H,W) in [0,1] on the CPU, loss history, seconds).

    ``seconds`` is the optimisation time (for CLIPstyler it IS the time per image: nothing is reused).
    The image is at ``config.resolution`` (short side resized, centre crop), post-processed like the
    authors' saved images (``output_contrast``, ``output_normalize``).
    """
    run = ClipStylerRun(image, prompt, text_encoder, vgg, config, source_prompt, device)
    seconds = run.run(on_step, should_stop)
    return run.output(), run.history_floats(), seconds
