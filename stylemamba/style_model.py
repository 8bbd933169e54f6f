"""StyleModel: the forward pass of a style, the ONE used by training, Stylize and Stylize Latent.

A style is a Style Fusion Module (paper Eq. 1) conditioned on its embedding ``e_t`` and a decoder
``F_d`` (the VAE's decoder plus a trained delta). Several styles mix with weights and a global
strength (the paper's multiple-style transfer), in one of two ways (``blend``):

* ``"outputs"`` (default for several styles): each style stylises the latent at ``strength``
  with its own fusion module and decoder, and the pictures (each clamped to [0, 1]) are averaged with
  the weights, so a 50/50 mix of red and blue lands halfway (measured 0.50 / 0.50,
  docs/METHOD_CHOICES.md); one decoder pass and one decoder copy per style.
* ``"weights"`` (0.1.0's mix): ONE fused latent and ONE decoder::

    M = z + strength * sum_i w_i (f_i(z, e_i) - z)          # fused latent   (:meth:`StyleModel.fuse`)
    F_d = base + strength * sum_i w_i delta_i                 # decoder weights (:meth:`StyleModel.from_styles`)
    Y = F_d(M)                                                # raw output, not clamped (:meth:`raw_output`)

  cheaper, but not an interpolation of the styles' effects (the same 50/50 mix lands at 0.65 / 0.53).

One style gives the same pixels either way (it always takes the second form). Strength 0 is exactly
the VAE's reconstruction; one style at strength 1 is exactly that style. The
frozen VAE encoder ``F_e`` is shared and never part of the module tree. Training builds one trainable
fusion and a trainable decoder copy (:meth:`StyleModel.for_training`) and packages them as a
:class:`~stylemamba.style_file.Style` (:meth:`StyleModel.to_style`).
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Sequence

import torch
from torch import nn

from .fusion import FusionConfig, build_fusion
from .mixing import normalise_weights
from .speed import silu_out_of_place_
from .style_file import Style, StyleFileError
from .vae import SDVAE, TrainableDecoder, decoder_state
from .vae_layout import from_ldm, to_ldm

log = logging.getLogger("stylemamba")

BLENDS = ("outputs", "weights")


class StyleModel(nn.Module):
    """Fusion module(s) + decoder + style embedding(s), with mixing weights and a strength.

    Only the fusion modules and the decoder are in the module tree (``parameters()``, ``.to()``,
    ``state_dict()``); the VAE is held aside: it is shared (ComfyUI caches it) and frozen.
    ``ratios[i]``: style i's latent scaling over this VAE's (styles remember the factor they were
    trained with, so the same VAE loaded with another convention gives the same pixels).
    ``blend``: how several styles mix (module docstring); with ``"outputs"`` ``decoder`` is an
    :class:`OutputBlend` of one decoder per style and :meth:`fuse` stacks the styles' fused latents on
    the channel axis (what that decoder reads).
    """

    def __init__(self, vae: SDVAE, fusions: Sequence[nn.Module], embeddings: Sequence[torch.Tensor],
                 decoder: nn.Module, weights: Sequence[float] | None = None, strength: float = 1.0,
                 ratios: Sequence[float] | None = None, blend: str = "weights"):
        super().__init__()
        if not fusions or len(embeddings) != len(fusions):
            raise ValueError("a StyleModel needs one embedding per fusion module, and at least one")
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength {strength} is outside [0, 1]")
        check_blend(blend)
        if blend == "outputs" and not isinstance(decoder, OutputBlend):
            raise ValueError("blend='outputs' needs an OutputBlend decoder (one decoder per style): build the model "
                             "with StyleModel.from_styles")
        self.__dict__["vae"] = vae  # not a submodule (see class docstring)
        self.blend = blend
        self.weights = normalise_weights(weights, len(fusions), "style")
        self.strength = float(strength)
        self.ratios = tuple(float(r) for r in ratios) if ratios is not None else (1.0,) * len(fusions)
        self.fusions = nn.ModuleList(fusions)
        self.decoder = decoder
        for i, e in enumerate(embeddings):  # one buffer per style: SigLIP and CLIP embeddings differ in size
            self.register_buffer(f"embedding_{i}", e.detach().float(), persistent=False)

    # ------------------------------------------------------------------ building
    @classmethod
    def for_training(cls, vae: SDVAE, fusion: FusionConfig, embedding: torch.Tensor,
                     start: Style | None = None) -> StyleModel:
        """A style to train: a fresh fusion module (the identity) and a trainable copy of the VAE's decoder.

        ``start``: begin from that style's weights instead (its fusion module, architecture included, and
        its decoder delta), e.g. a universal model's style for the prompt (fine-tuning, universal.py).
        """
        device = vae.device
        decoder = vae.make_decoder()
        silu_out_of_place_(decoder)  # ComfyUI's decoder: no autograd copy per SiLU
        if start is None:
            return cls(vae, [_fresh_fusion(vae, fusion, embedding).to(device)], [embedding.to(device)], decoder)
        start.check_vae(vae)
        if float(start.metadata.get("scaling_factor") or vae.scaling_factor) != float(vae.scaling_factor):
            raise StyleFileError(f"style '{start.name}' was trained with another latent scaling "
                                 f"({start.metadata.get('scaling_factor')}) than this VAE's ({vae.scaling_factor}); "
                                 "load the VAE as it was loaded for that style")
        first = _frozen_fusion(start)
        if first.config.text_dim != int(embedding.numel()):
            raise StyleFileError(f"style '{start.name}' was trained on {first.config.text_dim}-d embeddings, the "
                                 f"conditioning has {embedding.numel()}-d ones: use the text model it was trained with")
        first.train().requires_grad_(True)
        _add_deltas(decoder, [start], [1.0], 1.0)
        return cls(vae, [first.to(device)], [embedding.to(device)], decoder)

    @torch.no_grad()
    def restart_training_(self, fusion: FusionConfig, embedding: torch.Tensor) -> None:
        """Back to what :meth:`for_training` builds without a start (the VAE's decoder weights, a fresh fusion
        module drawn from the global random state as it draws one, this embedding), IN PLACE: every tensor keeps
        its address, so CUDA graphs captured over this model replay for the next style (train.TrainingWorkspace).
        The fusion architecture must be the one this model was built with."""
        fresh = _fresh_fusion(self.vae, fusion, embedding)
        if fresh.config.to_dict() != self.fusion.config.to_dict():
            raise ValueError("restart_training_: the fusion architecture differs from this model's; build a new one")
        self.fusion.load_state_dict(fresh.state_dict())
        base = decoder_state(self.vae.decoder, self.vae.post_quant_conv)
        for key, tensor in self.decoder.state_dict().items():
            tensor.copy_(base[key])
        self.embedding_0.copy_(embedding.reshape(self.embedding_0.shape))

    def use_vae(self, vae: SDVAE) -> None:
        """Encode with ``vae``, the same weights in another wrapper (a front end that loaded the VAE file again):
        a kept model otherwise holds the dropped one, its encoder and decoder, alive outside the front end's memory
        accounting."""
        if vae is not self.vae:
            if (vae.identity, vae.scaling_factor) != (self.vae.identity, self.vae.scaling_factor):
                raise ValueError(f"use_vae: {vae.name} is not the VAE this style model was built on ({self.vae.name})")
            self.__dict__["vae"] = vae

    @classmethod
    def from_styles(cls, vae: SDVAE, styles: Sequence[Style], weights: Sequence[float] | None = None,
                    strength: float = 1.0, blend: str = "outputs") -> StyleModel:
        """Trained styles (frozen) on ``vae``: refuses styles made for another VAE or with damaged weights.

        ``blend``: "outputs" (average the styles' pictures) or "weights" (0.1.0: blend fusion outputs and
        decoder weights); see the module docstring. One style is the same either way.
        """
        styles = list(styles)
        if not styles:
            raise ValueError("no style given: connect a trained or loaded style")
        check_blend(blend)
        weights = normalise_weights(weights, len(styles), "style")
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength {strength} is outside [0, 1]")
        fusions, embeddings, ratios = [], [], []
        for style in styles:
            style.check_vae(vae)
            fusions.append(_frozen_fusion(style))
            embeddings.append(style.embedding)
            trained_scale = float(style.metadata.get("scaling_factor") or vae.scaling_factor)
            ratios.append(trained_scale / vae.scaling_factor)
        if blend == "outputs" and len(styles) > 1:
            decoders = []
            for style in styles:
                one = vae.make_decoder().eval().requires_grad_(False)
                _add_deltas(one, [style], [1.0], strength)
                decoders.append(one)
            decoder = OutputBlend(decoders, weights, vae.latent_channels)
        else:
            blend = "weights"
            decoder = vae.make_decoder().eval().requires_grad_(False)
            _add_deltas(decoder, styles, weights, strength)
        return cls(vae, fusions, embeddings, decoder, weights, strength, ratios, blend).to(vae.device)

    # ------------------------------------------------------------------ the forward pass
    @property
    def fusion(self) -> nn.Module:
        """The fusion module of a single style (training, diagnostics); an error for a mix."""
        if len(self.fusions) != 1:
            raise ValueError(f"this StyleModel mixes {len(self.fusions)} styles; use .fusions")
        return self.fusions[0]

    def embedding(self, i: int = 0) -> torch.Tensor:
        """Style i's embedding ``e_t`` ``(D,)``."""
        return getattr(self, f"embedding_{i}")

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        """Images (B,3,H,W) in [0,1], sides multiples of 8 -> the VAE's scaled latents (the frozen F_e)."""
        return self.vae.encode(x01)

    def fuse(self, z: torch.Tensor, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled latent -> fused latent M (Eq. 1, mixed): what :attr:`decoder` reads.

        ``blend="weights"``: the weighted blend of the styles' fusion outputs. ``blend="outputs"``: each
        style's own fused latent at ``strength``, stacked on the channel axis (:class:`OutputBlend` splits
        them). ``embeddings`` (B, D): condition each row on its own e_t instead of the stored one (a single
        style; the universal model trains one fusion module over many prompts at once).
        """
        if embeddings is not None:
            if len(self.fusions) != 1:
                raise ValueError("per-row embeddings condition a single fusion module, not a mix of styles")
            zi = z * self.ratios[0]
            return z + (self.strength / self.ratios[0]) * (self.fusions[0](zi, embeddings.to(z.dtype)) - zi)
        out, stacked = z, []
        for i, (fusion, w, ratio) in enumerate(zip(self.fusions, self.weights, self.ratios)):
            cond = self.embedding(i).to(z.dtype).expand(z.shape[0], -1)
            zi = z * ratio
            if self.blend == "outputs":
                stacked.append(z + (self.strength / ratio) * (fusion(zi, cond) - zi))
            else:
                out = out + (self.strength * w / ratio) * (fusion(zi, cond) - zi)
        return torch.cat(stacked, dim=1) if stacked else out

    def raw_output(self, z: torch.Tensor, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled latent -> the stylised image, NOT clamped (what the losses and diagnostics see; a
        ``blend="outputs"`` mix averages pictures clamped one by one)."""
        return self.decoder(self.fuse(z, embeddings))

    def output(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> the stylised image in [0,1] (fp32)."""
        return self.raw_output(z).float().clamp(0, 1)

    # ------------------------------------------------------------------ packaging
    def to_style(self, metadata: dict[str, Any] | None = None) -> Style:
        """The current weights of a single style at full strength as a :class:`Style` (CPU tensors).

        The decoder is stored as a delta on the base VAE's decoder, in the LDM key layout (vae_layout),
        so the style works on the same VAE however it was loaded; the VAE's fingerprint and latent
        scaling go into the metadata (checked when the style is applied).
        """
        if len(self.fusions) != 1 or self.strength != 1.0 or self.ratios != (1.0,):
            raise ValueError("only a single style at full strength on its own VAE is one style file; "
                             "save each style before mixing")
        base = decoder_state(self.vae.decoder, self.vae.post_quant_conv)
        trained = self.decoder.state_dict()
        fusion = self.fusion
        fusion_state = fusion.state_dict()
        # copies (on the CPU .float() would be the live weights, which a restarted trainer overwrites)
        host = _copies_on_host([(trained[k], base[k]) for k in trained] + list(fusion_state.values())
                               + [self.embedding(0)])
        delta = to_ldm(dict(zip(trained, host)))
        state = dict(zip(fusion_state, host[len(trained):-1]))
        meta = {"base_vae": self.vae.identity, "base_vae_name": self.vae.name,
                "scaling_factor": self.vae.scaling_factor, **(metadata or {})}
        return Style(fusion.config.to_dict(), state, delta, host[-1], meta)


def _copies_on_host(items: Sequence[torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
                    one_buffer: bool | None = None) -> list[torch.Tensor]:
    """fp32 CPU copies of ``items`` (a tensor, or a pair ``(a, b)`` for ``a - b``), computed on the first item's
    device (the model's).

    On a GPU (``one_buffer`` None) they are written into one buffer there and brought over in ONE device-to-host
    copy: a copy per tensor waits for the GPU ~190 times per style, and each wait lets other Python threads take
    the GIL (a ComfyUI server's): 72 ms alone, 122 ms beside a busy thread, 0.15 s inside ComfyUI
    (bench/results/steady_h200/callAT). Out of GPU memory for that buffer (~200 MB for an SD decoder) it copies
    tensor by tensor.
    """
    device = _first(items[0]).device
    if one_buffer if one_buffer is not None else device.type != "cpu":
        try:
            return _one_copy(items, device)
        except torch.cuda.OutOfMemoryError:
            log.info("stylemamba: no GPU memory for one packaging buffer: copying the style tensor by tensor")
    # on the CPU nothing to wait for (one fresh 200 MB buffer page-faults: ~40 ms here)
    return [_difference(item, torch.empty(_first(item).shape, dtype=torch.float32, device=device)).cpu()
            for item in items]


def _one_copy(items: Sequence[torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
              device: torch.device) -> list[torch.Tensor]:
    """``items`` into one fp32 buffer on ``device``, copied to the host once. The differences (the decoder delta)
    are views of that host copy; the plain tensors (the fusion weights, the embedding: a few MB) are cloned from
    it, so that saving or keeping one of them does not carry the decoder's ~200 MB."""
    sizes = [_first(item).numel() for item in items]
    flat = torch.empty(sum(sizes), dtype=torch.float32, device=device)
    for item, part in zip(items, flat.split(sizes)):
        _difference(item, part.view(_first(item).shape))
    host = _to_host(flat)
    del flat
    views = [part.view(_first(item).shape) for item, part in zip(items, host.split(sizes))]
    return [view if isinstance(item, tuple) else view.clone() for item, view in zip(items, views)]


def _first(item: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return item[0] if isinstance(item, tuple) else item


def _to_host(flat: torch.Tensor) -> torch.Tensor:
    """A pageable CPU copy of a device tensor, through a pinned staging buffer on CUDA.

    Pageable memory straight from the GPU ran at about half the speed: the SD decoder's 198 MB in 200 ms one
    copy, 72-77 ms a copy per tensor, 55-61 ms staged (bench/results/steady_h200/callAU). The staging buffer
    comes from torch's pinned-memory cache and goes back to it, so the next style reuses it; torch keeps it
    pinned for the process (~256 MB for an SD decoder, rounded up).
    """
    if flat.device.type != "cuda":
        return flat.cpu()
    try:
        staging = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
    except RuntimeError:  # no pinned memory to be had (WSL and Windows limit it): the plain copy
        return flat.cpu()
    staging.copy_(flat, non_blocking=True)
    torch.cuda.current_stream(flat.device).synchronize()
    return staging.clone()


def _difference(item: torch.Tensor | tuple[torch.Tensor, torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """``item`` (or ``a - b`` for a pair) written into ``out``, on ``out``'s device."""
    if isinstance(item, tuple):
        return torch.sub(*(t.detach().to(out.device, torch.float32) for t in item), out=out)
    return out.copy_(item.detach())


def _fresh_fusion(vae: SDVAE, fusion: FusionConfig, embedding: torch.Tensor) -> nn.Module:
    """A new fusion module (the identity at start) for ``embedding``'s size and the VAE's latents, on the CPU."""
    cfg = copy.deepcopy(fusion)
    cfg.text_dim = int(embedding.numel())
    cfg.latent_channels = int(vae.latent_channels)
    return build_fusion(cfg)


def check_blend(blend: str) -> str:
    if blend not in BLENDS:
        raise ValueError(f"blend={blend!r} is not a way to mix styles; choose one of {', '.join(BLENDS)}")
    return blend


class OutputBlend(nn.Module):
    """The decoders of a ``blend="outputs"`` mix: each decodes its style's fused latent (stacked on the
    channel axis by :meth:`StyleModel.fuse`) and the pictures are averaged with the weights."""

    def __init__(self, decoders: Sequence[nn.Module], weights: Sequence[float], latent_channels: int):
        super().__init__()
        self.decoders = nn.ModuleList(decoders)
        self.weights = tuple(float(w) for w in weights)
        self.latent_channels = int(latent_channels)

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        parts = stacked.split(self.latent_channels, dim=1)
        # each picture clamped as it would be alone, so the mix lies between the styles' pictures
        return sum(w * d(p).clamp(0, 1) for w, d, p in zip(self.weights, self.decoders, parts))


def _frozen_fusion(style: Style) -> nn.Module:
    """A style's fusion module with its weights, frozen (damaged weights are refused)."""
    fusion = build_fusion(FusionConfig.from_dict(style.fusion_config))
    try:
        fusion.load_state_dict(style.fusion_state)
    except RuntimeError as exc:
        raise StyleFileError(f"style '{style.name}': fusion weights do not match its config ({exc})") from exc
    return fusion.eval().requires_grad_(False)


def _add_deltas(decoder: TrainableDecoder, styles: Sequence[Style], weights: Sequence[float], strength: float,
                one_buffer: bool | None = None) -> None:
    """Add ``strength * sum_i w_i delta_i`` to the decoder's weights in place.

    Each style's delta goes to the decoder's device in one copy (:func:`_on_device`): a copy per tensor waits
    for the GPU ~190 times, 43.5 ms against 20.3 ms for an SD decoder (bench/results/steady_h200/callAY)."""
    state = decoder.state_dict()
    with torch.no_grad():
        for style, w in zip(styles, weights):
            try:  # deltas are stored with LDM names; this decoder may use diffusers names
                delta = from_ldm(style.decoder_delta, state)
            except (KeyError, ValueError) as exc:  # ValueError: a delta of another size, named
                raise StyleFileError(f"style '{style.name}' does not fit this decoder ({exc}); "
                                     "it was made for a different VAE, or the file is damaged") from exc
            moved = _on_device([delta[k] for k in state], next(iter(state.values())).device, one_buffer)
            for v, d in zip(state.values(), moved):
                v.add_(d.to(v.dtype), alpha=float(strength) * w)


def _on_device(tensors: Sequence[torch.Tensor], device: torch.device,
               one_buffer: bool | None = None) -> list[torch.Tensor]:
    """fp32 copies of CPU ``tensors`` on ``device``. On a GPU (``one_buffer`` None) they are gathered into one
    pinned host buffer (torch's pinned-memory cache) and copied over once; out of GPU memory for that buffer, or
    on the CPU, tensor by tensor."""
    if one_buffer if one_buffer is not None else device.type != "cpu":
        sizes = [t.numel() for t in tensors]
        try:
            host = torch.empty(sum(sizes), dtype=torch.float32, pin_memory=True)
        except RuntimeError:  # no pinned memory to be had (no CUDA, or WSL / Windows limits): pageable
            host = torch.empty(sum(sizes), dtype=torch.float32)
        torch.cat([t.reshape(-1).float() for t in tensors], out=host)
        try:
            flat = host.to(device, non_blocking=host.is_pinned())
            return [part.view(t.shape) for t, part in zip(tensors, flat.split(sizes))]
        except torch.cuda.OutOfMemoryError:
            log.info("stylemamba: no GPU memory for one buffer of the style's weights: copying them tensor by tensor")
    return [t.to(device, torch.float32) for t in tensors]
