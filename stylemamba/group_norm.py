"""GroupNorm whose statistics use the whole GPU: the trained decoder's norms at 128-512 px.

Why: PyTorch's CUDA GroupNorm computes each (image, group) statistic in ONE thread block, so a batch of one
image with 32 groups runs 32 blocks on a 132-SM H200; its statistics kernel alone took 10.5 of the eager
decoder's 52 ms forward + backward at 512 px (experiments/decoder_speed.py, bench/results/). Here the same
sums are ordinary reductions (``mean`` / ``vector_norm`` with fp32 accumulation, which split one long row
over many blocks), the normalisation is one fused elementwise pass (``batch_norm`` in inference form with the
per-(image, channel) statistics: fp32 arithmetic, output in the input's dtype), and backward is the textbook
GroupNorm gradient written with the same reductions. Works in any memory format (NCHW or channels_last).
On CUDA with NCHW- or channels_last-contiguous inputs the same computation runs as Triton kernels
(:mod:`stylemamba.group_norm_triton`: 5-6 launches per norm instead of ~50 operators, which made the host the
bottleneck of a training step, and no layout copies in channels_last); the operator form is the fallback (no
triton, other strides) and the CPU path.

Numerics: statistics in fp32 as E[x^2] - E[x]^2 (what cuDNN and Apex use as well); compared with
``F.group_norm`` in tests/test_group_norm.py.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger("stylemamba")
_KERNELS: list = []  # [module or None], filled on first use
_KERNELS_WORK: dict[str, bool] = {}  # per device: whether the kernels passed their self-check

# per-group element count from which the reductions pay on a GPU (below it the native kernel is fine and
# launches fewer kernels): 16 channels x 128 x 128 [choice: the decoder's norms at 128 px and above]
MIN_GROUP_SIZE = 16 * 128 * 128
# the same for channels_last inputs: 16 channels x 64 x 64 [measured on an H200, bench/results/steady_h200: with
# every norm of the 512 px decoder on the kernels its eager forward + backward took 30.3 instead of 39.9 ms (callAA
# vs callZ); with the tiny test networks' small norms on them too, an un-replayed tiny step took 94.7 instead of
# 55.2 ms (six launches per norm; callAC vs callS)]
CHANNELS_LAST_MIN_GROUP_SIZE = 16 * 64 * 64


def _per_channel(t: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, G) -> (N, C): each group's value for each of its channels."""
    return t.repeat_interleave(channels // t.shape[1], dim=1)


def _normalise(x: torch.Tensor, mean_c: torch.Tensor, var_c: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias per (image, channel), in one fused pass per image."""
    outs = [F.batch_norm(x[n:n + 1], mean_c[n], var_c[n], weight, bias, False, 0.0, eps)
            for n in range(x.shape[0])]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _kernels():
    """:mod:`stylemamba.group_norm_triton`, or None without a working triton (logged once)."""
    if not _KERNELS:
        try:
            from . import group_norm_triton
        except Exception as exc:  # noqa: BLE001 - no triton, or one that fails to import: operators instead
            log.info("stylemamba: GroupNorm runs as PyTorch operators (Triton kernels unavailable: %s)", exc)
            group_norm_triton = None
        _KERNELS.append(group_norm_triton)
    return _KERNELS[0]


def _self_check(device: torch.device) -> str | None:
    """None when the kernels compile, run on ``device`` and match the operator form (values and gradients of a
    small problem), else the reason: a Triton that imports but cannot build its kernels (no C compiler, an
    unsupported GPU) must not stop training."""
    try:
        g = torch.Generator().manual_seed(0)
        x = (torch.randn(2, 8, 40, 40, generator=g) + 2).to(device)
        w, b, gy = torch.rand(8, generator=g).to(device), torch.randn(8, generator=g).to(device), torch.randn_like(x)
        for layout in (torch.contiguous_format, torch.channels_last):
            x, gy = x.contiguous(memory_format=layout), gy.contiguous(memory_format=layout)
            with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
                outs = []
                for kernels in (True, False):
                    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
                    y = _GroupNormFunction.apply(*leaves, 4, 1e-5, kernels)
                    outs.append([y.detach(), *torch.autograd.grad(y, leaves, gy)])
            for name, a, ref in zip(("y", "dx", "dw", "db"), *outs):
                err = float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
                if not err < 1e-4:  # also NaN
                    return f"self-check mismatch against the operator form ({layout}): {name} off by {err:.2e}"
    except Exception as exc:  # noqa: BLE001 - compilation, launch, driver: anything
        return f"{type(exc).__name__}: {exc}"
    return None


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is in channels_last only: 4-D, channels_last-contiguous and not NCHW-contiguous (a tensor that
    is both is the same memory either way, and the NCHW kernels read it)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _on_kernels(x: torch.Tensor) -> bool:
    """Whether ``x`` goes through the Triton kernels: CUDA, NCHW- or channels_last-contiguous, kernels that passed
    their self-check on this device (checked once, logged when they fail)."""
    if not (x.is_cuda and (x.is_contiguous() or is_channels_last(x))) or _kernels() is None:
        return False
    key = str(x.device)
    if key not in _KERNELS_WORK:
        why = _self_check(x.device)
        _KERNELS_WORK[key] = why is None
        if why is not None:
            log.warning("stylemamba: the Triton GroupNorm kernels do not work on %s (%s); using PyTorch operators",
                        key, why)
    return _KERNELS_WORK[key]


def _operator_forward(x, weight, bias, groups: int, eps: float):
    """The forward as PyTorch operators -> (y, mean, rstd) like the kernels'."""
    n, c = x.shape[:2]
    xg = x.unflatten(1, (groups, c // groups))
    dims = tuple(range(2, xg.dim()))
    size = x.numel() // (n * groups)  # elements per group
    acc = torch.promote_types(x.dtype, torch.float32)  # fp32 sums for bf16 / fp16 / fp32 inputs
    mean = xg.mean(dim=dims, dtype=acc)
    square = torch.linalg.vector_norm(xg, 2, dim=dims, dtype=acc).square_() / size
    var = (square - mean.square()).clamp_min_(0.0)
    rstd = (var + eps).rsqrt()
    w = weight.to(acc) if weight is not None else None
    b = bias.to(acc) if bias is not None else None
    return _normalise(x, _per_channel(mean, c), _per_channel(var, c), w, b, eps), mean, rstd


def _operator_backward(dy, x, weight, mean, rstd, groups: int, need_params: bool):
    """The backward as PyTorch operators -> (dx, dw, db) like the kernels' (dw, db in the statistics' dtype)."""
    n, c = x.shape[:2]
    g = groups
    spatial = tuple(range(2, x.dim()))
    size = x.numel() // (n * g)  # elements per group
    acc = mean.dtype
    dsum = dy.sum(dim=spatial, dtype=acc)  # (N, C)
    xdsum = (dy * x).sum(dim=spatial, dtype=acc)  # (N, C)
    w = weight.to(acc) if weight is not None else torch.ones(c, device=x.device, dtype=acc)
    mean_c, rstd_c = _per_channel(mean, c), _per_channel(rstd, c)
    dweight = ((xdsum - mean_c * dsum) * rstd_c).sum(0) if need_params else None
    dbias = dsum.sum(0) if need_params else None
    db_g = (dsum * w).unflatten(1, (g, c // g)).sum(-1)  # (N, G)
    ds_g = (xdsum * w).unflatten(1, (g, c // g)).sum(-1)
    c1 = (db_g * mean - ds_g) * rstd.pow(3) / size
    c2 = -c1 * mean - db_g * rstd / size
    shape = (n, c) + (1,) * len(spatial)
    scale = (w * rstd_c).view(shape)
    grad_x = torch.addcmul(_per_channel(c2, c).view(shape), x, _per_channel(c1, c).view(shape))
    return grad_x.addcmul_(dy, scale).to(x.dtype), dweight, dbias


class _GroupNormFunction(torch.autograd.Function):
    """One autograd node for both forms: ``kernels`` picks the Triton kernels or the PyTorch operators."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float, kernels: bool):
        ctx.groups, ctx.has_weight, ctx.has_bias, ctx.kernels = groups, weight is not None, bias is not None, kernels
        ctx.param_dtype = (weight if weight is not None else bias if bias is not None else x).dtype
        if kernels:
            forward = _kernels().forward_channels_last if is_channels_last(x) else _kernels().forward
        else:
            forward = _operator_forward
        y, mean, rstd = forward(x, weight, bias, groups, eps)
        ctx.save_for_backward(x, mean, rstd, weight)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, mean, rstd, weight = ctx.saved_tensors
        need = ctx.has_weight or ctx.has_bias
        if ctx.kernels:
            backward = _kernels().backward_channels_last if is_channels_last(x) else _kernels().backward
        else:
            backward = _operator_backward
        grad_x, dweight, dbias = backward(dy.to(x.dtype), x, weight, mean, rstd, ctx.groups, need)
        dweight = dweight.to(ctx.param_dtype) if ctx.has_weight else None
        dbias = dbias.to(ctx.param_dtype) if ctx.has_bias else None
        return grad_x, dweight, dbias, None, None, None


def group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> torch.Tensor:
    """``F.group_norm`` with statistics spread over the whole device (see the module docstring); output in
    ``x``'s dtype and memory format; weight and bias may be fp32 with a bf16/fp16 ``x``."""
    if x.dim() < 3 or x.shape[1] % groups:
        raise ValueError(f"group_norm expects (N, C, ...) with C divisible by {groups} groups; got {tuple(x.shape)}")
    return _GroupNormFunction.apply(x, weight, bias, groups, eps, _on_kernels(x))


def pays_here(x: torch.Tensor, groups: int) -> bool:
    """Whether :func:`group_norm` beats the native kernel for this input: on CUDA, large groups; in
    channels_last, where the kernels work, also medium ones, down to the SD decoder's smallest norm at 512 px (the
    native CUDA kernel copies a channels_last input to NCHW and returns NCHW, so the next convolution converts it
    back; the operator form would not pay there)."""
    if not x.is_cuda:
        return False
    size = x.numel() // (x.shape[0] * groups)  # elements per group
    return size >= MIN_GROUP_SIZE or (size >= CHANNELS_LAST_MIN_GROUP_SIZE and is_channels_last(x) and _on_kernels(x))
