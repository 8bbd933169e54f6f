"""Stylising images with trained styles: one forward pass (encoder, fusion, decoder) per image.

Any size (padded to a multiple of 8 and cropped back, never squashed to a square), RGB / RGBA /
grayscale, batches and video frames, an optional mask, a strength, several styles mixed with
weights, and tiled VAE passes for large images (the fusion still sees the whole latent, so the
style is global; tiles only bound the VAE's memory and are blended with feathered weights).
The forward pass itself is :class:`~stylemamba.style_model.StyleModel`'s; latents in and out
(:func:`encode_latents`, :func:`stylize_latents`) serve the latent nodes.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .cuda_graphs import GraphedForward, check_cuda_graph_option
from .current_device import runs_on_device_of
from .errors import OutOfMemory, is_out_of_memory, memory_kind, stylizing_out_of_memory
from .image_io import check_finite, check_pixels
from .precision import autocast
from .speed import holds_compiled
from .style_file import Style
from .style_model import StyleModel
from .vae import SDVAE

Styles = Style | Sequence[Style] | StyleModel

log = logging.getLogger("stylemamba")

MIN_TILE = 128  # the library's floor (two overlaps); the CLI and the node ask for >= 256, which real VAEs need
MIN_OVERLAP = 64  # 8 latents: less shows seams


def _as_rgb(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B,C,H,W) with C in 1/3/4 -> RGB and the alpha channel (or None)."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f"images must be (B,C,H,W); got shape {tuple(images.shape)}")
    c = images.shape[1]
    if c == 3:
        return images, None
    if c == 1:
        return images.expand(-1, 3, -1, -1), None
    if c == 4:
        return images[:, :3], images[:, 3:]
    raise ValueError(f"images have {c} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA). "
                     "If this is (B,H,W,C) (ComfyUI layout), permute it to (B,C,H,W)")


def _pad8(x: torch.Tensor, multiple: int = 8) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool, device) -> torch.Tensor:
    """1D feathering weights for one tile. In an overlap of length L the outer quarter is ignored
    (weight 0: convolutions there saw the tile's padding, not the image), the middle half cross-fades
    linearly and the inner quarter is 1, so neighbouring tiles' weights sum to a smooth curve.
    Image borders keep weight 1."""
    w = torch.ones(n, device=device)
    if overlap > 0:
        q = overlap // 4
        mid = overlap - 2 * q
        r = torch.cat([torch.zeros(q, device=device), torch.linspace(0, 1, mid + 2, device=device)[1:-1],
                       torch.ones(q, device=device)])
        if not at_start:
            w[:overlap] = r
        if not at_end:
            w[-overlap:] = torch.minimum(w[-overlap:], r.flip(0))
    return w


def _tiles(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


class _SharedGroupNorm:
    """Make every GroupNorm of ``root`` use statistics recorded on a downscaled view of the WHOLE input.

    Tiles normalised with their own statistics get different colour casts, which shows as seams;
    sharing the whole-image statistics (estimated at low resolution) removes that.
    """

    def __init__(self, root: nn.Module):
        self.norms = [m for m in root.modules() if isinstance(m, nn.GroupNorm)]
        self.stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.recording = True

    def _forward(self, m: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        xg = x.float().reshape(b, m.num_groups, -1)
        if self.recording:
            self.stats[id(m)] = (xg.mean(-1, keepdim=True), xg.var(-1, unbiased=False, keepdim=True))
        mean, var = self.stats[id(m)]
        out = ((xg - mean) * torch.rsqrt(var + m.eps)).reshape(x.shape)
        if m.affine:
            shape = (1, c) + (1,) * (x.dim() - 2)
            out = out * m.weight.float().view(shape) + m.bias.float().view(shape)
        return out.to(x.dtype)

    def __enter__(self):
        for m in self.norms:
            m.forward = (lambda mod: (lambda x: self._forward(mod, x)))(m)
        return self

    def __exit__(self, *exc):
        for m in self.norms:
            del m.forward


def _downscaled(x: torch.Tensor, limit: int, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    scale = min(1.0, limit / max(h, w))
    size = (max(multiple, int(h * scale) // multiple * multiple), max(multiple, int(w * scale) // multiple * multiple))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True) if size != (h, w) else x


def _tiled(fn, module: nn.Module, x: torch.Tensor, tile: int, overlap: int, scale: float, out_channels: int,
           multiple: int) -> torch.Tensor:
    """Apply ``fn`` (input tile -> output tile, resolution times ``scale``) over overlapping, feathered tiles,
    with GroupNorm statistics of ``module`` shared across tiles (see :class:`_SharedGroupNorm`)."""
    with _SharedGroupNorm(module) as shared:
        fn(_downscaled(x, tile, multiple))
        shared.recording = False
        return _tile_loop(fn, x, tile, overlap, scale, out_channels)


def _tile_loop(fn, x: torch.Tensor, tile: int, overlap: int, scale: float, out_channels: int) -> torch.Tensor:
    b, _, h, w = x.shape
    oh, ow = round(h * scale), round(w * scale)
    out = torch.zeros(b, out_channels, oh, ow, device=x.device)
    norm = torch.zeros(1, 1, oh, ow, device=x.device)
    ys, xs = _tiles(h, tile, overlap), _tiles(w, tile, overlap)
    for y0 in ys:
        for x0 in xs:
            th, tw = min(tile, h), min(tile, w)
            piece = fn(x[:, :, y0:y0 + th, x0:x0 + tw]).float()
            o_y, o_x, o_h, o_w = round(y0 * scale), round(x0 * scale), piece.shape[-2], piece.shape[-1]
            ov = round(overlap * scale)
            wy = _ramp(o_h, ov, y0 == 0, y0 + th >= h, x.device)
            wx = _ramp(o_w, ov, x0 == 0, x0 + tw >= w, x.device)
            weight = (wy[:, None] * wx[None, :])[None, None]
            out[:, :, o_y:o_y + o_h, o_x:o_x + o_w] += piece * weight
            norm[:, :, o_y:o_y + o_h, o_x:o_x + o_w] += weight
    return out / norm


def _prepare_mask(mask: torch.Tensor | None, b: int, h: int, w: int, device) -> torch.Tensor | None:
    if mask is None:
        return None
    m = mask.float()
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m[:, None]
    if m.dim() != 4 or m.shape[1] != 1:
        raise ValueError(f"mask must be (H,W), (B,H,W) or (B,1,H,W); got {tuple(mask.shape)}")
    if m.shape[-2:] != (h, w):
        raise ValueError(f"mask is {m.shape[-1]}x{m.shape[-2]} but the image is {w}x{h} (width x height); resize the "
                         "mask to the image size")
    if m.shape[0] not in (1, b):
        raise ValueError(f"mask batch {m.shape[0]} does not match the image batch {b}; give one mask or one per image")
    check_finite(m, "mask")  # clamp keeps NaN: the result would be NaN where the mask is
    return m.clamp(0, 1).to(device)


def as_style_model(vae: SDVAE, styles: Styles, weights: Sequence[float] | None = None,
                   strength: float | None = None, blend: str | None = None) -> StyleModel:
    """``styles`` as a :class:`StyleModel` on ``vae``: built from Style(s), or a built model as it is.

    A built model has its weights, strength and blend baked into its decoder(s), so giving them again is
    an error rather than silently ignored (applying them would mean rebuilding from the styles, the cost a
    built model exists to avoid). ``blend``: how several styles mix, "outputs" (default) or "weights"
    (see :mod:`stylemamba.style_model`).
    """
    if isinstance(styles, StyleModel):
        if weights is not None or strength is not None or blend is not None:
            raise ValueError("weights, strength and blend are built into a StyleModel (its .weights, .strength, "
                             ".blend): pass the styles instead, or build the model with StyleModel.from_styles(vae, "
                             "styles, weights, strength, blend)")
        return styles
    return StyleModel.from_styles(vae, [styles] if isinstance(styles, Style) else list(styles), weights,
                                  1.0 if strength is None else strength, blend or "outputs")


def stylize(images: torch.Tensor, vae: SDVAE, styles: Styles, *args, **kwargs) -> torch.Tensor:
    """Stylise images; see :func:`stylize_images`. Out of memory becomes an error that says what to lower."""
    try:
        return stylize_images(images, vae, styles, *args, **kwargs)
    except (RuntimeError, MemoryError) as exc:  # torch's GPU and CPU out-of-memory errors, Python's
        if not is_out_of_memory(exc) or isinstance(exc, OutOfMemory):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        count = images.shape[0] if images.dim() == 4 else 1
        raise stylizing_out_of_memory(f"{count} image(s) of {images.shape[-1]}x{images.shape[-2]}",
                                      min(kwargs.get("batch_size", 4), count),  # a lower batch size than the
                                      kwargs.get("tile_size", 1024),            # images there are changes nothing
                                      memory=memory_kind(exc), largest_side=max(images.shape[-2:])) from exc


def memory_estimate(batch_size: int, height: int, width: int, tile_size: int) -> float:
    """Rough bytes stylising allocates on the GPU besides the VAE: the style's fp32 decoder copy (about
    50 M parameters for SD VAEs) and the activations (5.7 GB peak at 1024x1024 on an H200 in bf16,
    docs/BENCHMARK.md), for a front end to make room."""
    pixels = batch_size * min(height, tile_size) * min(width, tile_size)
    return 6e9 / (1024 * 1024) * pixels + 4 * 50e6


@torch.no_grad()
@runs_on_device_of("vae")
def stylize_images(images: torch.Tensor, vae: SDVAE, styles: Styles,
                   weights: Sequence[float] | None = None, strength: float | None = None,
                   mask: torch.Tensor | None = None, tile_size: int = 1024, tile_overlap: int | None = None,
                   batch_size: int = 4, precision: str = "auto", on_batch=None, blend: str | None = None,
                   cuda_graphs: str | GraphedForward = "auto") -> torch.Tensor:
    """Stylise (B,C,H,W) images in [0,1]; returns the same layout (RGBA keeps its alpha, gray becomes RGB).

    ``styles``: a Style, several (mixed with ``weights``, default equal, by ``blend``: "outputs" averages
    the styles' pictures, "weights" is 0.1.0's blend), or a built :class:`StyleModel` (then ``weights``/
    ``strength``/``blend`` must be left out: see :func:`as_style_model`). ``strength``: 0 = the VAE's
    reconstruction, 1 (default) = the full style. ``mask`` (1 = stylise) keeps the original pixels
    outside it; a batch whose mask is empty skips the pass. Images larger than ``tile_size`` on a side
    run the VAE in overlapping tiles (feathered over ``tile_overlap`` pixels, default min(128, tile_size
    / 2); tile_size at least 128, 256 or more for real SD VAEs). ``on_batch(done, total)`` reports
    progress. ``cuda_graphs``: with at least 3 untiled batches of one size on CUDA (video frames),
    "auto" times the second batch and replays the rest as a CUDA graph if it was launch-bound, "on"
    replays from the second batch (the graph is freed at the end of the call); "off": eager; or a
    :func:`graphed_forward` of the same VAE, model and precision, kept by the caller across calls (a
    video stylised batch by batch).
    """
    model = as_style_model(vae, styles, weights, strength, blend)
    rgb, alpha = _as_rgb(images)
    b, _, h, w = rgb.shape
    _check_not_empty(b, "image")
    if h < 8 or w < 8:
        raise ValueError(f"image is {w}x{h} (width x height); it must be at least 8x8 pixels")
    device = vae.device
    m = _prepare_mask(mask, b, h, w, device)
    if m is not None and float(m.max()) == 0.0:
        log.warning("the mask is empty: nothing will be stylised (paint the area to stylise)")
    tile, batch_size = int(tile_size), int(batch_size)
    overlap = int(tile_overlap) if tile_overlap is not None else min(128, tile // 2 // 8 * 8)
    if tile < MIN_TILE or tile % 8:
        raise ValueError(f"tile_size {tile} is invalid: it must be a multiple of 8 and at least {MIN_TILE}")
    if overlap < MIN_OVERLAP or overlap % 8 or overlap > tile // 2:
        raise ValueError(f"tile_overlap {overlap} is invalid: a multiple of 8 from {MIN_OVERLAP} (less shows seams) "
                         f"to half the tile size ({tile // 2})")
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} is invalid: it must be at least 1")
    forward = functools.partial(_encode_style_decode, vae, model, precision)
    if isinstance(cuda_graphs, GraphedForward):
        forward = cuda_graphs
    elif check_cuda_graph_option(cuda_graphs) != "off" and device.type == "cuda" and b // batch_size >= 3:
        forward = GraphedForward(forward, cuda_graphs, compiled=holds_compiled(vae, model))
    outs = []
    for start in range(0, b, batch_size):
        check_pixels(rgb[start:start + batch_size], "image", first=start)
        x = rgb[start:start + batch_size].to(device).float().clamp(0, 1)
        mm = None if m is None else m if m.shape[0] == 1 else m[start:start + batch_size]
        xp, (oh, ow) = _pad8(x)
        if mm is not None and float(mm.max()) == 0.0:
            y = x  # nothing painted in these images: their pixels as they were, without the VAE's pass
        elif max(xp.shape[-2:]) > tile:
            with autocast(device, precision):
                z = _tiled(vae.encode, vae.encoder, xp, tile, overlap, 1 / 8, vae.latent_channels, 8)
                y = _tiled(model.decoder, model.decoder, model.fuse(z), tile // 8, overlap // 8, 8, 3, 1)
        else:
            y = forward(xp)
        y = y.float().clamp(0, 1)[:, :, :oh, :ow]
        if mm is not None:
            y = mm * y + (1 - mm) * x
        outs.append(y.cpu())
        if on_batch is not None:
            on_batch(min(start + batch_size, b), b)
    out = torch.cat(outs)
    if alpha is not None:
        out = torch.cat([out, alpha.float().cpu()], dim=1)
    return out.to(images.dtype)  # floats only (check_pixels)


def graphed_forward(vae: SDVAE, styles: Styles, precision: str = "auto", mode: str = "auto") -> GraphedForward:
    """The untiled forward pass as a CUDA graph to reuse across :func:`stylize_images` calls (``cuda_graphs=``):
    the batches of a video stylised one call at a time. Its memory is freed with it."""
    model = as_style_model(vae, styles)
    return GraphedForward(functools.partial(_encode_style_decode, vae, model, precision), mode,
                          compiled=holds_compiled(vae, model))


def _encode_style_decode(vae: SDVAE, model: StyleModel, precision: str, x: torch.Tensor) -> torch.Tensor:
    """One untiled batch: VAE encoder, the style's fusion and decoder (under autocast)."""
    with autocast(x.device, precision):
        return model.decoder(model.fuse(vae.encode(x)))


