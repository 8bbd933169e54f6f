"""Reading and writing images (and video frames) as (B,C,H,W) float tensors in [0,1], and writing any file whole."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
ALPHA_SUFFIXES = IMAGE_SUFFIXES - {".jpg", ".jpeg"}  # formats that store an alpha channel
MAX_SIDE = {".jpg": 65500, ".jpeg": 65500, ".webp": 16383}  # what these formats can store, in pixels
NAME_MAX = 255  # bytes in one file name (ext4, APFS, NTFS in UTF-16 units)
_PARTIAL_NAME = re.compile(r"^\..+\.partial\d*(\.[^.]+)?$")  # partial_file's names

log = logging.getLogger("stylemamba")


def check_finite(images: torch.Tensor, what: str = "image", first: int = 0, unit: str = "pixel value",
                 cause: str = "whatever made it produced invalid pixels (e.g. a VAE decode that overflowed in fp16); "
                              "fix or replace that image") -> None:
    """Refuse NaN or infinite values in (B,...) images (or masks, latents): they would silently give NaN results.

    They come from an upstream step that failed (e.g. a VAE decode that overflowed in fp16).
    Checked one item at a time, so a long video is never copied whole.
    """
    for i in range(images.shape[0]):
        finite = torch.isfinite(images[i])
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(f"{what} {first + i} has {bad} NaN or infinite {unit}(s) out of {images[i].numel()}: "
                             f"{cause}")


def check_pixels(images: torch.Tensor, what: str = "image", first: int = 0) -> None:
    """:func:`check_finite`, and pixels on the [0, 1] scale: 0-255 images (``torchvision.io.read_image``, numpy
    arrays from Pillow) were clamped to a white picture without a word."""
    if not images.is_floating_point():
        raise ValueError(f"{what}s are {str(images.dtype).replace('torch.', '')} (0-255 integers?): give floats in "
                         "[0, 1], e.g. images.float() / 255")
    check_finite(images, what, first)
    for i in range(images.shape[0]):
        top = float(images[i].amax()) if images[i].numel() else 0.0
        if top > 2.0:  # a little over 1 is an upstream rounding, clamped; 2 or more is another scale
            raise ValueError(f"{what} {first + i} has pixel values up to {top:.4g}: pixels are floats in [0, 1]; "
                             "divide 0-255 values by 255")


def not_a_file(path: Path, what: str) -> FileNotFoundError:
    """The error for a ``what`` that is not a file: missing, or a folder ("not found" misled for a folder)."""
    if path.is_dir():
        return FileNotFoundError(f"{what} {path} is a folder, not a file: give one file (e.g. one in it)")
    return FileNotFoundError(f"{what} not found: {path}")


def load_image(path: str | Path, keep_alpha: bool = False) -> torch.Tensor:
    """One image file -> (1,C,H,W) in [0,1]; C is 3, or 4 with ``keep_alpha`` and an alpha channel."""
    path = Path(path)
    if not path.is_file():
        raise not_a_file(path, "image")
    im = _open_upright(path, "", "use PNG, JPEG or WebP")
    arr = _pixels(im, "RGBA" if keep_alpha and _alpha(im) else "RGB", path.name)
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def _open_upright(path: Path, what: str, fix: str):
    """The image as viewers (and ComfyUI's Load Image) show it: a phone photo's EXIF orientation applied."""
    from PIL import ImageOps

    with _opened(path, what, fix) as im:
        im.load()
        frames = getattr(im, "n_frames", 1)
        if frames > 1:  # an animated GIF / WebP / PNG or a multi-page TIFF: cut to its first frame without a word
            log.warning("%s%s has %d frames: only the first is used; to stylise every frame, make it a video first "
                        "(e.g. ffmpeg -i %s %s.mp4) and give that", what, path.name, frames, path.name, path.stem)
        return ImageOps.exif_transpose(im)  # a copy, turned when the file says so


@contextlib.contextmanager
def _opened(path: Path, what: str = "", fix: str = "use PNG, JPEG or WebP"):
    """``Image.open(path)`` (lazy: the header only, until pixels are asked for), with Pillow's errors turned into
    one that names the file and the fix, for the pixels read inside the block too."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            yield im
    except Image.DecompressionBombError as exc:  # not an OSError
        raise ValueError(f"{what}{path.name} is too large to open ({exc}); downscale it or cut it into parts "
                         "first") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{what}{path.name} is not a readable image ({exc}); {fix}") from exc


# Pillow's high-bit-depth grayscale modes (16-bit PNG / TIFF); Pillow's convert("RGB") would clip them at 255
_WIDE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def _pixels(im, mode: str, name: str) -> np.ndarray:
    """``im`` as float32 (H,W,C) in [0,1] with ``mode``'s channels ("RGB", "RGBA" or "L")."""
    if im.mode not in _WIDE:
        arr = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
        return arr if arr.ndim == 3 else arr[:, :, None]
    gray = np.asarray(im, dtype=np.float32) / _WIDE[im.mode]
    if not np.isfinite(gray).all() or gray.size and (gray.min() < 0 or gray.max() > 1):
        raise ValueError(f"{name}: a {im.mode!r} (high bit depth) image whose values are not in the "
                         f"{'0..1' if im.mode == 'F' else '0..65535'} range; save it as an 8- or 16-bit PNG")
    channels = [gray] * (1 if mode == "L" else 3) + ([np.ones_like(gray)] if mode == "RGBA" else [])
    return np.stack(channels, axis=2)


def _alpha(im) -> bool:
    return "A" in im.getbands() or "transparency" in im.info  # a palette image may carry a transparent colour


def has_alpha(path: str | Path) -> bool:
    """Whether an image file has an alpha channel (read from its header; what ``load_image(keep_alpha=True)`` keeps)."""
    with _opened(Path(path)) as im:
        return _alpha(im)


def load_mask(path: str | Path) -> torch.Tensor:
    """A grayscale mask image -> (1,H,W) in [0,1] (white = stylise)."""
    path = Path(path)
    if not path.is_file():
        raise not_a_file(path, "mask image")
    im = _open_upright(path, "mask ", "use a grayscale PNG (white = stylise)")
    return torch.from_numpy(_pixels(im, "L", path.name)[:, :, 0].copy())[None]


# the PNG text chunk in which a stylised picture says what made it (``stylemamba info picture.png`` reads it)
NOTE_KEY = "stylemamba"


def save_image(image: torch.Tensor, path: str | Path, note: dict | None = None) -> Path:
    """(C,H,W) or (1,C,H,W) in [0,1] -> PNG/JPEG file. ``note``: what made the picture, kept as JSON in a PNG's
    text (other formats are written without it): a shared result can tell which style and strength made it."""
    from PIL import Image, PngImagePlugin

    if image.dim() == 4:
        image = image[0]
    path = Path(path)
    if image.shape[0] == 4 and path.suffix.lower() not in ALPHA_SUFFIXES:
        raise ValueError(f"{path.name}: {path.suffix} cannot store the alpha channel (transparency) of this "
                         "image; save it as .png or .webp")
    refuse_too_big_for(path, image.shape[-1], image.shape[-2])
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture, extra = Image.fromarray(arr if arr.shape[2] != 1 else arr[:, :, 0]), {}
    if note is not None and path.suffix.lower() == ".png":
        extra["pnginfo"] = PngImagePlugin.PngInfo()
        extra["pnginfo"].add_text(NOTE_KEY, json.dumps(note, default=str))
    # written beside, then renamed: a Ctrl-C or a full disk never leaves a truncated file under the final name
    return write_whole(path, lambda tmp: picture.save(tmp, **extra), keep_suffix=True)


def refuse_too_big_for(path: Path, width: int, height: int) -> None:
    """A picture over its format's size limit (JPEG 65,500 pixels a side, WebP 16,383): Pillow failed on it with
    'broken data stream', and only when the result was saved."""
    limit = MAX_SIDE.get(path.suffix.lower())
    if limit is not None and max(width, height) > limit:
        raise ValueError(f"{path.name}: {path.suffix} stores at most {limit} pixels on a side, this picture is "
                         f"{width}x{height}; write it as .png or .tif")


def read_note(path: str | Path) -> dict | None:
    """What made a picture, as :func:`save_image` noted it; None for a picture without a note (not ours, or saved
    again by a program that drops PNG text)."""
    with _opened(Path(path)) as im:
        text = getattr(im, "text", {}).get(NOTE_KEY) if im.format == "PNG" else None
    try:
        note = json.loads(text) if text else None
    except ValueError:
        return None
    return note if isinstance(note, dict) else None


def partial_file(dst: Path, keep_suffix: bool = True) -> Path:
    """A new hidden file next to ``dst`` to write into, renamed over ``dst`` at the end: a failure never leaves a
    half ``dst``, and a file that already has the temporary name (the user's, or another run's) is never taken.
    ``keep_suffix``: end in ``dst``'s suffix (writers that pick the format by it); else the name ends in
    ``.partialN``, so that a folder listing of ``dst``'s kind does not show it while it is written (images, which
    keep theirs, are left out of folder inputs by :func:`is_unfinished_file`)."""
    stem = dst.name
    if len(f".{stem}.partial999{dst.suffix}".encode()) > NAME_MAX:  # a long name, legal itself, but not 13 bytes more
        stem = hashlib.sha1(dst.name.encode()).hexdigest()[:16]
    for n in range(1000):
        tmp = dst.with_name(f".{stem}.partial{n or ''}{dst.suffix if keep_suffix else ''}")
        try:
            tmp.touch(exist_ok=False)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{dst.parent} is full of unfinished .{dst.name}.partial* files; delete them and try again")


def write_text_whole(path: str | Path, text: str) -> Path:
    """``path.write_text(text)`` that never leaves half a file: a report rewritten during a long run (bench after
    each measure, check --json) was truncated by a full disk or a kill in mid-write, losing the previous one too."""
    return write_whole(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_whole(path: str | Path, write: Callable[[Path], object], keep_suffix: bool = False) -> Path:
    """Call ``write(temporary path)``, then put that file in ``path``'s place durably (:func:`replace_durably`):
    the one way this package writes a file, so that neither a failure nor a power cut leaves half of one. The file
    gets the mode the user's umask gives new files, whatever mode the writer chose."""
    path = Path(path)
    tmp = partial_file(path, keep_suffix=keep_suffix)
    try:
        write(tmp)
        _give_new_file_mode(tmp)
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _give_new_file_mode(path: Path) -> None:
    """Give ``path`` the mode a new file gets (0666 less the umask): safetensors writes 0600, unreadable to a ComfyUI
    run as another user. A filesystem that refuses chmod (FAT, some network and FUSE mounts: EPERM) keeps the mode it
    gives; the file is written all the same."""
    try:
        os.chmod(path, 0o666 & ~_umask())
    except OSError:
        pass


def _umask() -> int:
    """The process's umask, from /proc where Linux shows it: setting it to read it (os.umask) would, for that moment,
    give the files and folders that other threads create (a ComfyUI server's) mode 0666 / 0777."""
    try:
        with open("/proc/self/status", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o077)  # the safe value for the moment it is set
    os.umask(umask)
    return umask


def replace_durably(src: Path, dst: Path) -> None:
    """``os.replace(src, dst)`` that a power cut cannot undo by halves: ``src``'s bytes (a file's, or each file's
    of a folder) reach the disk before the rename, the rename itself before we return. Without it a filesystem
    may store the rename first, and a crash leaves an empty or truncated file under the final name."""
    src, dst = Path(src), Path(dst)
    for f in ([p for p in src.iterdir() if p.is_file()] if src.is_dir() else [src]):
        sync_file(f)
    if src.is_dir():
        sync_folder(src)
    os.replace(src, dst)
    sync_folder(dst.parent)


def sync_file(path: Path) -> None:
    """Flush a written file's bytes to the disk (os.fsync). Windows flushes only handles opened for writing. A
    filesystem that cannot flush (EINVAL, ENOTSUP: some network and FUSE mounts) saves as it did before; a flush
    that fails (EIO, a full disk) is an error: the bytes did not reach the disk."""
    fd = os.open(path, (os.O_RDWR if os.name == "nt" else os.O_RDONLY) | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _CANNOT_FLUSH:
            raise
    finally:
        os.close(fd)


_CANNOT_FLUSH = {errno.EINVAL, getattr(errno, "ENOTSUP", -1), getattr(errno, "EOPNOTSUPP", -1)}


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename, a new file) to the disk. POSIX only: Windows cannot open a folder
    as a file, and NTFS journals its renames; some filesystems (network, FUSE) refuse it, which is no error."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_readable(files: list[Path], min_side: int = 8, targets: list[Path] | None = None) -> None:
    """Open every file's header (fast: no pixels are decoded), so that a bad file in a folder, or an image too small
    to use (under ``min_side`` pixels on a side), is named before any work starts rather than when its turn came,
    after the models loaded and half the results were written (a size error then named no file). ``targets``: where
    each result goes, refused when its format cannot hold a picture that size (:func:`refuse_too_big_for`)."""
    bad, small = [], []
    for i, f in enumerate(files):
        try:
            with _opened(f) as im:
                w, h = im.size
        except ValueError as exc:  # Pillow's own words, without the file name and fix said once below
            bad.append(f"{f.name} ({' '.join(str(exc.__cause__ or exc).split())[:120]})")
            continue
        if min(w, h) < min_side:
            small.append(f"{f.name} ({w}x{h})")
        if targets is not None:
            refuse_too_big_for(targets[i], w, h)
    if bad:
        raise ValueError(f"{len(bad)} of the {len(files)} input file(s) are not readable images: "
                         f"{'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; fix or move them out, then retry")
    if small:
        raise ValueError(f"{len(small)} of the {len(files)} input image(s) are smaller than {min_side} pixels on a "
                         f"side: {'; '.join(small[:5])}{' ...' if len(small) > 5 else ''} (width x height); enlarge "
                         "them or move them out, then retry")


def is_unfinished_file(path: Path) -> bool:
    """A file :func:`partial_file` named (``.a_styled.png.partial.png``), left by a run killed while writing."""
    return bool(_PARTIAL_NAME.match(path.name))


def list_images(source: str | Path) -> list[Path]:
    """A file, or every image in a folder (sorted)."""
    source = Path(source)
    if source.is_dir():  # not sub-folders named like images, nor the ._x.png copies macOS leaves on shared disks
        files = sorted(p for p in source.iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith("._"))
        unfinished = [p for p in files if is_unfinished_file(p)]
        if unfinished:  # not photos: stylised, they became results of results, or stopped the run when truncated
            files = [p for p in files if p not in unfinished]
            log.info("leaving out %d unfinished file(s) of a run that was killed while writing (e.g. %s): delete "
                     "them", len(unfinished), unfinished[0].name)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {source}")
        return files
    if not source.exists():
        raise FileNotFoundError(f"input not found: {source}")
    return [source]
