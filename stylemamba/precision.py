"""Which arithmetic precision to use where: one vocabulary (auto, bf16, fp16, fp32) for every layer.

The library option is ``precision`` (``TrainConfig.precision``, ``stylize(precision=)``,
``ClipStylerConfig.precision``), the Train node's input is ``precision`` and the CLI flag
``--precision`` (``--dtype`` in 0.1.0, still accepted). Version 0.1.0 wrote "off" for fp32 in
recipes (``TrainConfig.amp``); it is read as "fp32".
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .group_norm import group_norm, pays_here

log = logging.getLogger("stylemamba")

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_OLD_SPELLINGS = {"off": "fp32"}
_TOLD_NO_FP16: set[str] = set()  # device types already told that fp16 runs there in fp32 (asked at every step)


def check_precision(precision: str, what: str = "precision") -> str:
    """``precision`` in the current vocabulary, in any case ("BF16" is bf16; "off" becomes "fp32"); anything else is
    an error naming ``what`` (a recipe's field, a flag)."""
    if isinstance(precision, str):
        precision = precision.strip().lower()
    precision = _OLD_SPELLINGS.get(precision, precision)
    if precision not in PRECISIONS:
        raise ValueError(f"{what} {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def bf16_native(device: torch.device) -> bool:
    """Whether this CUDA device runs bf16 natively (Ampere and newer), not through slow emulation."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no emulation flag
        return bool(torch.cuda.is_bf16_supported())


def autocast_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or None for plain fp32.

    "auto": bf16 on CUDA GPUs with native bf16, fp16 on older CUDA GPUs (T4, V100, RTX 20xx),
    fp32 on the CPU. "bf16"/"fp16" force one (fp16 only on CUDA); "fp32" is plain fp32.
    """
    precision = check_precision(precision)
    device = torch.device(device)
    if precision == "fp16" and device.type != "cuda":
        if device.type not in _TOLD_NO_FP16:  # said once: the flag was followed without a word
            _TOLD_NO_FP16.add(device.type)
            log.warning("precision fp16 needs a CUDA GPU: on %s the computation runs in fp32 (bf16 is the reduced "
                        "precision the CPU has)", device.type)
        return None
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if bf16_native(device) else torch.float16


def autocast(device: torch.device | str, precision: str = "auto"):
    """A context manager: autocast at :func:`autocast_dtype`, or nothing."""
    device = torch.device(device)
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device | str, precision: str = "auto"):
    """A gradient scaler that is on only under fp16 autocast (fp16 gradients underflow; bf16/fp32 need none)."""
    scaler_cls = getattr(getattr(torch, "amp", None), "GradScaler", None) or torch.cuda.amp.GradScaler
    return scaler_cls(enabled=autocast_dtype(device, precision) == torch.float16)


def _active_autocast_dtype(kind: str) -> torch.dtype | None:
    """The dtype autocast is running in on this device type, or None when it is off (torch >= 2.1)."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4: one function for every device type
        return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
    # older torch: per-device functions (decided by a feature test, not by catching the TypeError, which
    # torch.compile turns into an internal error while tracing)
    if kind == "cuda":
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
    if kind == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return None


class AutocastGroupNorm(nn.GroupNorm):
    """A GroupNorm that, under autocast, runs in the autocast dtype instead of fp32.

    Why: autocast runs ``group_norm`` in fp32, so every norm of the trained SD decoder reads and writes fp32
    copies of 512x512x128 activations, and in channels_last the kernel first makes an NCHW copy. In the
    autocast dtype (the kernel still accumulates its statistics in fp32) the decoder's forward + backward
    took 51 instead of 72 ms on an H200 (``python -m stylemamba.experiments.decoder_speed``,
    docs/BENCHMARK.md). Large groups on CUDA go through :func:`stylemamba.group_norm.group_norm`, whose
    statistics are not limited to one thread block per group. Same parameters and state-dict keys as the
    GroupNorm it replaces.
    """

    spread_statistics = True  # large groups on CUDA: stylemamba.group_norm (statistics over the whole GPU)
    # under torch.compile: stylemamba.group_norm's Triton kernels run inside the compiled graph (True) or Inductor
    # makes its own GroupNorm kernels (False). The compiled step (H200, replayed as a graph) took 54.9 ms with ours
    # against 56.2 with Inductor's in NCHW, 51.9 / 51.6 against 59.8 in channels_last (bench/results/steady_h200/
    # callAA, callZ)
    kernels_when_compiled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = x.device.type
        dtype = _active_autocast_dtype(kind)
        if dtype is None:
            return super().forward(x)
        with torch.autocast(kind, enabled=False):
            x = x.to(dtype)
            if (self.spread_statistics and pays_here(x, self.num_groups)  # fp32 weight and bias: fine there
                    and (self.kernels_when_compiled or not torch.compiler.is_compiling())):
                return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
            w = self.weight.to(dtype) if self.weight is not None else None
            b = self.bias.to(dtype) if self.bias is not None else None
            return F.group_norm(x, self.num_groups, w, b, self.eps)


def replace_modules_(module: nn.Module, match: Callable[[nn.Module], bool],
                     make: Callable[[nn.Module], nn.Module]) -> int:
    """Replace, in place, every submodule of ``module`` that ``match`` accepts by ``make(it)`` (the replacements
    are not searched further); returns how many were replaced."""
    count = 0
    for name, child in list(module.named_children()):
        if match(child):
            setattr(module, name, make(child))
            count += 1
        else:
            count += replace_modules_(child, match, make)
    return count


def groupnorm_in_autocast_dtype_(module: nn.Module) -> int:
    """Replace, in place, every GroupNorm under ``module`` (ComfyUI's GroupNorm subclasses included) by an
    :class:`AutocastGroupNorm` holding the same parameters; returns how many were replaced."""

    def make(norm: nn.GroupNorm) -> AutocastGroupNorm:
        new = AutocastGroupNorm(norm.num_groups, norm.num_channels, norm.eps, norm.affine)
        if norm.affine:  # share the Parameters: an optimizer built before still updates them
            new.weight, new.bias = norm.weight, norm.bias
        return new.train(norm.training)

    return replace_modules_(module, lambda m: isinstance(m, nn.GroupNorm) and not isinstance(m, AutocastGroupNorm),
                            make)
