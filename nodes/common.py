"""What the nodes pass between each other, and conversions between ComfyUI's and the library's layouts.

ComfyUI images are ``(B,H,W,C)`` in [0,1], masks ``(B,H,W)``; the library uses ``(B,C,H,W)``.
The custom socket types are plain strings (a public contract, like node ids and input names).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

CATEGORY = "StyleMamba"

# Socket types (public contract: saved workflows refer to them).
TEXT_MODEL = "STYLEMAMBA_TEXT_MODEL"  # an ImageTextModel (stylemamba.encoders): SigLIP or CLIP
CONDITIONING = "STYLEMAMBA_CONDITIONING"  # a stylemamba.direction.TextDirection
STYLE = "STYLEMAMBA_STYLE"
UNIVERSAL = "STYLEMAMBA_UNIVERSAL"  # a stylemamba.style_file.UniversalModel (one model for any prompt)
PERCEPTUAL = "STYLEMAMBA_PERCEPTUAL"

# The nodes' names for the knobs the library's out-of-memory advice names (stylemamba.errors).
OOM_NAMES = {"resolution": "'resolution'", "n_crops": "'n_crops'", "images": "the number of content images",
             "gradient_checkpointing": None, "batch_size": "'batch_size'", "tile_size": "'tile_size'", "device": None}


@dataclass(frozen=True)
class StyleBlend:
    """Several trained styles with weights (Mix Styles); the stylise nodes apply them together.

    ``mode``: how they mix (stylemamba.style_model): "outputs" averages the styles' pictures, "weights"
    blends their fusion outputs and decoder weights (0.1.0).
    """

    styles: tuple[Any, ...]  # stylemamba.style_file.Style
    weights: tuple[float, ...]
    mode: str = "outputs"


@dataclass
class PerceptualNets:
    """The frozen networks of the content losses; either may be None (that loss term is skipped)."""

    vgg: nn.Module | None = None
    lpips: nn.Module | None = None
    names: dict[str, str] = field(default_factory=dict)


def style_parts(value: Any) -> tuple[list[Any], list[float]]:
    """A STYLEMAMBA_STYLE value (one Style or a StyleBlend) -> (styles, weights)."""
    from ..stylemamba.style_file import Style

    if isinstance(value, Style):
        return [value], [1.0]
    if isinstance(value, StyleBlend):
        return list(value.styles), list(value.weights)
    raise TypeError(f"expected a StyleMamba style (from Train, Load Style or Mix Styles), got {type(value).__name__}")


# ------------------------------------------------------------------------------------ layouts
def blend_mode(value: Any) -> str:
    """How a STYLEMAMBA_STYLE value mixes its styles: a StyleBlend's mode ("outputs" for one Style)."""
    return value.mode if isinstance(value, StyleBlend) else "outputs"


def check_finite(images: torch.Tensor) -> None:
    """NaN/inf pixels (an upstream node failed, e.g. an fp16 VAE decode overflowed) are an error, not NaN output."""
    from ..stylemamba.image_io import check_finite as check

    check(images, "IMAGE batch item")


def image_to_library(images: torch.Tensor, copy: bool = True) -> torch.Tensor:
    """ComfyUI IMAGE (B,H,W,C) -> (B,C,H,W) float: a fresh tensor (safe to use with autograd), or with
    ``copy=False`` a view (stylising only reads it, batch by batch: a long video is not held twice)."""
    if not torch.is_tensor(images) or images.dim() not in (3, 4):
        raise ValueError(f"expected an IMAGE batch (B,H,W,C); got {getattr(images, 'shape', type(images))}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"IMAGE has {images.shape[-1]} channels; expected 1, 3 or 4 (B,H,W,C layout)")
    check_finite(images)
    view = images.detach().permute(0, 3, 1, 2)
    return view.float().clone() if copy else view


def image_to_comfy(images: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> ComfyUI IMAGE (B,H,W,C) float32 on the CPU, contiguous."""
    return images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).contiguous().cpu()


def mask_for_images(mask: torch.Tensor | None, batch: int, height: int, width: int) -> torch.Tensor | None:
    """ComfyUI MASK (H,W) / (B,H,W) -> (B',1,H,W) resized to the image (a mask editor's mask may differ in size)."""
    if mask is None:
        return None
    m = mask.detach().float()
    if m.dim() == 2:
        m = m[None]
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dim() != 3:
        raise ValueError(f"MASK must be (H,W) or (B,H,W); got {tuple(mask.shape)}")
    if m.shape[0] not in (1, batch):
        raise ValueError(f"the mask batch ({m.shape[0]}) must be 1 or match the image batch ({batch})")
    m = m[:, None]
    if m.shape[-2:] != (height, width):
        m = torch.nn.functional.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)
    return m.clamp(0, 1)


def without_inference_tensors(module: nn.Module | None) -> nn.Module | None:
    """Replace parameters/buffers created under ``torch.inference_mode`` by normal copies, in place.

    ComfyUI runs every node under inference mode; a network loaded there cannot take part in a
    backward pass ("Inference tensors cannot be saved for backward"). Values are unchanged.
    Call outside inference mode.
    """
    if module is None:
        return None
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and p.is_inference():
                sub._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        for name, b in list(sub._buffers.items()):
            if b is not None and b.is_inference():
                sub._buffers[name] = b.clone()
    return module
