"""Reading and writing images (and video frames) as (B,C,H,W) float tensors in [0,1]."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
ALPHA_SUFFIXES = IMAGE_SUFFIXES - {".jpg", ".jpeg"}  # formats that store an alpha channel


def check_finite(images: torch.Tensor, what: str = "image", first: int = 0) -> None:
    """Refuse NaN or infinite pixels in (B,...) images: they would silently give NaN results.

    They come from an upstream step that failed (e.g. a VAE decode that overflowed in fp16).
    Checked one image at a time, so a long video is never copied whole.
    """
    for i in range(images.shape[0]):
        finite = torch.isfinite(images[i])
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(f"{what} {first + i} has {bad} NaN or infinite pixel value(s) out of "
                             f"{images[i].numel()}: whatever made it produced invalid pixels (e.g. a VAE decode "
                             "that overflowed in fp16); fix or replace that image")


def load_image(path: str | Path, keep_alpha: bool = False) -> torch.Tensor:
    """One image file -> (1,C,H,W) in [0,1]; C is 3, or 4 with ``keep_alpha`` and an alpha channel."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            mode = "RGBA" if keep_alpha and _alpha(im) else "RGB"
            arr = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path.name} is not a readable image ({exc}); use PNG, JPEG or WebP") from exc
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def _alpha(im) -> bool:
    return "A" in im.getbands() or "transparency" in im.info  # a palette image may carry a transparent colour


def has_alpha(path: str | Path) -> bool:
    """Whether an image file has an alpha channel (read from its header; what ``load_image(keep_alpha=True)`` keeps)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return _alpha(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{Path(path).name} is not a readable image ({exc}); use PNG, JPEG or WebP") from exc


def load_mask(path: str | Path) -> torch.Tensor:
    """A grayscale mask image -> (1,H,W) in [0,1] (white = stylise)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask image not found: {path}")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"mask {path.name} is not a readable image ({exc}); use a grayscale PNG (white = "
                         "stylise)") from exc
    return torch.from_numpy(arr)[None]


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """(C,H,W) or (1,C,H,W) in [0,1] -> PNG/JPEG file."""
    from PIL import Image

    if image.dim() == 4:
        image = image[0]
    path = Path(path)
    if image.shape[0] == 4 and path.suffix.lower() not in ALPHA_SUFFIXES:
        raise ValueError(f"{path.name}: {path.suffix} cannot store the alpha channel (transparency) of this "
                         "image; save it as .png or .webp")
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr if arr.shape[2] != 1 else arr[:, :, 0]).save(path)
    return path


def list_images(source: str | Path) -> list[Path]:
    """A file, or every image in a folder (sorted)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {source}")
        return files
    if not source.exists():
        raise FileNotFoundError(f"input not found: {source}")
    return [source]
