"""The paper's evaluation metrics (Sec. 4, Table 1) as plain torch functions on (B,3,H,W) images in [0,1].

Every function returns one value per image (a ``(B,)`` tensor on the CPU, float64) so the evaluation
can report per-pair numbers and average them itself. Each docstring states the scale and which
direction is better, because a number without its scale cannot be compared with the paper's.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("stylemamba")

# ITU-R BT.601 luma weights (the Y of Y'CbCr, as in Wang et al.'s reference SSIM on gray images).
BT601 = (0.299, 0.587, 0.114)

AESTHETIC_HEAD_URL = "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_l_14_linear.pth"
AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
AESTHETIC_CONVERT = (
    "python -c \"import torch; from safetensors.torch import save_file; "
    "save_file({k: v.float().contiguous() for k, v in torch.load('sa_0_4_vit_l_14_linear.pth', "
    "map_location='cpu', weights_only=True).items()}, 'sa_0_4_vit_l_14_linear.safetensors')\""
)


def _check_pair(x: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3 or x.shape != y.shape:
        raise ValueError(f"{name} expects two (B,3,H,W) images of the same shape; got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")


def luminance(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) RGB in [0,1] -> (B,1,H,W) BT.601 luma ``0.299 R + 0.587 G + 0.114 B``."""
    w = torch.tensor(BT601, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64, device=None) -> torch.Tensor:
    """Normalised 1D Gaussian of ``size`` taps (Wang et al.: 11 taps, sigma 1.5)."""
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, channel: str = "luminance", window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) between content ``x`` and result ``y``; ``(B,)`` in [-1, 1].

    Gaussian window (11 taps, sigma 1.5), C1 = (K1 L)^2, C2 = (K2 L)^2 with L = ``data_range`` = 1,
    population (not sample) covariances, and the mean of the SSIM map over the *valid* region (no
    padding: the 5-pixel border where the window leaves the image is not scored), which is what
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)`` computes. ``channel="luminance"``: SSIM of the
    BT.601 luma Y; ``channel="rgb"``: the mean of the three per-channel SSIMs. 1 = identical structure
    (higher = more content kept).
    """
    _check_pair(x, y, "ssim")
    if channel not in ("luminance", "rgb"):
        raise ValueError(f"ssim: channel must be 'luminance' or 'rgb', got {channel!r}")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"ssim: images of {x.shape[-1]}x{x.shape[-2]} (width x height) are smaller than the {window}-pixel window")
    x, y = x.double(), y.double()
    if channel == "luminance":
        x, y = luminance(x), luminance(y)
    c = x.shape[1]
    g = gaussian_window(window, sigma, x.dtype, x.device)
    kh = g.view(1, 1, window, 1).expand(c, 1, window, 1).contiguous()
    kw = g.view(1, 1, 1, window).expand(c, 1, 1, window).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid region only
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=(1, 2, 3)).cpu()


@torch.no_grad()
def style_score(encoder, images: torch.Tensor, prompts: str | Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """Text-image style score: ``cos(F_I(Y_b), F_T(prompt_b))`` per image, ``(B,)``, raw cosine in [-1, 1].

    ``encoder`` is a :class:`stylemamba.encoders.TextImageEncoder` (SigLIP or CLIP; both embeddings are
    L2-normalised, so the dot product is the cosine). No logit scale, no x100 and no sigmoid: the raw
    cosine, so numbers from different models are NOT on the same scale (CLIP ViT-B/32 cosines of
    matching pairs are typically 0.2-0.35; SigLIP's are lower). Higher = closer to the prompt.
    ``prompts``: one prompt for all images or one per image.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"style_score expects (B,3,H,W) images; got {tuple(images.shape)}")
    n = images.shape[0]
    prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
    if len(prompts) != n:
        raise ValueError(f"style_score: {len(prompts)} prompts for {n} images; give one prompt or one per image")
    unique = list(dict.fromkeys(prompts))
    text = encoder.encode_text(unique).float()
    index = torch.tensor([unique.index(p) for p in prompts], device=text.device)
    out = []
    for start in range(0, n, batch_size):
        chunk = images[start:start + batch_size].to(encoder.device, torch.float32)
        emb = encoder.encode_image(chunk).float()
        out.append((emb * text[index[start:start + batch_size]]).sum(-1))
    return torch.cat(out).double().cpu()


