"""GroupNorm as Triton kernels for CUDA tensors, NCHW-contiguous (five kernels: two forward, three backward) or
channels_last-contiguous (six: three and three).

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

In channels_last (memory ``[N, H*W, C]``) a group is ``C/G`` adjacent channels of every pixel, so the kernels
work on tiles of ``[pixels, C]``: per (image, pixel chunk) the per-channel partial sums, then one small program
per (image, group) or group that combines them (statistics; gradient sums, ``dw``, ``db``), then one
elementwise pass per tile. Why: cuDNN's convolutions run in NHWC, so an NCHW decoder pays a layout conversion
before and after every convolution (7.3 of the compiled step's 56.5 ms on an H200, bench/results/steady_h200/
callT); in channels_last the norms were the part that copied.

Importing this module imports triton; :mod:`stylemamba.group_norm` does that lazily, in a try/except.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_addresses import address_safe

STATS_CHUNK = 16384  # elements one forward-statistics program sums
GRAD_CHUNK = 8192  # elements of one channel one backward-sums program sums
BLOCK = 1024  # elements per step inside a program / per elementwise program


@address_safe
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


@address_safe
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


@address_safe
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


@address_safe
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


@address_safe
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


# ---- channels_last (NHWC) -------------------------------------------------------------------------------------
TILE = 4096  # elements of one [pixels, channels] tile
CHUNKS = 1024  # pixel chunks per image for the statistics and gradient sums (at most; ~8 programs per SM)


@triton.jit
def _cl_tile(n, p0, P, C, BLOCK_P: tl.constexpr, C_POW: tl.constexpr):
    """Offsets, mask and the channel index of the [BLOCK_P, C_POW] tile of image n that starts at pixel p0."""
    p = p0 + tl.arange(0, BLOCK_P)
    c = tl.arange(0, C_POW)
    mask = (p[:, None] < P) & (c[None, :] < C)
    offs = (n.to(tl.int64) * P + p[:, None]) * C + c[None, :]
    return offs, mask, c


@address_safe
@triton.jit
def _cl_sums_kernel(x_ptr, dy_ptr, mean_ptr, part_ptr, P, C, G, CG, S, PCHUNK: tl.constexpr, GRAD: tl.constexpr,
                    BLOCK_P: tl.constexpr, C_POW: tl.constexpr):
    """Per (image, pixel chunk), per channel: sum(x - shift), sum((x - shift)^2) (forward; shift = the group's
    first value of pixel 0) or sum(dy), sum(dy (x - mean)) (backward) -> part[n, s, c, 0:2]."""
    n = tl.program_id(0)
    s = tl.program_id(1)
    c = tl.arange(0, C_POW)
    cm = c < C
    if GRAD:
        shift = tl.load(mean_ptr + n * G + c // CG, mask=cm, other=0.0)
    else:
        shift = tl.load(x_ptr + n.to(tl.int64) * P * C + (c // CG) * CG, mask=cm, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_P, C_POW], tl.float32)
    acc2 = tl.zeros([BLOCK_P, C_POW], tl.float32)
    for i in range(0, PCHUNK, BLOCK_P):
        offs, mask, c = _cl_tile(n, s * PCHUNK + i, P, C, BLOCK_P, C_POW)
        v = tl.where(mask, tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - shift[None, :], 0.0)
        if GRAD:
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            acc += dy
            acc2 += dy * v
        else:
            acc += v
            acc2 += v * v
    out = ((n * S + s).to(tl.int64) * C + c) * 2
    tl.store(part_ptr + out, tl.sum(acc, 0), mask=cm)
    tl.store(part_ptr + out + 1, tl.sum(acc2, 0), mask=cm)


@triton.jit
def _cl_group_partials(part_ptr, n, g, C, CG, S, S_POW: tl.constexpr, CG_POW: tl.constexpr):
    """Image n's partial sums of the channels of group g over all chunks: two [CG_POW] per-channel sums."""
    si = tl.arange(0, S_POW)
    ci = tl.arange(0, CG_POW)
    where = ((n * S + si[:, None]).to(tl.int64) * C + g * CG + ci[None, :]) * 2
    m = (si[:, None] < S) & (ci[None, :] < CG)
    first = tl.load(part_ptr + where, mask=m, other=0.0)
    second = tl.load(part_ptr + where + 1, mask=m, other=0.0)
    return tl.sum(first, 0), tl.sum(second, 0)


