"""Which autocast precision to use where: bf16 on GPUs that run it natively, fp16 on older ones."""
from __future__ import annotations

import contextlib

import torch

AMP_MODES = ("auto", "bf16", "fp16", "off")


def bf16_native(device: torch.device) -> bool:
    """Whether this CUDA device runs bf16 natively (Ampere and newer), not through slow emulation."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no emulation flag
        return bool(torch.cuda.is_bf16_supported())


def autocast_dtype(device: torch.device | str, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``, or None for plain fp32.

    "auto": bf16 on CUDA GPUs with native bf16, fp16 on older CUDA GPUs (T4, V100, RTX 20xx),
    fp32 on the CPU. "bf16"/"fp16" force one (fp16 only on CUDA); "off" is fp32.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"precision {amp!r} is not one of {AMP_MODES}")
    device = torch.device(device)
    if amp == "off" or (amp == "fp16" and device.type != "cuda"):
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if bf16_native(device) else torch.float16


def autocast(device: torch.device | str, amp: str = "auto"):
    """A context manager: autocast at :func:`autocast_dtype`, or nothing."""
    device = torch.device(device)
    dtype = autocast_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
