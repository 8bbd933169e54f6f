"""The photos of the proof, and which part of it may see which photo.

* ``STYLE_PHOTOS``: the content a style is trained on.
* ``HELD_OUT_PHOTOS``: what a trained style is judged on. No trained part of the proof has seen
  them: not the styles, and not the small VAE (``small_vae.VAE_TRAINING_PHOTOS`` leaves them out).

Both sets ship in the package (``stylemamba/testing/data/photos``, about 256 px; public-domain / CC0
photos from scikit-image's data: astronaut NASA, coffee CC0 R. Michetti, chelsea CC0 S. van der Walt,
rocket SpaceX public domain, camera CC0 L. Varshney), so ``python -m stylemamba check`` and the demo
run without scikit-image.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

PHOTO_DIR = Path(__file__).resolve().parent / "data" / "photos"
STYLE_PHOTOS = ("astronaut", "coffee")
HELD_OUT_PHOTOS = ("chelsea", "rocket", "camera")


@lru_cache(maxsize=None)
def original_photo(name: str) -> torch.Tensor:
    """A bundled photo at its stored size, (1,3,H,W) in [0,1] (cached: do not modify it)."""
    from ..image_io import load_image

    path = PHOTO_DIR / f"{name}.png"
    if not path.is_file():
        raise FileNotFoundError(f"bundled photo {path} is missing from this installation; reinstall the package "
                                f"(it ships {', '.join(STYLE_PHOTOS + HELD_OUT_PHOTOS)})")
    return load_image(path)


def _square(img: torch.Tensor) -> torch.Tensor:
    h, w = img.shape[-2:]
    s = min(h, w)
    return img[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]


def photo(name: str, size: int = 64) -> torch.Tensor:
    """A bundled photo as (1,3,size,size) in [0,1]: centre square, antialiased resize; a fresh copy."""
    img = _square(original_photo(name))
    if img.shape[-1] != size or img.shape[-2] != size:
        img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return img.clamp(0, 1).clone()


def photos(names, size: int = 64) -> torch.Tensor:
    """Several bundled photos stacked: (N,3,size,size)."""
    return torch.cat([photo(n, size) for n in names])


def shifted_frames(name: str, size: int, n_frames: int, step: int = 2) -> torch.Tensor:
    """A camera pan over a bundled photo: n_frames crops of ``size`` px, each ``step`` px right of the last
    (crops of the 256 px photo downscaled so the pan fits). Stand-in for consecutive video frames."""
    img = _square(original_photo(name))
    span = size + step * (n_frames - 1)
    full = F.interpolate(img, size=(span, span), mode="bilinear", align_corners=False, antialias=True)
    top = (span - size) // 2
    return torch.cat([full[:, :, top:top + size, i * step:i * step + size] for i in range(n_frames)]).clamp(0, 1)