@torch.no_grad()
def vgg_content_loss(vgg: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """VGG content loss per image, ``(B,)``: mean over layers of the MSE of VGG19 features of ``y`` and ``x``.

    ``vgg`` is :class:`stylemamba.perceptual.VGGFeatures` (conv4_2 + conv5_2 ReLU outputs, ImageNet
    normalisation inside), the same features and reduction as the training loss
    (:func:`stylemamba.losses.content_loss`; CLIPstyler's number is the SUM over the two layers, i.e.
    2x ours). Unbounded, 0 = identical features (lower = more content kept). Depends on the VGG weights
    and on the resolution, so compare numbers only at the same resolution.
    """
    _check_pair(x, y, "vgg_content_loss")
    p = next(vgg.parameters())
    fx = vgg(x.to(p.device, p.dtype))
    fy = vgg(y.to(p.device, p.dtype))
    per_layer = [((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3)) for a, b in zip(fy, fx)]
    return (sum(per_layer) / len(per_layer)).cpu()


@torch.no_grad()
def lpips_distance(lpips: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS distance per image, ``(B,)`` (Zhang et al. 2018, v0.1 linear heads), 0 = identical, lower = closer.

    ``lpips`` is :class:`stylemamba.perceptual.LPIPSLoss` (or a bare ``lpips.LPIPS``); images in [0,1]
    are mapped to [-1,1] here. Typical values: 0.1-0.3 for mild edits, 0.5-0.7 for strong stylisation.
    """
    _check_pair(x, y, "lpips_distance")
    net = getattr(lpips, "model", lpips)
    p = next(net.parameters())
    d = net(y.to(p.device, p.dtype) * 2 - 1, x.to(p.device, p.dtype) * 2 - 1, normalize=False)
    return d.reshape(x.shape[0], -1).mean(dim=1).double().cpu()


def count_parameters(module: nn.Module | None, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor once); 0 for ``None``."""
    if module is None:
        return 0
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only))


def aesthetic_missing_message(problems: Sequence[str]) -> str:
    """Why the aesthetic score cannot be computed, and which files to get from where."""
    return (
        "aesthetic score skipped: " + "; ".join(problems) + ". It needs (1) the LAION aesthetic predictor head "
        f"sa_0_4_vit_l_14_linear.pth from {AESTHETIC_HEAD_URL}, converted once to safetensors (it is a pickle, "
        f"which StyleMamba never loads): {AESTHETIC_CONVERT}; and (2) a folder with all files of "
        f"https://huggingface.co/{AESTHETIC_CLIP}. Then pass --aesthetic-head sa_0_4_vit_l_14_linear.safetensors "
        "--aesthetic-clip <that folder>."
    )


