"""Which arithmetic precision to use where: one vocabulary (auto, bf16, fp16, fp32) for every layer.

The library option is ``precision`` (``TrainConfig.precision``, ``stylize(precision=)``,
``ClipStylerConfig.precision``), the Train node's input is ``precision`` and the CLI flag
``--precision`` (``--dtype`` in 0.1.0, still accepted). Version 0.1.0 wrote "off" for fp32 in
recipes (``TrainConfig.amp``); it is read as "fp32".
"""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_OLD_SPELLINGS = {"off": "fp32"}


def check_precision(precision: str) -> str:
    """``precision`` in the current vocabulary ("off" becomes "fp32"); anything else is an error."""
    precision = _OLD_SPELLINGS.get(precision, precision)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
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
    if precision == "fp32" or (precision == "fp16" and device.type != "cuda"):
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