@address_safe
@triton.jit
def _cl_stats_kernel(x_ptr, part_ptr, mean_ptr, rstd_ptr, P, C, G, CG, S, M, eps, S_POW: tl.constexpr,
                     CG_POW: tl.constexpr):
    row = tl.program_id(0)  # (image, group)
    n = row // G
    g = row % G
    p1, p2 = _cl_group_partials(part_ptr, n, g, C, CG, S, S_POW, CG_POW)
    m1 = tl.sum(p1, 0) / M
    var = tl.maximum(tl.sum(p2, 0) / M - m1 * m1, 0.0)
    shift = tl.load(x_ptr + n.to(tl.int64) * P * C + g * CG).to(tl.float32)
    tl.store(mean_ptr + row, shift + m1)
    tl.store(rstd_ptr + row, 1.0 / tl.sqrt(var + eps))


@address_safe
@triton.jit
def _cl_apply_kernel(x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, P, C, G, CG, HAS_W: tl.constexpr,
                     HAS_B: tl.constexpr, BLOCK_P: tl.constexpr, C_POW: tl.constexpr):
    n = tl.program_id(1)
    offs, mask, c = _cl_tile(n, tl.program_id(0) * BLOCK_P, P, C, BLOCK_P, C_POW)
    cm = c < C
    mean = tl.load(mean_ptr + n * G + c // CG, mask=cm, other=0.0)
    scale = tl.load(rstd_ptr + n * G + c // CG, mask=cm, other=0.0)
    if HAS_W:
        scale = scale * tl.load(w_ptr + c, mask=cm, other=0.0).to(tl.float32)
    bias = tl.zeros([C_POW], tl.float32)
    if HAS_B:
        bias = tl.load(b_ptr + c, mask=cm, other=0.0).to(tl.float32)
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = (v - mean[None, :]) * scale[None, :] + bias[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@address_safe
@triton.jit
def _cl_grad_reduce_kernel(part_ptr, w_ptr, rstd_ptr, gsum_ptr, dw_ptr, db_ptr, C, G, CG, S, N: tl.constexpr,
                           HAS_W: tl.constexpr, NEED_PARAMS: tl.constexpr, S_POW: tl.constexpr,
                           CG_POW: tl.constexpr):
    """Per group g: for each image the group's sums of w dy and w dy (x - mean) -> gsum[n, g, 0:2]; and the
    group's channels' dw = sum_n rstd sum dy (x - mean), db = sum_n sum dy."""
    g = tl.program_id(0)
    c = g * CG + tl.arange(0, CG_POW)
    cm = c < (g + 1) * CG
    w = tl.full([CG_POW], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(w_ptr + c, mask=cm, other=0.0).to(tl.float32)
    dw = tl.zeros([CG_POW], tl.float32)
    db = tl.zeros([CG_POW], tl.float32)
    for n in tl.static_range(N):  # images of the batch (a compile-time count: a few)
        dsum, xsum = _cl_group_partials(part_ptr, n, g, C, CG, S, S_POW, CG_POW)
        db += dsum
        dw += xsum * tl.load(rstd_ptr + n * G + g)
        dsum = dsum * w
        xsum = xsum * w
        tl.store(gsum_ptr + (n * G + g) * 2, tl.sum(dsum, 0))
        tl.store(gsum_ptr + (n * G + g) * 2 + 1, tl.sum(xsum, 0))
    if NEED_PARAMS:
        tl.store(dw_ptr + c, dw, mask=cm)
        tl.store(db_ptr + c, db, mask=cm)


@address_safe
@triton.jit
def _cl_grad_x_kernel(x_ptr, dy_ptr, dx_ptr, w_ptr, mean_ptr, rstd_ptr, gsum_ptr, P, C, G, CG, M,
                      HAS_W: tl.constexpr, BLOCK_P: tl.constexpr, C_POW: tl.constexpr):
    n = tl.program_id(1)
    offs, mask, c = _cl_tile(n, tl.program_id(0) * BLOCK_P, P, C, BLOCK_P, C_POW)
    cm = c < C
    row = n * G + c // CG
    mean = tl.load(mean_ptr + row, mask=cm, other=0.0)
    rstd = tl.load(rstd_ptr + row, mask=cm, other=0.0)
    db_g = tl.load(gsum_ptr + row * 2, mask=cm, other=0.0)
    q = tl.load(gsum_ptr + row * 2 + 1, mask=cm, other=0.0)
    w = tl.full([C_POW], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(w_ptr + c, mask=cm, other=0.0).to(tl.float32)
    a = rstd * w  # dx = a dy - b - (x - mean) k, per channel
    b = rstd * db_g / M
    k = q * rstd * rstd * rstd / M
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dx = a[None, :] * dy - b[None, :] - (v - mean[None, :]) * k[None, :]
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _cl_shape(x: torch.Tensor, groups: int):
    """(n, c, pixels, channels per group, C_POW, BLOCK_P, chunks, pixels per chunk) of a channels_last x."""
    n, c = x.shape[:2]
    p = x.numel() // (n * c)
    c_pow = _pow2(c)
    block_p = max(1, TILE // c_pow)
    s = min(triton.cdiv(p, block_p), CHUNKS)
    pchunk = triton.cdiv(triton.cdiv(p, s), block_p) * block_p
    return n, c, p, c // groups, c_pow, block_p, triton.cdiv(p, pchunk), pchunk


def forward_channels_last(x: torch.Tensor, weight, bias, groups: int, eps: float):
    """:func:`forward` for a channels_last-contiguous ``x`` (``y`` channels_last too)."""
    n, c, p, cg, c_pow, block_p, s, pchunk = _cl_shape(x, groups)
    part = torch.empty(n * s * c * 2, device=x.device, dtype=torch.float32)
    _cl_sums_kernel[(n, s)](x, x, x, part, p, c, groups, cg, s, pchunk, GRAD=False, BLOCK_P=block_p, C_POW=c_pow)
    mean = torch.empty(n, groups, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    _cl_stats_kernel[(n * groups,)](x, part, mean, rstd, p, c, groups, cg, s, float(p * cg), eps, S_POW=_pow2(s),
                                    CG_POW=_pow2(cg))
    y = torch.empty_like(x)  # keeps the channels_last strides
    _cl_apply_kernel[(triton.cdiv(p, block_p), n)](
        x, y, weight if weight is not None else x, bias if bias is not None else x, mean, rstd, p, c, groups, cg,
        HAS_W=weight is not None, HAS_B=bias is not None, BLOCK_P=block_p, C_POW=c_pow)
    return y, mean, rstd


def backward_channels_last(dy: torch.Tensor, x: torch.Tensor, weight, mean: torch.Tensor, rstd: torch.Tensor,
                           groups: int, need_params: bool):
    """:func:`backward` for a channels_last-contiguous ``x`` (``dx`` channels_last too)."""
    n, c, p, cg, c_pow, block_p, s, pchunk = _cl_shape(x, groups)
    dy = dy.contiguous(memory_format=torch.channels_last)
    part = torch.empty(n * s * c * 2, device=x.device, dtype=torch.float32)
    _cl_sums_kernel[(n, s)](x, dy, mean, part, p, c, groups, cg, s, pchunk, GRAD=True, BLOCK_P=block_p, C_POW=c_pow)
    gsum = torch.empty(n * groups * 2, device=x.device, dtype=torch.float32)
    dw = torch.empty(c, device=x.device, dtype=torch.float32) if need_params else gsum
    db = torch.empty_like(dw) if need_params else gsum
    _cl_grad_reduce_kernel[(groups,)](part, weight if weight is not None else x, rstd, gsum, dw, db, c, groups, cg, s,
                                      N=n, HAS_W=weight is not None, NEED_PARAMS=need_params, S_POW=_pow2(s),
                                      CG_POW=_pow2(cg))
    dx = torch.empty_like(x)
    _cl_grad_x_kernel[(triton.cdiv(p, block_p), n)](x, dy, dx, weight if weight is not None else x, mean, rstd, gsum,
                                                    p, c, groups, cg, float(p * cg), HAS_W=weight is not None,
                                                    BLOCK_P=block_p, C_POW=c_pow)
    return dx, (dw if need_params else None), (db if need_params else None)
