"""Stylising images with trained styles: one forward pass (encoder, fusion, decoder) per image.

Any size (padded to a multiple of 8 and cropped back, never squashed to a square), RGB / RGBA /
grayscale, batches and video frames, an optional mask, a strength, several styles mixed with
weights, and tiled VAE passes for large images (the fusion still sees the whole latent, so the
style is global; tiles only bound the VAE's memory and are blended with feathered weights).
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import OutOfMemory
from .fusion import FusionConfig, build_fusion
from .precision import autocast
from .style_file import Style, StyleFileError
from .vae import SDVAE
from .vae_layout import from_ldm

log = logging.getLogger("stylemamba")


BLENDS = ("outputs", "weights")


class MixedStyle(nn.Module):
    """Several styles blended with weights and a global strength: ``decoder(fuse(z))`` stylises a latent.

    One style (either blend): fusion ``M = z + strength * (f(z, e) - z)``, decoder ``base + strength * delta``.
    Strength 0 is exactly the VAE reconstruction; one style at strength 1 is exactly that style.

    Several styles, ``blend="outputs"`` (default, docs/METHOD_CHOICES.md): each style stylises the latent
    at ``strength`` as above with its own fusion and decoder, and the pictures are averaged with the
    weights, so a 50/50 mix lands halfway between the two styles (``fuse`` stacks the styles' latents on
    the channel axis and ``decoder`` splits them). ``blend="weights"`` (0.1.0): ONE fusion
    ``z + strength * sum_i w_i (f_i(z, e_i) - z)`` and ONE decoder ``base + strength * sum_i w_i delta_i``;
    cheaper (one decoder pass) but not an interpolation of the styles' effects (issue 9).
    """

    def __init__(self, vae: SDVAE, styles: Sequence[Style], weights: Sequence[float] | None = None,
                 strength: float = 1.0, blend: str = "outputs"):
        super().__init__()
        if not styles:
            raise ValueError("no style given: connect a trained or loaded style")
        if blend not in BLENDS:
            raise ValueError(f"blend={blend!r} is not a way to mix styles; choose one of {', '.join(BLENDS)}")
        weights = list(weights) if weights is not None else [1.0 / len(styles)] * len(styles) if len(styles) > 1 else [1.0]
        if len(weights) != len(styles) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"style weights {weights} must be {len(styles)} non-negative numbers with a positive sum")
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength {strength} is outside [0, 1]")
        total = float(sum(weights))
        self.weights = [w / total for w in weights]
        self.strength = float(strength)
        self.__dict__["vae"] = vae
        device = vae.device
        self.fusions = nn.ModuleList()
        self.ratios = []  # style's latent scaling / this VAE's (styles remember the factor they were trained with)
        for i, style in enumerate(styles):
            style.check_vae(vae)
            fusion = build_fusion(FusionConfig.from_dict(style.fusion_config))
            try:
                fusion.load_state_dict(style.fusion_state)
            except RuntimeError as exc:
                raise StyleFileError(f"style '{style.name}': fusion weights do not match its config ({exc})") from exc
            self.fusions.append(fusion.eval().requires_grad_(False))
            # one buffer per style: styles trained with SigLIP and with CLIP have different embedding sizes
            self.register_buffer(f"embedding_{i}", style.embedding.float(), persistent=False)
            trained_scale = float(style.metadata.get("scaling_factor") or vae.scaling_factor)
            self.ratios.append(trained_scale / vae.scaling_factor)
        self.blend = "weights" if len(styles) == 1 else blend
        if self.blend == "weights":
            self.decoder = self._decoder(vae, styles, self.weights)
        else:
            self.decoder = _OutputBlend([self._decoder(vae, [s], [1.0]) for s in styles], self.weights,
                                        vae.latent_channels)
        self.to(device)

    def _decoder(self, vae: SDVAE, styles: Sequence[Style], weights: Sequence[float]) -> nn.Module:
        """The base decoder plus ``strength * sum_i w_i delta_i``."""
        decoder = vae.make_decoder().eval().requires_grad_(False)
        state = decoder.state_dict()
        with torch.no_grad():
            for style, w in zip(styles, weights):
                # a style that trained part of the decoder (decoder_parts.py) stores that part only
                partial = (style.metadata.get("recipe") or {}).get("train_decoder", "all") != "all"
                try:  # deltas are stored with LDM names; this decoder may use diffusers names
                    delta = from_ldm(style.decoder_delta, state, missing_ok=partial)
                except KeyError as exc:
                    raise StyleFileError(f"style '{style.name}' does not fit this decoder ({exc}); "
                                         "it was made for a different VAE") from exc
                for k, d in delta.items():
                    state[k].add_(d.to(state[k].device, state[k].dtype), alpha=self.strength * w)
        return decoder

    def fuse(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> fused latent; each style sees the latent at the scaling it was trained with.

        ``blend="outputs"`` with several styles: each style's fused latent, stacked on the channel axis."""
        out, stacked = z, []
        for i, (fusion, w, ratio) in enumerate(zip(self.fusions, self.weights, self.ratios)):
            cond = getattr(self, f"embedding_{i}").to(z.dtype).expand(z.shape[0], -1)
            zi = z * ratio
            if self.blend == "outputs":
                stacked.append(z + (self.strength / ratio) * (fusion(zi, cond) - zi))
            else:
                out = out + (self.strength * w / ratio) * (fusion(zi, cond) - zi)
        return torch.cat(stacked, dim=1) if stacked else out


