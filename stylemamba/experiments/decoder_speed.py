"""Where the trained decoder's eager time goes, and which implementation choices change it:
``python -m stylemamba.experiments.decoder_speed --json out.json`` (GPU; ``--tiny`` is a CPU check).

The decoder's forward + backward is most of an eager training step (68 of 109 ms on an H200,
docs/BENCHMARK.md). Each variant is a copy of the full-size SD decoder (random weights) trained as the
step trains it (fp32 weights, autocast) with one change; the same input and the
same upstream gradient go through every variant, so the outputs and gradients are compared with the
first variant as well as timed. Variants:

* ``fp32_groupnorm_channels_last``: what training ran before (autocast's fp32 GroupNorm, channels_last).
* ``fp32_groupnorm_nchw``: the same in NCHW.
* ``native_gn``: GroupNorm in the autocast dtype (:class:`stylemamba.precision.AutocastGroupNorm`) with
  PyTorch's kernel, NCHW, attention by ``scaled_dot_product_attention``: the default of 2026-12-03.
* ``sdpa_attention``: ``native_gn`` with the large norms' statistics over the whole GPU
  (:mod:`stylemamba.group_norm`).
* ``nchw``: ``sdpa_attention`` with the attention as matrix products (:mod:`stylemamba.decoder_attention`):
  the training default.
* ``channels_last``: the default in channels_last.
* ``swish_mul``: the default with ``x * sigmoid(x)`` instead of the fused SiLU (older LDM decoders).
* ``silu_inplace``: the default with an in-place SiLU (ComfyUI's current decoder).

The first variant is the reference of the error columns. Also printed: the GPU kernels of the
default and of its channels_last form grouped by name (profiler), to show what is left.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys

import torch
import torch.nn as nn


class SwishMul(nn.Module):
    """``x * sigmoid(x)``: the unfused swish of older LDM decoders."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def silu_variant_(module: nn.Module, kind: str) -> int:
    """Swap every SiLU for ``x * sigmoid(x)`` ("swish_mul") or an in-place SiLU ("silu_inplace")."""
    from ..precision import replace_modules_

    make = (lambda m: SwishMul()) if kind == "swish_mul" else (lambda m: nn.SiLU(inplace=True))
    return replace_modules_(module, lambda m: isinstance(m, nn.SiLU), make)


VARIANTS = ("fp32_groupnorm_channels_last", "fp32_groupnorm_nchw", "native_gn", "sdpa_attention", "nchw",
            "channels_last", "swish_mul", "silu_inplace")


def build_variant(base: nn.Module, name: str, device: torch.device) -> tuple[nn.Module, bool]:
    """A trainable copy of ``base`` with the variant's change; returns (module, channels_last).

    "nchw" is what training runs by default (TrainConfig: channels_last False, autocast_groupnorm True,
    matmul_attention True); the others are described in the module docstring."""
    from ..decoder_attention import attention_by_matmul_
    from ..precision import AutocastGroupNorm, groupnorm_in_autocast_dtype_

    dec = copy.deepcopy(base).float().to(device).train().requires_grad_(True)
    channels_last = device.type == "cuda" and name in ("fp32_groupnorm_channels_last", "channels_last")
    older = name.startswith("fp32_groupnorm") or name in ("native_gn", "sdpa_attention")
    if not name.startswith("fp32_groupnorm"):
        groupnorm_in_autocast_dtype_(dec)
    for norm in dec.modules():
        if isinstance(norm, AutocastGroupNorm):
            norm.spread_statistics = name != "native_gn"
    if not older:
        attention_by_matmul_(dec)
    if name in ("swish_mul", "silu_inplace"):
        silu_variant_(dec, name)
    if channels_last:
        dec.to(memory_format=torch.channels_last)
    return dec, channels_last


def measure(base: nn.Module, device: torch.device, size: int, variants: list[str], warmup: int = 3,
            repeat: int = 10, profile_default: bool = True) -> dict:
    """Time fwd+bwd and fwd of each variant on the same input; compare outputs and gradients with the first."""
    from ..precision import autocast
    from .bench import kernel_groups, time_device

    torch.manual_seed(0)
    latent_ch = base.conv_in.in_channels
    z = torch.randn(1, latent_ch, size // 8, size // 8, device=device)
    gy = torch.randn(1, 3, size, size, device=device)
    out: dict = {"size": size, "device": str(device), "torch": torch.__version__, "variants": {}}
    ref_y = ref_g = None
    for name in variants:
        dec, cl = build_variant(base, name, device)
        zin = z.contiguous(memory_format=torch.channels_last) if cl else z
        params = [p for p in dec.parameters()]

        def fwd_bwd():
            for p in params:
                p.grad = None
            with autocast(device):
                y = dec(zin)
            y.float().backward(gy)

        def fwd():
            with torch.no_grad(), autocast(device):
                dec(zin)

        row = {"fwd_bwd_ms": round(statistics.median(time_device(fwd_bwd, device, warmup, repeat)), 3),
               "fwd_ms": round(statistics.median(time_device(fwd, device, warmup, repeat)), 3)}
        for p in params:
            p.grad = None
        with autocast(device):
            y = dec(zin)
        y.float().backward(gy)
        g = torch.cat([p.grad.float().flatten() for p in params])
        y = y.detach().float()
        if ref_y is None:
            ref_y, ref_g = y, g
        row["out_rel_err"] = float((y - ref_y).norm() / ref_y.norm().clamp_min(1e-12))
        row["grad_rel_err"] = float((g - ref_g).norm() / ref_g.norm().clamp_min(1e-12))
        if profile_default and name in ("nchw", "channels_last") and device.type == "cuda":
            row["kernels"] = kernel_groups(fwd_bwd, device)
        out["variants"][name] = row
        print(f"decoder {name:22s} fwd+bwd {row['fwd_bwd_ms']:8.2f} ms  fwd {row['fwd_ms']:7.2f} ms  "
              f"out err {row['out_rel_err']:.2e}  grad err {row['grad_rel_err']:.2e}", flush=True)
        dec = params = fwd_bwd = fwd = None  # this variant's decoder goes before the next is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m stylemamba.experiments.decoder_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--tiny", action="store_true", help="the tiny test VAE at 64 px (a CPU check of this command)")
    p.add_argument("--size", type=int, default=None, help="output size in pixels (default 512; tiny 64)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    from ..cli import pick_device

    device = pick_device(args.device)
    from diffusers import AutoencoderKL

    from ..testing.tiny_models import sd_vae_config, tiny_vae_config

    torch.manual_seed(0)
    vae = AutoencoderKL(**(tiny_vae_config() if args.tiny else sd_vae_config()))
    size = args.size or (64 if args.tiny else 512)
    out = measure(vae.decoder, device, size, args.variants, repeat=args.repeat,
                  warmup=1 if args.tiny else 3)
    if args.json:
        from ..image_io import write_text_whole
        write_text_whole(args.json, json.dumps(out, indent=1))
    for name in ("nchw", "channels_last"):
        for k in out["variants"].get(name, {}).get("kernels", [])[:25]:
            print(f"  {name} {k['ms']:8.3f} ms {k['calls']:4d}x  {k['kernel']}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