def _check_latents(z: torch.Tensor, vae: SDVAE) -> None:
    if z.dim() != 4 or z.shape[1] != vae.latent_channels:
        raise ValueError(f"latent of shape {tuple(z.shape)} does not fit this VAE ({vae.latent_channels} "
                         "channels, 2D): use latents made with the same VAE / model family")
    _check_not_empty(z.shape[0], "latent")
    check_finite(z, "latent", unit="value", cause="the sampler or VAE that made it failed (e.g. overflowed in fp16); "
                                                   "fix that step, or try it in fp32 / bf16")


def _check_not_empty(count: int, what: str) -> None:
    if count == 0:
        raise ValueError(f"the {what} batch is empty (0 {what}s): the node or step before gave nothing, e.g. a video "
                         "loader with no frames left; check its settings")


@torch.no_grad()
@runs_on_device_of("vae")
def encode_latents(images: torch.Tensor, vae: SDVAE, batch_size: int = 4) -> torch.Tensor:
    """(B,3,H,W) images in [0,1] -> latents in the VAE's own (unscaled) space, as samplers pass them.

    Sides are centre-cropped to a multiple of 8 (as ComfyUI's VAE Encode does); the posterior mean.
    """
    rgb, _ = _as_rgb(images)  # gray as gray RGB, alpha dropped, as stylising takes them (a (B,H,W,C) tensor named)
    _check_not_empty(rgb.shape[0], "image")
    h, w = (rgb.shape[-2] // 8) * 8, (rgb.shape[-1] // 8) * 8
    if h < 8 or w < 8:
        raise ValueError(f"images of {rgb.shape[-1]}x{rgb.shape[-2]} are too small: at least 8x8 pixels")
    top, left = (rgb.shape[-2] - h) // 2, (rgb.shape[-1] - w) // 2
    x = rgb[:, :, top:top + h, left:left + w]
    step, z = max(1, batch_size), []
    for start in range(0, x.shape[0], step):  # 0-255 or uint8 pixels, NaN: named, as stylize does, not encoded
        check_pixels(x[start:start + step], "image", first=start)
        z.append(vae.encode(x[start:start + step].to(vae.device)).cpu())
    return torch.cat(z) / vae.scaling_factor


@torch.no_grad()
@runs_on_device_of("vae")
def stylize_latents(latents: torch.Tensor, vae: SDVAE, styles: Styles, weights: Sequence[float] | None = None,
                    strength: float | None = None, batch_size: int = 4, precision: str = "auto",
                    on_batch: Callable[[int, int], None] | None = None, blend: str | None = None) -> torch.Tensor:
    """Decode latents (the VAE's unscaled space, e.g. a sampler's output) in a style -> (B,3,8h,8w) in [0,1].

    The same forward pass as :func:`stylize_images` after its encoder (no tiling). ``styles``,
    ``weights``, ``strength``, ``blend`` as there.
    """
    _check_latents(latents, vae)
    model = as_style_model(vae, styles, weights, strength, blend)
    outs, done = [], 0
    for chunk in latents.split(max(1, batch_size)):
        with autocast(vae.device, precision):
            outs.append(model.output(chunk.to(vae.device).float() * vae.scaling_factor).cpu())
        done += chunk.shape[0]
        if on_batch is not None:
            on_batch(done, latents.shape[0])
    return torch.cat(outs)