class AestheticScorer:
    """LAION aesthetic predictor: ``Linear(768 -> 1)`` on the L2-normalised CLIP ViT-L/14 image embedding.

    Scores are on the 1-10 rating scale the head was fitted to (higher = more aesthetic; ordinary
    photos score about 4.5-6.5). Only safetensors heads are read (tensors ``weight`` (1, D), ``bias`` (1,)).
    When the head or the CLIP model is missing, ``available`` is False and ``message`` says which files
    to get and where; :meth:`score` then raises. A CLIP other than ViT-L/14 with a matching width is
    accepted (that is how the code path is tested with tiny models), with a ``note`` saying that such
    scores are not LAION's. ``clip_encoder`` may be given instead of ``clip_path`` (an already loaded
    :class:`~stylemamba.encoders.TextImageEncoder`).
    """

    def __init__(self, head_path: str | Path | None, clip_path: str | Path | None = None, device=None,
                 clip_encoder=None):
        self.available = False
        self.message = ""
        self.note = ""
        self.head: nn.Linear | None = None
        self.clip = None
        self.head_path = str(head_path) if head_path else None
        self.clip_name = str(clip_path) if clip_path else getattr(clip_encoder, "name", None)
        problems = []
        if not head_path:
            problems.append("no LAION aesthetic head given (--aesthetic-head)")
        elif Path(head_path).is_dir():
            problems.append(f"LAION aesthetic head {head_path} is a folder: give the .safetensors file in it")
        elif not Path(head_path).is_file():
            problems.append(f"LAION aesthetic head not found: {head_path}")
        elif Path(head_path).suffix.lower() in (".pth", ".pt", ".bin", ".ckpt", ".pkl"):
            problems.append(f"{head_path} is a pickle file, which StyleMamba never loads (convert it, see below)")
        if clip_encoder is None:
            if not clip_path:
                problems.append("no CLIP ViT-L/14 model given (--aesthetic-clip)")
            elif not Path(clip_path).exists() and str(clip_path).count("/") != 1:
                problems.append(f"CLIP ViT-L/14 folder not found: {clip_path}")
        if problems:
            self.message = aesthetic_missing_message(problems)
            return
        self.head = self._load_head(Path(head_path))
        if clip_encoder is None:
            from ..encoders import load_text_image_encoder
            from ..vae import ModelFileError

            try:
                clip_encoder = load_text_image_encoder(clip_path, device=device)
            except ModelFileError as exc:
                self.message = aesthetic_missing_message([f"could not load the CLIP model {clip_path} ({exc})"])
                return
        if clip_encoder.kind != "clip":
            raise ValueError(f"the aesthetic score needs a CLIP model ({AESTHETIC_CLIP}); "
                             f"{self.clip_name} is a {clip_encoder.kind} model")
        dim = clip_encoder.embed_dim
        if dim != self.head.in_features:
            raise ValueError(f"the aesthetic head takes {self.head.in_features}-d embeddings but the CLIP model "
                             f"{self.clip_name} gives {dim}-d ones; the LAION head needs CLIP ViT-L/14 (768-d)")
        vc = clip_encoder.model.config.vision_config
        if not (dim == 768 and getattr(vc, "patch_size", None) == 14 and getattr(vc, "hidden_size", None) == 1024):
            self.note = (f"the CLIP model {self.clip_name} is not ViT-L/14: these aesthetic scores are NOT the "
                         "LAION aesthetic score")
            log.warning(self.note)
        self.clip = clip_encoder
        self.head = self.head.to(clip_encoder.device)
        self.available = True

    @staticmethod
    def _load_head(path: Path) -> nn.Linear:
        from ..perceptual import read_safetensors

        state = read_safetensors(str(path), "LAION aesthetic head", "it is converted once from its .pth (see "
                                 "docs/EVAL.md)")
        weights = {k.rsplit(".", 1)[-1]: v for k, v in state.items()}
        if set(weights) != {"weight", "bias"} or len(state) != 2 or weights["weight"].dim() != 2 \
                or weights["weight"].shape[0] != 1 or weights["bias"].numel() != 1:
            found = [(k, tuple(v.shape)) for k, v in state.items()]  # a whole other model's list ran for pages
            raise ValueError(f"{path} is not a LAION aesthetic head: expected tensors 'weight' (1, 768) and "
                             f"'bias' (1,), found {found[:4]}" + (f" and {len(found) - 4} more" if len(found) > 4
                                                                else ""))
        head = nn.Linear(weights["weight"].shape[1], 1)
        head.load_state_dict({"weight": weights["weight"].float(), "bias": weights["bias"].float().reshape(1)})
        return head.eval().requires_grad_(False)

    @torch.no_grad()
    def score(self, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> ``(B,)`` aesthetic ratings (about 1-10, higher = better)."""
        if not self.available:
            raise RuntimeError(self.message)
        out = []
        for start in range(0, images.shape[0], batch_size):
            emb = self.clip.encode_image(images[start:start + batch_size].to(self.clip.device, torch.float32))
            out.append(self.head(F.normalize(emb.float(), dim=-1)).squeeze(-1))
        return torch.cat(out).double().cpu()


def finite_mean(values: Sequence[float | None]) -> float | None:
    """Mean of the finite numbers in ``values``; None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(xs) / len(xs) if xs else None
