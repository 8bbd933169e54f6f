"""GroupNorm as five Triton kernels (two forward, three backward) for NCHW-contiguous CUDA tensors.

Why kernels rather than the PyTorch-operator form in :mod:`stylemamba.group_norm`: that form needs ~50
small operators per norm (forward and backward), and with 19 large norms per decoder pass the host spent
longer launching an H200 training step than the GPU took to run it (104 vs 72 ms, bench/results/tower_h200/
callE). Here each norm is 2 launches forward and 3 backward, and the elementwise passes read bf16 and write
bf16 (the operator form wrote fp32 intermediates).

In NCHW each (image, group) is one contiguous run of ``M = C/G * H * W`` elements. Forward: programs of
``CHUNK`` elements sum ``x - shift`` and its square in fp32 (``shift`` = the group's first element, so the
variance does not cancel when the mean is large), then one program per (image, channel, tile) combines its
group's partial sums and writes ``(x - mean) * rstd * w + b``. Backward: per (image, channel, chunk) the sums
of ``dy`` and ``dy * (x - mean)``; then ``dx = rstd * (w dy - sum_g(w dy) / M) - (x - mean) rstd^3 / M *
sum_g(w dy (x - mean))`` per element, and ``dw, db`` per channel. Everything is deterministic (no atomics).

Importing this module imports triton; :mod:`stylemamba.group_norm` does that lazily, in a try/except.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

STATS_CHUNK = 16384  # elements one forward-statistics program sums
GRAD_CHUNK = 8192  # elements of one channel one backward-sums program sums
BLOCK = 1024  # elements per step inside a program / per elementwise program


@triton.jit
def _stats_kernel(x_ptr, part_ptr, M, S, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    s = tl.program_id(1)
    base = row.to(tl.int64) * M
    shift = tl.load(x_ptr + base).to(tl.float32)
    acc = tl.zeros([BLOCK], tl.float32)
    acc2 = tl.zeros([BLOCK], tl.float32)
    for i in range(0, CHUNK, BLOCK):
        offs = s * CHUNK + i + tl.arange(0, BLOCK)
        mask = offs < M
        v = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        v = tl.where(mask, v - shift, 0.0)
        acc += v
        acc2 += v * v
    out = (row * S + s) * 2
    tl.store(part_ptr + out, tl.sum(acc, 0))
    tl.store(part_ptr + out + 1, tl.sum(acc2, 0))


@triton.jit
def _channel_tile(C, G, CG):
    """A program over (image x channel, tile): its ids, image, channel, group and (image, group) row."""
    nc = tl.program_id(0)
    n = nc // C
    c = nc % C
    return nc, tl.program_id(1), n, c, c // CG, n * G + c // CG


@triton.jit
def _apply_kernel(x_ptr, y_ptr, w_ptr, b_ptr, part_ptr, mean_ptr, rstd_ptr, C, HW, G, CG, S, M, eps,
                  HAS_W: tl.constexpr, HAS_B: tl.constexpr, S_POW: tl.constexpr, BLOCK: tl.constexpr):
    nc, t, n, c, g, row = _channel_tile(C, G, CG)
    si = tl.arange(0, S_POW)
    sm = si < S
    p1 = tl.sum(tl.load(part_ptr + (row * S + si) * 2, mask=sm, other=0.0), 0)
    p2 = tl.sum(tl.load(part_ptr + (row * S + si) * 2 + 1, mask=sm, other=0.0), 0)
    shift = tl.load(x_ptr + row.to(tl.int64) * M).to(tl.float32)
    m1 = p1 / M
    var = tl.maximum(p2 / M - m1 * m1, 0.0)
    mean = shift + m1
    rstd = 1.0 / tl.sqrt(var + eps)
    scale = rstd
    if HAS_W:
        scale = scale * tl.load(w_ptr + c).to(tl.float32)
    bias = 0.0
    if HAS_B:
        bias = tl.load(b_ptr + c).to(tl.float32)
    offs = t * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    base = nc.to(tl.int64) * HW
    v = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    y = (v - mean) * scale + bias
    tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    first = (c % CG == 0) & (t == 0)
    tl.store(mean_ptr + row, mean, mask=first)
    tl.store(rstd_ptr + row, rstd, mask=first)


@triton.jit
def _grad_sums_kernel(x_ptr, dy_ptr, mean_ptr, part_ptr, C, HW, G, CG, S2, CHUNK: tl.constexpr,
                      BLOCK: tl.constexpr):
    nc = tl.program_id(0)
    s = tl.program_id(1)
    row = (nc // C) * G + (nc % C) // CG
    mean = tl.load(mean_ptr + row)
    base = nc.to(tl.int64) * HW
    acc = tl.zeros([BLOCK], tl.float32)
    acc_x = tl.zeros([BLOCK], tl.float32)
    for i in range(0, CHUNK, BLOCK):
        offs = s * CHUNK + i + tl.arange(0, BLOCK)
        mask = offs < HW
        dy = tl.load(dy_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        acc += dy
        acc_x += tl.where(mask, dy * (v - mean), 0.0)
    out = (nc * S2 + s) * 2
    tl.store(part_ptr + out, tl.sum(acc, 0))
    tl.store(part_ptr + out + 1, tl.sum(acc_x, 0))


@triton.jit
def _grad_x_kernel(x_ptr, dy_ptr, dx_ptr, w_ptr, mean_ptr, rstd_ptr, part_ptr, C, HW, G, CG, S2, M,
                   HAS_W: tl.constexpr, CG_POW: tl.constexpr, S2_POW: tl.constexpr, BLOCK: tl.constexpr):
    nc, t, n, c, g, row = _channel_tile(C, G, CG)
    mean = tl.load(mean_ptr + row)
    rstd = tl.load(rstd_ptr + row)
    ci = tl.arange(0, CG_POW)
    si = tl.arange(0, S2_POW)
    cm = ci < CG
    where = ((n * C + g * CG + ci[:, None]) * S2 + si[None, :]) * 2
    pm = cm[:, None] & (si[None, :] < S2)
    dsum = tl.sum(tl.load(part_ptr + where, mask=pm, other=0.0), 1)  # per channel of the group
    xsum = tl.sum(tl.load(part_ptr + where + 1, mask=pm, other=0.0), 1)
    w = 1.0
    if HAS_W:
        wg = tl.load(w_ptr + g * CG + ci, mask=cm, other=0.0).to(tl.float32)
        dsum = dsum * wg
        xsum = xsum * wg
        w = tl.load(w_ptr + c).to(tl.float32)
    db_g = tl.sum(dsum, 0)
    q = tl.sum(xsum, 0)
    offs = t * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    base = nc.to(tl.int64) * HW
    dy = tl.load(dy_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    dx = rstd * (w * dy - db_g / M) - (v - mean) * (q * rstd * rstd * rstd / M)
    tl.store(dx_ptr + base + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_params_kernel(part_ptr, rstd_ptr, dw_ptr, db_ptr, C, G, CG, S2, N: tl.constexpr, S2_POW: tl.constexpr):
    c = tl.program_id(0)
    si = tl.arange(0, S2_POW)
    sm = si < S2
    dw = 0.0
    db = 0.0
    for n in tl.static_range(N):  # images of the batch (a compile-time count: a few)
        where = ((n * C + c) * S2 + si) * 2
        rstd = tl.load(rstd_ptr + n * G + c // CG)
        db += tl.sum(tl.load(part_ptr + where, mask=sm, other=0.0), 0)
        dw += rstd * tl.sum(tl.load(part_ptr + where + 1, mask=sm, other=0.0), 0)
    tl.store(dw_ptr + c, dw)
    tl.store(db_ptr + c, db)


def _pow2(v: int) -> int:
    return max(2, triton.next_power_of_2(int(v)))


def forward(x: torch.Tensor, weight, bias, groups: int, eps: float):
    """-> (y, mean, rstd): ``y`` like ``x``; ``mean``, ``rstd`` fp32 of shape (N, G)."""
    n, c = x.shape[:2]
    hw = x.numel() // (n * c)
    cg = c // groups
    m = cg * hw
    s = triton.cdiv(m, STATS_CHUNK)
    part = torch.empty(n * groups * s * 2, device=x.device, dtype=torch.float32)
    _stats_kernel[(n * groups, s)](x, part, m, s, CHUNK=STATS_CHUNK, BLOCK=BLOCK)
    y = torch.empty_like(x)
    mean = torch.empty(n, groups, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    _apply_kernel[(n * c, triton.cdiv(hw, BLOCK))](
        x, y, weight if weight is not None else x, bias if bias is not None else x, part, mean, rstd, c, hw, groups, cg, s, m, eps,
        HAS_W=weight is not None, HAS_B=bias is not None, S_POW=_pow2(s), BLOCK=BLOCK)
    return y, mean, rstd


def backward(dy: torch.Tensor, x: torch.Tensor, weight, mean: torch.Tensor, rstd: torch.Tensor, groups: int,
             need_params: bool):
    """-> (dx, dw, db); dw, db fp32 (None unless ``need_params``)."""
    n, c = x.shape[:2]
    hw = x.numel() // (n * c)
    cg = c // groups
    s2 = triton.cdiv(hw, GRAD_CHUNK)
    dy = dy.contiguous()
    part = torch.empty(n * c * s2 * 2, device=x.device, dtype=torch.float32)
    _grad_sums_kernel[(n * c, s2)](x, dy, mean, part, c, hw, groups, cg, s2, CHUNK=GRAD_CHUNK, BLOCK=BLOCK)
    dx = torch.empty_like(x)
    _grad_x_kernel[(n * c, triton.cdiv(hw, BLOCK))](
        x, dy, dx, weight if weight is not None else x, mean, rstd, part, c, hw, groups, cg, s2, cg * hw,
        HAS_W=weight is not None, CG_POW=_pow2(cg), S2_POW=_pow2(s2), BLOCK=BLOCK)
    dw = db = None
    if need_params:
        dw = torch.empty(c, device=x.device, dtype=torch.float32)
        db = torch.empty_like(dw)
        _grad_params_kernel[(c,)](part, rstd, dw, db, c, groups, cg, s2, N=n, S2_POW=_pow2(s2))
    return dx, dw, db
