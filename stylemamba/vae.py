"""The Stable-Diffusion VAE: a frozen encoder F_e and the decoder F_d that a style fine-tunes.

One class, :class:`SDVAE`, holds the four modules every SD-style autoencoder has (``encoder``,
``quant_conv``, ``decoder``, ``post_quant_conv``), whether they come from ``diffusers`` or from an
LDM-style object such as ComfyUI's ``first_stage_model``. Latent scaling lives here and only here:
the library passes *scaled* latents around (what the fusion module sees), and only
:meth:`SDVAE.encode` and :class:`TrainableDecoder` convert.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .logs import quiet_loading
from .vae_layout import to_ldm

log = logging.getLogger("stylemamba")

DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"
SD_SCALING_FACTOR = 0.18215


class ModelFileError(FileNotFoundError):
    """A model file or folder is missing or unreadable; the message says which and where to put it."""


def refuse_missing_local(src: str, what: str) -> None:
    """Refuse an 'owner/name' that is a mistyped local path, not a Hugging Face id: one that no hub id can be
    (``./vea``, ``/models/vea``, ``~/vea``, ``vea/``), or one whose first part is a folder here (``models/vea``) but
    the whole is not, and that the hub cache does not hold. Asked of the hub, it waited through the hub's retries
    offline, then told the user to download a repository that does not exist."""
    path = Path(src).expanduser()
    if path.exists():
        return
    hub_shaped = bool(re.fullmatch(r"\w[\w.-]*/[\w.-]*\w", src)) and ".." not in src
    if hub_shaped and (not path.parent.is_dir() or _in_hub_cache(src)):
        return
    where = "the current folder" if path.parent == Path(".") else f"the folder {path.parent}"
    names = (sorted(p.name + ("/" if p.is_dir() else "") for p in path.parent.iterdir() if not p.name.startswith("."))
             if path.parent.is_dir() else [])
    there = f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}" if names else "nothing"
    if not hub_shaped:
        raise ModelFileError(f"{what} not found: {path} does not exist" +
                             (f" ({where} holds {there})" if path.parent.is_dir() else "") +
                             "; give an existing file or folder")
    raise ModelFileError(f"{what} not found: {path} does not exist (a typo? {where} is here, but it holds {there}); "
                         f"give an existing file or folder. A Hugging Face id is looked up only where no folder of "
                         f"its first part ({path.parent}) is in the current folder")


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds ``repo_id`` (its config.json): a real id, loadable offline."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # no huggingface_hub, an id it refuses: not cached
        return False


def _identity_module(module: nn.Module | None) -> nn.Module:
    return nn.Identity() if module is None else module


def decoder_state(decoder: nn.Module, post_quant_conv: nn.Module) -> dict[str, torch.Tensor]:
    """The decoder's weights in TrainableDecoder's key layout (``post_quant_conv.*``, ``decoder.*``)."""
    out = {"post_quant_conv." + k: v for k, v in post_quant_conv.state_dict().items()}
    out.update({"decoder." + k: v for k, v in decoder.state_dict().items()})
    return out


def _fingerprint(decoder: nn.Module, post_quant_conv: nn.Module) -> dict[str, Any]:
    """A fingerprint of the base decoder that does not depend on dtype or key layout.

    A style stores its decoder as a *delta* on top of the base VAE's decoder, so applying it to
    another VAE silently produces garbage. The fingerprint has three parts:

    * ``arch``: the architecture (LDM names and shapes, hashed). It is the same for every SD VAE
      (sd-vae-ft-mse, ft-ema, the original kl-f8, SDXL's), so it only tells families apart;
    * ``values``: 4 weights at fixed positions in each of 16 tensors, compared with a tolerance that
      admits fp16/bf16 storage (ComfyUI may hold the VAE in half precision) but not a fine-tune,
      which moves individual weights;
    * ``stats``: mean and mean |w| of the same 16 tensors (what older style files hold).

    :func:`weights_id` turns it into a short id to show users.
    """
    named = sorted((k, v) for k, v in to_ldm(decoder_state(decoder, post_quant_conv)).items() if v.is_floating_point())
    arch = hashlib.sha256("|".join(f"{k}:{tuple(v.shape)}" for k, v in named).encode()).hexdigest()[:16]
    weights = [(k, v) for k, v in named if k.endswith("weight") and v.dim() >= 2]
    picks = weights[:: max(1, len(weights) // 16)][:16]
    stats, values = [], []
    for _, v in picks:
        v = v.detach().float().flatten()
        stats.append([round(float(v.mean()), 6), round(float(v.abs().mean()), 6)])
        # (a comprehension, not a set of range(numel): that built a set of millions of ints per tensor, ~1 s in all)
        positions = sorted({p for p in ((v.numel() * j) // 4 + (v.numel() // 7) for j in range(4)) if p < v.numel()})
        values.append([float(v[i]) for i in positions])
    return {"arch": arch, "stats": stats, "values": values, "params": int(sum(v.numel() for _, v in named))}


# bf16 keeps 8 significant bits (relative error <= 2^-9 per rounding); twice that on both sides is 2^-7
_VALUE_RTOL = 2.0 ** -7


def fingerprints_match(a: dict[str, Any], b: dict[str, Any], rtol: float = 5e-3) -> bool:
    """Whether two fingerprints describe the same base decoder (tolerant to fp16/bf16 storage)."""
    if a.get("arch") != b.get("arch") or len(a.get("stats", [])) != len(b.get("stats", [])):
        return False
    for (ma, aa), (mb, ab) in zip(a["stats"], b["stats"]):
        scale = max(aa, ab, 1e-8)
        if abs(aa - ab) > rtol * scale or abs(ma - mb) > rtol * scale:
            return False
    if "values" in a and "values" in b:  # style files written before 0.2 have only the statistics
        for (_, absmean), va, vb in zip(a["stats"], a["values"], b["values"]):
            if len(va) != len(vb):
                return False
            for x, y in zip(va, vb):
                if abs(x - y) > _VALUE_RTOL * max(abs(x), abs(y)) + 1e-3 * absmean:  # fp16 subnormals
                    return False
    return True


def weights_id(identity: dict[str, Any]) -> str:
    """A 12-hex-digit id of a VAE's decoder weights, to show users.

    Made from the sampled weights rounded to bf16 (which a copy held in fp16/bf16 shares with the fp32
    original), so the same VAE shows the same id however ComfyUI holds it, and two VAEs that
    :func:`fingerprints_match` tells apart show different ids. Older fingerprints (statistics only)
    hash the statistics.
    """
    if identity.get("values"):
        flat = torch.tensor([x for row in identity["values"] for x in row], dtype=torch.float32)
        payload = flat.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    else:
        payload = json.dumps([[float(f"{x:.4g}") for x in row] for row in identity.get("stats", [])]).encode()
    return hashlib.sha256(str(identity.get("arch", "")).encode() + payload).hexdigest()[:12]


class TrainableDecoder(nn.Module):
    """F_d: post_quant_conv + decoder, a trainable fp32 copy; maps a *scaled* latent to an image in [0,1]."""

    def __init__(self, post_quant_conv: nn.Module, decoder: nn.Module, scaling_factor: float):
        super().__init__()
        self.post_quant_conv = post_quant_conv
        self.decoder = decoder
        self.scaling_factor = float(scaling_factor)

    def forward(self, z_scaled: torch.Tensor) -> torch.Tensor:
        z = self.post_quant_conv(z_scaled / self.scaling_factor)
        return (self.decoder(z) + 1.0) * 0.5


class SDVAE(nn.Module):
    """A frozen SD-style autoencoder: encode to scaled latents, and hand out decoder copies to train."""

    def __init__(
        self,
        encoder: nn.Module,
        quant_conv: nn.Module | None,
        decoder: nn.Module,
        post_quant_conv: nn.Module | None,
        scaling_factor: float = SD_SCALING_FACTOR,
        name: str = "",
    ):
        super().__init__()
        self.encoder = encoder
        self.quant_conv = _identity_module(quant_conv)
        self.decoder = decoder
        self.post_quant_conv = _identity_module(post_quant_conv)
        self.scaling_factor = float(scaling_factor)
        self.name = name
        self.requires_grad_(False)
        self.eval()
        self._identity: dict[str, Any] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_diffusers(cls, vae: nn.Module, name: str = "") -> SDVAE:
        """Wrap a ``diffusers.AutoencoderKL`` (shares its modules; nothing is copied)."""
        sf = getattr(getattr(vae, "config", None), "scaling_factor", None) or SD_SCALING_FACTOR
        return cls(vae.encoder, getattr(vae, "quant_conv", None), vae.decoder,
                   getattr(vae, "post_quant_conv", None), sf, name)

    @classmethod
    def from_ldm(cls, autoencoder: Any, scaling_factor: float = SD_SCALING_FACTOR, name: str = "") -> SDVAE:
        """Wrap an already-built LDM-style autoencoder (e.g. ComfyUI's ``VAE.first_stage_model``).

        It must expose ``encoder`` and ``decoder`` modules; ``quant_conv`` / ``post_quant_conv`` may
        be absent (VAEs without them use the identity). The modules are shared, never modified:
        training always works on :meth:`make_decoder` copies.
        """
        missing = [a for a in ("encoder", "decoder") if not isinstance(getattr(autoencoder, a, None), nn.Module)]
        if missing:
            raise TypeError(
                f"{type(autoencoder).__name__} is not an SD-style autoencoder: it has no {', '.join(missing)} "
                "module. Connect a Stable-Diffusion VAE (e.g. sd-vae-ft-mse) or load one with load_vae()."
            )
        return cls(autoencoder.encoder, getattr(autoencoder, "quant_conv", None), autoencoder.decoder,
                   getattr(autoencoder, "post_quant_conv", None), scaling_factor, name)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @property
    def latent_channels(self) -> int:
        conv_in = getattr(self.decoder, "conv_in", None)
        if isinstance(conv_in, nn.Conv2d):
            return conv_in.in_channels
        return 4

    @property
    def identity(self) -> dict[str, Any]:
        """Fingerprint of the base decoder (see :func:`fingerprints_match`)."""
        if self._identity is None:
            self._identity = _fingerprint(self.decoder, self.post_quant_conv)
        return self._identity

    # ------------------------------------------------------------------ work
    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        """Images (B,3,H,W) in [0,1], H and W multiples of 8 -> scaled latents (posterior mode)."""
        if x01.dim() != 4 or x01.shape[1] != 3:
            raise ValueError(f"SDVAE.encode expects images of shape (B,3,H,W); got {tuple(x01.shape)}")
        if x01.shape[-1] % 8 or x01.shape[-2] % 8:
            raise ValueError(
                f"image size {x01.shape[-1]}x{x01.shape[-2]} (width x height) is not a multiple of 8; pad it first "
                "(stylemamba.stylize pads and crops back automatically)"
            )
        p = next(self.encoder.parameters())
        with torch.no_grad():
            moments = self.quant_conv(self.encoder(x01.to(p.device, p.dtype) * 2.0 - 1.0))
            mean = moments[:, : moments.shape[1] // 2]
        return mean.float() * self.scaling_factor

    def make_decoder(self, dtype: torch.dtype = torch.float32) -> TrainableDecoder:
        """A trainable copy of F_d initialised from this VAE's decoder; the shared VAE is never touched."""
        dec = TrainableDecoder(copy.deepcopy(self.post_quant_conv), copy.deepcopy(self.decoder), self.scaling_factor)
        dec.to(device=self.device, dtype=dtype)
        dec.requires_grad_(True)
        dec.train()
        return dec

    @torch.no_grad()
    def reconstruct(self, x01: torch.Tensor) -> torch.Tensor:
        """Encode then decode with the base decoder (what an untrained style reproduces)."""
        z = self.encode(x01)
        p = next(self.decoder.parameters())
        out = self.decoder(self.post_quant_conv(z.to(p.dtype) / self.scaling_factor))
        return ((out.float() + 1.0) * 0.5).clamp(0, 1)


# ---------------------------------------------------------------------- loading
def _ldm_config_from_state_dict(sd: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[str, Any]:
    """Infer a diffusers AutoencoderKL config from an LDM-layout state dict (SD / SDXL VAEs).

    GroupNorm's group count cannot be read from weights: it is 32 in every SD VAE; a file may
    override it with the safetensors metadata key ``norm_num_groups``.
    """
    if "encoder.conv_in.weight" not in sd or "decoder.conv_in.weight" not in sd:
        raise ValueError("not an SD-VAE file: no encoder.conv_in / decoder.conv_in weights")
    levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down.")})
    channels = [int(sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in levels]
    layers = len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})
    latent = int(sd["decoder.conv_in.weight"].shape[1])
    groups = int(meta.get("norm_num_groups", 32))
    if any(c % groups for c in channels):
        raise ValueError(f"VAE channels {channels} are not divisible by {groups} GroupNorm groups; this is not an SD VAE "
                         "layout. If it is a custom VAE, store its group count as safetensors metadata 'norm_num_groups'")
    return {
        "in_channels": int(sd["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(sd["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "latent_channels": latent,
        "norm_num_groups": groups,
        "scaling_factor": float(meta.get("scaling_factor", SD_SCALING_FACTOR)),
    }


def _load_single_file(path: Path) -> nn.Module:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        sd = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFileError(f"could not read VAE file {path}: {exc}. Is it a complete .safetensors file?") from exc
    sd = {k[len("first_stage_model."):] if k.startswith("first_stage_model.") else k: v for k, v in sd.items()}
    if "encoder.conv_in.weight" not in sd and "encoder.conv_in.weight" not in {k.replace("vae.", "") for k in sd}:
        raise ValueError(f"{path} is not an SD-VAE file (no encoder.conv_in.weight); "
                         "put a VAE such as sd-vae-ft-mse.safetensors there")
    if any(k.startswith("encoder.down_blocks.") for k in sd):  # already diffusers layout
        raise ValueError(f"{path} holds diffusers-layout keys; load its folder (with config.json) instead")
    config = _ldm_config_from_state_dict(sd, meta)
    with quiet_loading():
        vae = AutoencoderKL(**config)
    converted = convert_ldm_vae_checkpoint(sd, vae.config)
    missing, unexpected = vae.load_state_dict(converted, strict=False)
    if missing:
        raise ValueError(f"{path}: VAE weights missing after conversion: {missing[:5]}...")
    return vae


def _checked(loaded, src: str) -> nn.Module:
    """(model, loading info) -> model; weights missing from the files are an error (they would be random)."""
    model, info = loaded
    missing, mismatched = list(info.get("missing_keys") or []), list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        raise ModelFileError(f"VAE {src}: the weights do not fit its config.json (missing {missing[:3]}, mismatched "
                             f"{mismatched[:3]}); download the VAE again")
    return model


def load_vae(source: str | Path = DEFAULT_VAE, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None, scaling_factor: float | None = None) -> SDVAE:
    """Load an SD-VAE from a Hugging Face id, a local diffusers folder or a single ``.safetensors`` file.

    Only safetensors weights are read (``use_safetensors=True``): pickled files are never loaded.
    """
    from diffusers import AutoencoderKL

    src = str(source)
    path = Path(src).expanduser()
    if path.suffix in (".safetensors", ".sft"):
        if not path.is_file():
            raise ModelFileError(f"VAE file not found: {path}. Put an SD VAE .safetensors "
                                 f"(e.g. sd-vae-ft-mse) at that path, or pass a folder / HF id.")
        vae = _load_single_file(path)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelFileError(f"VAE folder {path} has no config.json: expected a diffusers AutoencoderKL folder "
                                 "(config.json + diffusion_pytorch_model.safetensors)")
        with quiet_loading():
            vae = _checked(AutoencoderKL.from_pretrained(str(path), use_safetensors=True, output_loading_info=True), src)
    elif path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        raise ValueError(f"{path}: pickled checkpoints are not loaded (unsafe); convert it to .safetensors")
    elif src.count("/") == 1 and not path.exists():
        refuse_missing_local(src, "VAE")
        try:
            with quiet_loading():
                vae = _checked(AutoencoderKL.from_pretrained(src, use_safetensors=True, output_loading_info=True), src)
        except OSError as exc:
            raise ModelFileError(
                f"could not load VAE '{src}' from the Hugging Face hub ({exc.__class__.__name__}). Offline? Download "
                f"https://huggingface.co/{src} into a folder and pass that folder, or pass a .safetensors VAE file."
            ) from exc
    else:
        raise ModelFileError(f"VAE not found: '{src}' is neither a .safetensors file, a diffusers folder nor a hub id")
    wrapped = SDVAE.from_diffusers(vae, name=path.name if path.exists() else src)
    if scaling_factor is not None:
        wrapped.scaling_factor = float(scaling_factor)
    return wrapped.to(device=device or "cpu", dtype=dtype or torch.float32)