class _OutputBlend(nn.Module):
    """Decoders of several styles, each on its own fused latent (stacked on channels); pictures averaged."""

    def __init__(self, decoders: Sequence[nn.Module], weights: Sequence[float], latent_channels: int):
        super().__init__()
        self.decoders = nn.ModuleList(decoders)
        self.weights = list(weights)
        self.latent_channels = int(latent_channels)

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        parts = stacked.split(self.latent_channels, dim=1)
        # each picture clamped as it would be alone, so the mix lies between the styles' pictures
        return sum(w * d(p).clamp(0, 1) for w, d, p in zip(self.weights, self.decoders, parts))


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
        raise ValueError(f"mask is {m.shape[-2]}x{m.shape[-1]} but the image is {h}x{w}; resize the mask to the image size")
    if m.shape[0] not in (1, b):
        raise ValueError(f"mask batch {m.shape[0]} does not match the image batch {b}; give one mask or one per image")
    return m.clamp(0, 1).to(device)


def stylize(images: torch.Tensor, vae: SDVAE, styles, *args, **kwargs) -> torch.Tensor:
    """Stylise images; see :func:`stylize_images`. Out of memory becomes an error that says what to lower."""
    try:
        return stylize_images(images, vae, styles, *args, **kwargs)
    except torch.cuda.OutOfMemoryError as exc:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemory(
            f"out of GPU memory stylising {tuple(images.shape)} images: lower batch_size (now "
            f"{kwargs.get('batch_size', 4)}) or tile_size (now {kwargs.get('tile_size', 1024)}), e.g. tile_size=512"
        ) from exc


@torch.no_grad()
def stylize_images(images: torch.Tensor, vae: SDVAE, styles: Style | Sequence[Style] | MixedStyle,
            weights: Sequence[float] | None = None, strength: float = 1.0, mask: torch.Tensor | None = None,
            tile_size: int = 1024, tile_overlap: int = 128, batch_size: int = 4, amp: str = "auto",
            on_batch=None) -> torch.Tensor:
    """Stylise (B,C,H,W) images in [0,1]; returns the same layout (RGBA keeps its alpha, gray becomes RGB).

    ``mask`` (1 = stylise) keeps the original pixels outside it. Images larger than ``tile_size`` on a
    side run the VAE in overlapping tiles (feathered over ``tile_overlap`` pixels). ``on_batch(done, total)``
    reports progress.
    """
    mixer = styles if isinstance(styles, MixedStyle) else MixedStyle(
        vae, [styles] if isinstance(styles, Style) else list(styles), weights, strength)
    rgb, alpha = _as_rgb(images)
    b, _, h, w = rgb.shape
    if h < 8 or w < 8:
        raise ValueError(f"image is {h}x{w}; it must be at least 8x8 pixels")
    device = vae.device
    m = _prepare_mask(mask, b, h, w, device)
    tile = max(128, (int(tile_size) // 8) * 8)
    overlap = min(max(64, (int(tile_overlap) // 8) * 8), tile // 2)  # < 64 px (8 latents) shows seams
    outs = []
    for start in range(0, b, max(1, batch_size)):
        x = rgb[start:start + batch_size].to(device).float().clamp(0, 1)
        xp, (oh, ow) = _pad8(x)
        with autocast(device, amp):
            if max(xp.shape[-2:]) > tile:
                z = _tiled(vae.encode, vae.encoder, xp, tile, overlap, 1 / 8, vae.latent_channels, 8)
            else:
                z = vae.encode(xp)
            fused = mixer.fuse(z)
            if max(xp.shape[-2:]) > tile:
                y = _tiled(mixer.decoder, mixer.decoder, fused, tile // 8, overlap // 8, 8, 3, 1)
            else:
                y = mixer.decoder(fused)
        y = y.float().clamp(0, 1)[:, :, :oh, :ow]
        if m is not None:
            mm = m if m.shape[0] == 1 else m[start:start + batch_size]
            y = mm * y + (1 - mm) * x
        outs.append(y.cpu())
        if on_batch is not None:
            on_batch(min(start + batch_size, b), b)
    out = torch.cat(outs)
    if alpha is not None:
        out = torch.cat([out, alpha.float().cpu()], dim=1)
    return out.to(images.dtype) if images.is_floating_point() else out
