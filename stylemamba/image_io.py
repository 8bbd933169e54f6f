"""Reading and writing images (and video frames) as (B,C,H,W) float tensors in [0,1]."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm"}


def load_image(path: str | Path, keep_alpha: bool = False) -> torch.Tensor:
    """One image file -> (1,C,H,W) in [0,1]; C is 3, or 4 with ``keep_alpha`` and an alpha channel."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            mode = "RGBA" if keep_alpha and ("A" in im.getbands() or im.mode == "P") else "RGB"
            arr = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path.name} is not a readable image ({exc}); use PNG, JPEG or WebP") from exc
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def load_mask(path: str | Path) -> torch.Tensor:
    """A grayscale mask image -> (1,H,W) in [0,1] (white = stylise)."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None]


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """(C,H,W) or (1,C,H,W) in [0,1] -> PNG/JPEG file."""
    from PIL import Image

    if image.dim() == 4:
        image = image[0]
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    path = Path(path)
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


def read_video(path: str | Path, max_frames: int | None = None) -> tuple[torch.Tensor, float]:
    """A video file -> ((T,3,H,W) in [0,1], fps). Needs OpenCV (the ``video`` extra)."""
    try:
        import cv2
    except ImportError as exc:
        raise ImportError("reading video needs OpenCV: pip install opencv-python-headless") from exc
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"could not open video {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 24.0
    frames = []
    while max_frames is None or len(frames) < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(torch.from_numpy(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)).permute(2, 0, 1))
    cap.release()
    if not frames:
        raise ValueError(f"video {path} has no readable frames")
    return torch.stack(frames).float() / 255.0, float(fps)


def write_video(frames: torch.Tensor, path: str | Path, fps: float) -> Path:
    """(T,3,H,W) in [0,1] -> an .mp4 file (OpenCV)."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, _, h, w = frames.shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        arr = (f.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        writer.write(cv2.cvtColor(arr, cv2.COLOR_RGB2BGR))
    writer.release()
    return path
