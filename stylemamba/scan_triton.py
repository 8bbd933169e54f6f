"""The selective scan as two Triton kernels (forward, backward): fast on CUDA without mamba-ssm.

Same semantics as :func:`stylemamba.ssm.selective_scan` (layout ``u, delta, z: (b,d,l)``,
``A: (d,n)``, per-token ``B, C: (b,n,l)``, optional ``D``, ``z``, ``delta_bias``, softplus), with
the optional parts fused into the kernels. Inputs may be fp32/bf16/fp16 (each its own dtype);
everything is computed in fp32 and the outputs take the inputs' dtypes.

Why this shape of kernel. One program owns ``BD`` channels of one batch element and keeps their
``(BD, n)`` state in registers while it walks the sequence in chunks of ``T`` tokens. Inside a
chunk the recurrence ``h_t = a_t h_{t-1} + x_t`` is a parallel associative scan over the
``(BD, n, T)`` tile (``tl.associative_scan`` on pairs ``(a, x)``); the state carried in from the
previous chunk is added decayed by the chunk's running product of ``a`` (which lies in [0, 1]:
no overflow however strong the decay). The large ``(b, d, n, l)`` state never touches memory.

The forward pass, when a gradient is needed, stores the state at the end of every chunk
(``(b, l/T, d, n)`` fp32: one byte per element of ``u`` at ``T = 64``). The backward pass walks
the chunks in reverse: it recomputes the chunk's states from the stored state before it, then
runs the adjoint recurrence ``g_t = dout_t C_t + a_{t+1} g_{t+1}`` as a reversed scan (``a_{t+1}``
comes from a load shifted by one token, so the chunk's last token sees the next chunk's first).
Everything that sums over channels (``dB``, ``dC``) is added atomically into fp32 buffers; sums
over batch and time (``dA``, ``dD``, ``d delta_bias``) are reduced in registers and written per
batch element. ``g * a_t * h_{t-1}`` (the gradient through the decay) is ``g * (h_t - x_t)``, so no
division by a decay is ever needed.

Importing this module imports triton; :mod:`stylemamba.ssm` does that lazily, in a try/except.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

Tensor = torch.Tensor

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class KernelConfig:
    """Tile of one program: ``block_d`` channels x ``chunk`` tokens (powers of two), warps."""

    block_d: int
    chunk: int
    num_warps: int


# Chosen from the sweep on one H200 (bench/scan_bench.py --sweep; bench/results/scan/). The
# backward pass must use the forward pass's chunk: it restarts from the states stored per chunk.
FWD_CONFIG = KernelConfig(block_d=4, chunk=64, num_warps=4)
BWD_CONFIG = KernelConfig(block_d=4, chunk=64, num_warps=4)
INFER_CONFIG = KernelConfig(block_d=4, chunk=64, num_warps=4)  # forward without gradient


@triton.jit
def _combine(a_l, x_l, a_r, x_r):
    """Compose two steps of ``h -> a h + x`` (left first, then right)."""
    return a_l * a_r, x_l * a_r + x_r


@triton.jit
def _softplus(x):
    """``log(1 + exp(x))`` as torch computes it (the identity above 20), without overflow."""
    e = tl.exp(-tl.abs(x))
    log1p_e = tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log(1.0 + e))
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + log1p_e)


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, ckpt_ptr,
    n_ch, length, n_state,
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_B_b, s_B_n, s_C_b, s_C_n, s_z_b, s_z_d, s_y_b, s_y_d,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE_STATES: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, T: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    tloc = tl.arange(0, T)
    md = offs_d < n_ch
    mn = offs_n < n_state
    # log2(e) folded into A: exp(delta * A) = exp2(delta * A2); padded states get A = 0 (no-op)
    A2 = tl.load(A_ptr + offs_d[:, None] * n_state + offs_n[None, :], mask=md[:, None] & mn[None, :],
                 other=0.0).to(tl.float32) * LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    u_base = u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d
    dt_base = delta_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d
    B_base = B_ptr + pid_b * s_B_b + offs_n[:, None] * s_B_n
    C_base = C_ptr + pid_b * s_C_b + offs_n[:, None] * s_C_n
    z_base = z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d
    y_base = y_ptr + pid_b * s_y_b + offs_d[:, None] * s_y_d
    n_chunks = tl.cdiv(length, T)
    ck_base = ckpt_ptr + (pid_b * n_chunks * n_ch + offs_d[:, None]) * n_state + offs_n[None, :]
    h = tl.zeros((BD, BN), dtype=tl.float32)
    for c in range(0, n_chunks):
        offs_t = c * T + tloc
        mt = offs_t < length
        m2 = md[:, None] & mt[None, :]
        mnt = mn[:, None] & mt[None, :]
        u = tl.load(u_base + offs_t[None, :], mask=m2, other=0.0).to(tl.float32)
        dt = tl.load(dt_base + offs_t[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(m2, dt, 0.0)  # padding: a = 1, x = 0 (the state passes through unchanged)
        Bt = tl.load(B_base + offs_t[None, :], mask=mnt, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + offs_t[None, :], mask=mnt, other=0.0).to(tl.float32)
        a = tl.exp2(dt[:, None, :] * A2[:, :, None])
        x = (dt * u)[:, None, :] * Bt[None, :, :]
        a_run, hs = tl.associative_scan((a, x), axis=2, combine_fn=_combine)
        hs = hs + a_run * h[:, :, None]
        y = tl.sum(hs * Ct[None, :, :], axis=1)
        if HAS_D:
            y = y + Dv[:, None] * u
        if HAS_Z:
            zv = tl.load(z_base + offs_t[None, :], mask=m2, other=0.0).to(tl.float32)
            y = y * zv * tl.sigmoid(zv)
        tl.store(y_base + offs_t[None, :], y.to(y_ptr.dtype.element_ty), mask=m2)
        h = tl.sum(tl.where(tloc[None, None, :] == T - 1, hs, 0.0), axis=2)
        if SAVE_STATES:
            tl.store(ck_base + c * n_ch * n_state, h, mask=md[:, None] & mn[None, :])


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dy_ptr, ckpt_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dbias_ptr,
    n_ch, length, n_state,
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_B_b, s_B_n, s_C_b, s_C_n, s_z_b, s_z_d, s_dy_b, s_dy_d,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BD: tl.constexpr, BN: tl.constexpr, T: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    tloc = tl.arange(0, T)
    md = offs_d < n_ch
    mn = offs_n < n_state
    mdn = md[:, None] & mn[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * n_state + offs_n[None, :], mask=mdn, other=0.0).to(tl.float32)
    A2 = A * LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    u_base = u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d
    dt_base = delta_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d
    B_base = B_ptr + pid_b * s_B_b + offs_n[:, None] * s_B_n
    C_base = C_ptr + pid_b * s_C_b + offs_n[:, None] * s_C_n
    z_base = z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d
    dy_base = dy_ptr + pid_b * s_dy_b + offs_d[:, None] * s_dy_d
    # outputs du, ddelta, dz: contiguous (b, d, l); dB, dC: contiguous fp32 (b, n, l)
    g_base = (pid_b * n_ch + offs_d[:, None]) * length
    dBC_base = (pid_b * n_state + offs_n[:, None]) * length
    n_chunks = tl.cdiv(length, T)
    ck_base = ckpt_ptr + (pid_b * n_chunks * n_ch + offs_d[:, None]) * n_state + offs_n[None, :]
    g_next = tl.zeros((BD, BN), dtype=tl.float32)  # dL/dh at the first token of the next chunk
    dA_acc = tl.zeros((BD, BN), dtype=tl.float32)
    dD_acc = tl.zeros((BD,), dtype=tl.float32)
    dbias_acc = tl.zeros((BD,), dtype=tl.float32)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        offs_t = c * T + tloc
        mt = offs_t < length
        m2 = md[:, None] & mt[None, :]
        mnt = mn[:, None] & mt[None, :]
        m2n = md[:, None] & (offs_t[None, :] + 1 < length)
        u = tl.load(u_base + offs_t[None, :], mask=m2, other=0.0).to(tl.float32)
        dt_raw = tl.load(dt_base + offs_t[None, :], mask=m2, other=0.0).to(tl.float32)
        dtn = tl.load(dt_base + offs_t[None, :] + 1, mask=m2n, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt_raw = dt_raw + bias[:, None]
            dtn = dtn + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt_raw)
            dtn = _softplus(dtn)
        else:
            dt = dt_raw
        dt = tl.where(m2, dt, 0.0)
        dtn = tl.where(m2n, dtn, 0.0)
        Bt = tl.load(B_base + offs_t[None, :], mask=mnt, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + offs_t[None, :], mask=mnt, other=0.0).to(tl.float32)
        dy = tl.load(dy_base + offs_t[None, :], mask=m2, other=0.0).to(tl.float32)
        # 1) the chunk's states, from the state stored before it
        h0 = tl.load(ck_base + (c - 1) * n_ch * n_state, mask=mdn & (c > 0), other=0.0)
        xd = dt * u
        x = xd[:, None, :] * Bt[None, :, :]
        a = tl.exp2(dt[:, None, :] * A2[:, :, None])
        a_run, hs = tl.associative_scan((a, x), axis=2, combine_fn=_combine)
        hs = hs + a_run * h0[:, :, None]
        # 2) through the gate: y = (C.h + D u) * silu(z)
        if HAS_Z:
            zv = tl.load(z_base + offs_t[None, :], mask=m2, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zv)
            out = tl.sum(hs * Ct[None, :, :], axis=1)
            if HAS_D:
                out = out + Dv[:, None] * u
            dz = dy * out * sz * (1.0 + zv * (1.0 - sz))
            tl.store(dz_ptr + g_base + offs_t[None, :], dz.to(dz_ptr.dtype.element_ty), mask=m2)
            dout = dy * zv * sz
        else:
            dout = dy
        if HAS_D:
            dD_acc += tl.sum(dout * u, axis=1)
        tl.atomic_add(dC_ptr + dBC_base + offs_t[None, :], tl.sum(dout[:, None, :] * hs, axis=0), mask=mnt,
                      sem="relaxed")
        # 3) the adjoint state g_t = dout_t C_t + a_{t+1} g_{t+1}, a reversed scan
        a_next = tl.exp2(dtn[:, None, :] * A2[:, :, None])
        b_rev = dout[:, None, :] * Ct[None, :, :]
        a_rev, gs = tl.associative_scan((a_next, b_rev), axis=2, combine_fn=_combine, reverse=True)
        gs = gs + a_rev * g_next[:, :, None]
        g_next = tl.sum(tl.where(tloc[None, None, :] == 0, gs, 0.0), axis=2)
        # 4) the gradients of this chunk
        gB = tl.sum(gs * Bt[None, :, :], axis=1)
        du = gB * dt
        if HAS_D:
            du = du + dout * Dv[:, None]
        tl.store(du_ptr + g_base + offs_t[None, :], du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.atomic_add(dB_ptr + dBC_base + offs_t[None, :], tl.sum(gs * xd[:, None, :], axis=0), mask=mnt,
                      sem="relaxed")
        q = gs * (hs - x)  # = g_t * a_t * h_{t-1}: the gradient through the decay
        ddt = gB * u + tl.sum(q * A[:, :, None], axis=1)
        dA_acc += tl.sum(q * dt[:, None, :], axis=2)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(dt_raw)
        ddt = tl.where(m2, ddt, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(ddt, axis=1)
        tl.store(ddelta_ptr + g_base + offs_t[None, :], ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)
    # per batch element; the caller sums over the batch
    tl.store(dA_ptr + (pid_b * n_ch + offs_d[:, None]) * n_state + offs_n[None, :], dA_acc, mask=mdn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * n_ch + offs_d, dD_acc, mask=md)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * n_ch + offs_d, dbias_acc, mask=md)


def _last_dim_contiguous(t: Optional[Tensor]) -> Optional[Tensor]:
    if t is None:
        return None
    return t if t.stride(-1) == 1 else t.contiguous()


def _block_n(n: int) -> int:
    return max(1, triton.next_power_of_2(n))


def _grid(b: int, d: int, cfg: KernelConfig):
    return (triton.cdiv(d, cfg.block_d), b)


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, fwd_cfg, bwd_cfg, infer_cfg):
        b, d, length = u.shape
        n = A.shape[1]
        need_grad = any(ctx.needs_input_grad[:8])
        cfg = fwd_cfg if need_grad else infer_cfg
        u, delta, B, C, z = (_last_dim_contiguous(t) for t in (u, delta, B, C, z))
        y = torch.empty((b, d, length), dtype=u.dtype, device=u.device)
        n_chunks = triton.cdiv(length, cfg.chunk)
        ckpt = (torch.empty((b, n_chunks, d, n), dtype=torch.float32, device=u.device) if need_grad
                else y)  # unused pointer without gradient
        zz = z if z is not None else u
        _scan_fwd_kernel[_grid(b, d, cfg)](
            u, delta, A, B, C, D if D is not None else A, zz, delta_bias if delta_bias is not None else A, y, ckpt,
            d, length, n,
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), B.stride(0), B.stride(1),
            C.stride(0), C.stride(1), zz.stride(0), zz.stride(1), y.stride(0), y.stride(1),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), SAVE_STATES=need_grad,
            BD=cfg.block_d, BN=_block_n(n), T=cfg.chunk, num_warps=cfg.num_warps,
        )
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
            ctx.delta_softplus = bool(delta_softplus)
            ctx.cfg = KernelConfig(bwd_cfg.block_d, fwd_cfg.chunk, bwd_cfg.num_warps)
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        cfg = ctx.cfg
        b, d, length = u.shape
        n = A.shape[1]
        dy = _last_dim_contiguous(dy)
        dev = u.device
        du = torch.empty((b, d, length), dtype=u.dtype, device=dev)
        ddelta = torch.empty((b, d, length), dtype=delta.dtype, device=dev)
        dz = torch.empty((b, d, length), dtype=z.dtype, device=dev) if z is not None else du
        dB = torch.zeros((b, n, length), dtype=torch.float32, device=dev)
        dC = torch.zeros((b, n, length), dtype=torch.float32, device=dev)
        dA = torch.empty((b, d, n), dtype=torch.float32, device=dev)
        dD = torch.empty((b, d), dtype=torch.float32, device=dev) if D is not None else dA
        dbias = torch.empty((b, d), dtype=torch.float32, device=dev) if delta_bias is not None else dA
        zz = z if z is not None else u
        _scan_bwd_kernel[_grid(b, d, cfg)](
            u, delta, A, B, C, D if D is not None else A, zz, delta_bias if delta_bias is not None else A, dy, ckpt,
            du, ddelta, dA, dB, dC, dD, dz, dbias,
            d, length, n,
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), B.stride(0), B.stride(1),
            C.stride(0), C.stride(1), zz.stride(0), zz.stride(1), dy.stride(0), dy.stride(1),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=ctx.delta_softplus, BD=cfg.block_d, BN=_block_n(n), T=cfg.chunk, num_warps=cfg.num_warps,
        )
        return (du, ddelta, dA.sum(0), dB.to(B.dtype), dC.to(C.dtype),
                dD.sum(0) if D is not None else None, dz if z is not None else None,
                dbias.sum(0) if delta_bias is not None else None, None, None, None, None)


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                          z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                          delta_softplus: bool = True, *, fwd_config: Optional[KernelConfig] = None,
                          bwd_config: Optional[KernelConfig] = None,
                          infer_config: Optional[KernelConfig] = None) -> Tensor:
    """The selective scan on the tensors' device through Triton; ``y`` in ``u``'s dtype.

    ``A``, ``D`` and ``delta_bias`` are read as fp32 (as mamba-ssm does); the configs override the
    tiles (the backward pass always uses the forward pass's chunk length).
    """
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must be (batch, channels, length) of one shape, got {tuple(u.shape)} "
                         f"and {tuple(delta.shape)}")
    b, d, length = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (channels={d}, state), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (b, n, length):
            raise ValueError(f"{name} must be (batch, state, length) = {(b, n, length)}, got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")

    def f32(t):
        return None if t is None else t.float().contiguous()

    return _TritonScan.apply(u, delta, f32(A), B, C, f32(D), z, f32(delta_bias), delta_softplus,
                             fwd_config or FWD_CONFIG, bwd_config or BWD_CONFIG, infer_config or INFER_CONFIG)
