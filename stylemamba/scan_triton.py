"""The selective scan as two Triton kernels (forward, backward): fast on CUDA without mamba-ssm.

Same semantics as :func:`stylemamba.ssm.selective_scan` (layout ``u, delta, z: (b,d,l)``,
``A: (d,n)``, per-token ``B, C: (b,n,l)``, optional ``D``, ``z``, ``delta_bias``, softplus), with
the optional parts fused into the kernels. Inputs may be fp32/bf16/fp16 (each its own dtype);
everything is computed in fp32 and the outputs take the inputs' dtypes.

Why this shape of kernel. One program owns ``BD`` channels of one batch element and walks the
sequence in chunks of ``T`` tokens; the tokens of a chunk are spread over the lanes (a few
consecutive tokens per thread), and the ``n`` states are visited one after the other inside the
chunk. For one state the recurrence ``h_t = a_t h_{t-1} + x_t`` over the chunk is a parallel
associative scan along the tokens (``tl.associative_scan`` on pairs ``(a, x)``: sequential inside a
thread, shuffles across lanes); the state entering the chunk is added decayed by the running
product of ``a`` (in [0, 1]: no overflow however strong the decay), and ``C_t h_t`` is accumulated
into the chunk's output in registers. So nothing is ever summed across lanes over the states, the
``(b, d, n, l)`` state never touches memory, and each state's value at the chunk's end goes to a
small buffer (``(b, l/T, d, n)`` fp32 when a gradient is needed: the backward pass restarts from
it; else two slots used in turn). One barrier per chunk makes those values visible to the
program's threads before the next chunk reads them.

The backward pass walks the chunks in reverse. Per state it recomputes the chunk's states from the
stored one, then runs the adjoint recurrence ``g_t = dout_t C_t + a_{t+1} g_{t+1}`` as a reversed
scan (``a_{t+1}`` comes from a load shifted by one token, so the chunk's last token sees the next
chunk's first; ``g`` crosses chunks through two slots like the forward states). ``g * a_t * h_{t-1}``
(the gradient through the decay) is ``g * (h_t - x_t)``: no division by a decay. Sums over channels
(``dB``, ``dC``) and over batch and time (``dA``, ``dD``, ``d delta_bias``) are added atomically into
fp32 buffers. (Triton builds the reversed scan by flipping registers across lanes; a variant that
instead ran the chunk in reversed order and passed the states through a buffer measured 16 %
slower on an H200 (best backward 0.668 vs 0.573 ms), so it was dropped.)

Importing this module imports triton; :mod:`stylemamba.ssm` does that lazily, in a try/except.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .triton_addresses import address_safe

Tensor = torch.Tensor

LOG2E = tl.constexpr(1.4426950408889634)  # a global a kernel may read


@dataclass(frozen=True)
class KernelConfig:
    """Tile of one program: ``block_d`` channels x ``chunk`` tokens (powers of two), its warps, and
    how many states one step of the state loop handles (unrolled)."""

    block_d: int
    chunk: int
    num_warps: int
    unroll: int = 1

    def __post_init__(self):
        for name in ("block_d", "chunk"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1 and v & (v - 1) == 0):
                raise ValueError(f"KernelConfig.{name} must be a power of two, got {v!r}")
        if self.num_warps not in (1, 2, 4, 8, 16) or not (isinstance(self.unroll, int) and self.unroll >= 1):
            raise ValueError(f"KernelConfig: num_warps must be 1, 2, 4, 8 or 16 and unroll >= 1, got {self}")


# Chosen from the sweep on one H200 (bench/scan_bench.py --sweep; bench/results/scan/). The
# backward pass uses the forward pass's chunk: it restarts from the states stored per chunk.
FWD_CONFIG = KernelConfig(block_d=2, chunk=512, num_warps=4, unroll=2)
BWD_CONFIG = KernelConfig(block_d=1, chunk=512, num_warps=2, unroll=1)
INFER_CONFIG = KernelConfig(block_d=2, chunk=512, num_warps=4, unroll=2)  # forward without gradient

# Other tiles without editing the code (another GPU, a sweep): JSON such as
# {"fwd": [2, 512, 4, 2], "bwd": [1, 512, 2, 1], "infer": [1, 256, 1, 2]} (KernelConfig's fields).
TILES_ENV = "STYLEMAMBA_SCAN_TILES"
_ENV_CACHE: dict = {}


def configs() -> dict[str, KernelConfig]:
    """The tiles in force: the defaults above, overridden by the environment variable TILES_ENV."""
    raw = os.environ.get(TILES_ENV, "")
    if raw not in _ENV_CACHE:
        out = {"fwd": FWD_CONFIG, "bwd": BWD_CONFIG, "infer": INFER_CONFIG}
        if raw:
            try:
                spec = json.loads(raw)
                unknown = set(spec) - set(out)
                if unknown:
                    raise ValueError(f"unknown keys {sorted(unknown)}")
                out.update({k: KernelConfig(*v) for k, v in spec.items()})
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{TILES_ENV}={raw!r} is not valid: {exc}. Expected JSON such as "
                                 '{"fwd": [2, 512, 4, 2], "bwd": [1, 512, 2, 1]} (block_d, chunk, '
                                 "num_warps, unroll), or unset it") from exc
        _ENV_CACHE.clear()
        _ENV_CACHE[raw] = out
    return _ENV_CACHE[raw]


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
def _per_channel(ptr, offs_d, md, PRESENT: tl.constexpr):
    """An optional per-channel fp32 vector (D, delta_bias), zeros when absent."""
    if PRESENT:
        v = tl.load(ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    else:
        v = tl.zeros(offs_d.shape, dtype=tl.float32)
    return v


@triton.jit
def _step_sizes(dt_ptrs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """The step sizes of a tile: ``(delta + bias, softplus(delta + bias))`` in fp32, 0 where masked
    (padding then leaves the state unchanged: a = 1, x = 0)."""
    raw = tl.load(dt_ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias[:, None]
    if SOFTPLUS:
        dt = _softplus(raw)
    else:
        dt = raw
    return raw, tl.where(mask, dt, 0.0)


@address_safe
@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, states_ptr,
    n_ch, length, n_state,
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_B_b, s_B_n, s_C_b, s_C_n, s_z_b, s_z_d, s_y_b, s_y_d,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    STORE_ALL: tl.constexpr, BD: tl.constexpr, T: tl.constexpr, NU: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    tloc = tl.arange(0, T)
    md = offs_d < n_ch
    Dv = _per_channel(D_ptr, offs_d, md, HAS_D)
    bias = _per_channel(bias_ptr, offs_d, md, HAS_BIAS)
    u_base = u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d
    dt_base = delta_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d
    B_base = B_ptr + pid_b * s_B_b
    C_base = C_ptr + pid_b * s_C_b
    n_chunks = tl.cdiv(length, T)
    slot_size = n_ch * n_state
    if STORE_ALL:  # (b, n_chunks, d, n): the state after every chunk, for the backward pass
        st_base = states_ptr + pid_b * n_chunks * slot_size + offs_d * n_state
    else:  # (b, 2, d, n): two slots used in turn
        st_base = states_ptr + pid_b * 2 * slot_size + offs_d * n_state
    for c in range(0, n_chunks):
        offs_t = c * T + tloc
        mt = offs_t < length
        m2 = md[:, None] & mt[None, :]
        u = tl.load(u_base + offs_t[None, :], mask=m2, other=0.0).to(tl.float32)
        _, dt = _step_sizes(dt_base + offs_t[None, :], m2, bias, HAS_BIAS, SOFTPLUS)
        xd = dt * u
        if HAS_D:
            y = Dv[:, None] * u
        else:
            y = tl.zeros((BD, T), dtype=tl.float32)
        if STORE_ALL:
            slot, prev = c, c - 1
        else:
            slot, prev = c % 2, (c + 1) % 2
        tl.debug_barrier()  # the states the previous chunk stored are visible to every thread
        for n0 in range(0, n_state, NU):
            for j in tl.static_range(NU):
                n = n0 + j
                mn = n < n_state
                A2 = tl.load(A_ptr + offs_d * n_state + n, mask=md & mn, other=0.0).to(tl.float32) * LOG2E
                Bn = tl.load(B_base + n * s_B_n + offs_t, mask=mt & mn, other=0.0).to(tl.float32)
                Cn = tl.load(C_base + n * s_C_n + offs_t, mask=mt & mn, other=0.0).to(tl.float32)
                h0 = tl.load(st_base + prev * slot_size + n, mask=md & mn & (c > 0), other=0.0)
                a = tl.exp2(dt * A2[:, None])
                x = xd * Bn[None, :]
                a_run, hs = tl.associative_scan((a, x), axis=1, combine_fn=_combine)
                hs = hs + a_run * h0[:, None]
                y += hs * Cn[None, :]
                h_end = tl.sum(tl.where(tloc[None, :] == T - 1, hs, 0.0), axis=1)
                tl.store(st_base + slot * slot_size + n, h_end, mask=md & mn)
        if HAS_Z:
            zv = tl.load(z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d + offs_t[None, :], mask=m2,
                         other=0.0).to(tl.float32)
            y = y * zv * tl.sigmoid(zv)
        tl.store(y_ptr + pid_b * s_y_b + offs_d[:, None] * s_y_d + offs_t[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=m2)


@address_safe
@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dy_ptr, states_ptr, gbuf_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dbias_ptr,
    n_ch, length, n_state,
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_B_b, s_B_n, s_C_b, s_C_n, s_z_b, s_z_d, s_dy_b, s_dy_d,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BD: tl.constexpr, T: tl.constexpr, NU: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    tloc = tl.arange(0, T)
    md = offs_d < n_ch
    Dv = _per_channel(D_ptr, offs_d, md, HAS_D)
    bias = _per_channel(bias_ptr, offs_d, md, HAS_BIAS)
    u_base = u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d
    dt_base = delta_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d
    dy_base = dy_ptr + pid_b * s_dy_b + offs_d[:, None] * s_dy_d
    B_base = B_ptr + pid_b * s_B_b
    C_base = C_ptr + pid_b * s_C_b
    g_out = (pid_b * n_ch + offs_d[:, None]) * length  # du, ddelta, dz: contiguous (b, d, l)
    dBC_base = pid_b * n_state * length  # dB, dC: contiguous fp32 (b, n, l)
    n_chunks = tl.cdiv(length, T)
    slot_size = n_ch * n_state
    st_base = states_ptr + pid_b * n_chunks * slot_size + offs_d * n_state
    g_base = gbuf_ptr + pid_b * 2 * slot_size + offs_d * n_state
    dD_acc = tl.zeros((BD,), dtype=tl.float32)
    dbias_acc = tl.zeros((BD,), dtype=tl.float32)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        offs = c * T + tloc
        mt = offs < length
        m2 = md[:, None] & mt[None, :]
        m2n = md[:, None] & (offs + 1 < length)[None, :]
        u = tl.load(u_base + offs[None, :], mask=m2, other=0.0).to(tl.float32)
        dt_raw, dt = _step_sizes(dt_base + offs[None, :], m2, bias, HAS_BIAS, SOFTPLUS)
        _, dtn = _step_sizes(dt_base + offs[None, :] + 1, m2n, bias, HAS_BIAS, SOFTPLUS)  # past the end: a = 1
        xd = dt * u
        dy = tl.load(dy_base + offs[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_Z:
            zv = tl.load(z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d + offs[None, :], mask=m2,
                         other=0.0).to(tl.float32)
            sz = tl.sigmoid(zv)
            dout = dy * zv * sz
        else:
            dout = dy
        if HAS_D:
            out = Dv[:, None] * u  # the output before the gate, rebuilt for dz
        else:
            out = tl.zeros((BD, T), dtype=tl.float32)
        gB = tl.zeros((BD, T), dtype=tl.float32)  # sum_n g B
        qA = tl.zeros((BD, T), dtype=tl.float32)  # sum_n g a h_{t-1} A
        slot, nxt = c % 2, (c + 1) % 2
        tl.debug_barrier()  # the adjoint states the following chunk stored are visible to every thread
        for n0 in range(0, n_state, NU):
            for j in tl.static_range(NU):
                n = n0 + j
                mn = n < n_state
                An = tl.load(A_ptr + offs_d * n_state + n, mask=md & mn, other=0.0).to(tl.float32)
                A2 = An * LOG2E
                Bn = tl.load(B_base + n * s_B_n + offs, mask=mt & mn, other=0.0).to(tl.float32)
                Cn = tl.load(C_base + n * s_C_n + offs, mask=mt & mn, other=0.0).to(tl.float32)
                h0 = tl.load(st_base + (c - 1) * slot_size + n, mask=md & mn & (c > 0), other=0.0)
                g1 = tl.load(g_base + nxt * slot_size + n, mask=md & mn & (c < n_chunks - 1), other=0.0)
                x = xd * Bn[None, :]
                # 1) this state's values over the chunk, from the stored one
                a_run, hs = tl.associative_scan((tl.exp2(dt * A2[:, None]), x), axis=1, combine_fn=_combine)
                hs = hs + a_run * h0[:, None]
                # 2) the adjoint g_t = dout_t C_t + a_{t+1} g_{t+1}, a reversed scan
                a_rev, gs = tl.associative_scan((tl.exp2(dtn * A2[:, None]), dout * Cn[None, :]), axis=1,
                                                combine_fn=_combine, reverse=True)
                gs = gs + a_rev * g1[:, None]
                tl.store(g_base + slot * slot_size + n, tl.sum(tl.where(tloc[None, :] == 0, gs, 0.0), axis=1),
                         mask=md & mn)
                # 3) this state's share of the gradients
                out += hs * Cn[None, :]
                tl.atomic_add(dC_ptr + dBC_base + n * length + offs, tl.sum(dout * hs, axis=0), mask=mt & mn,
                              sem="relaxed")
                gB += gs * Bn[None, :]
                tl.atomic_add(dB_ptr + dBC_base + n * length + offs, tl.sum(gs * xd, axis=0), mask=mt & mn,
                              sem="relaxed")
                q = gs * (hs - x)  # = g_t * a_t * h_{t-1}: the gradient through the decay
                qA += q * An[:, None]
                tl.atomic_add(dA_ptr + offs_d * n_state + n, tl.sum(q * dt, axis=1), mask=md & mn, sem="relaxed")
        du = gB * dt
        if HAS_D:
            du += dout * Dv[:, None]
            dD_acc += tl.sum(dout * u, axis=1)
        tl.store(du_ptr + g_out + offs[None, :], du.to(du_ptr.dtype.element_ty), mask=m2)
        ddt = gB * u + qA
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(dt_raw)
        ddt = tl.where(m2, ddt, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(ddt, axis=1)
        tl.store(ddelta_ptr + g_out + offs[None, :], ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)
        if HAS_Z:
            dz = dy * out * sz * (1.0 + zv * (1.0 - sz))
            tl.store(dz_ptr + g_out + offs[None, :], dz.to(dz_ptr.dtype.element_ty), mask=m2)
    if HAS_D:
        tl.atomic_add(dD_ptr + offs_d, dD_acc, mask=md, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d, dbias_acc, mask=md, sem="relaxed")


def _last_dim_contiguous(t: Optional[Tensor]) -> Optional[Tensor]:
    if t is None:
        return None
    return t if t.stride(-1) == 1 else t.contiguous()


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
        slots = triton.cdiv(length, cfg.chunk) if need_grad else 2
        states = torch.empty((b, slots, d, n), dtype=torch.float32, device=u.device)
        zz = z if z is not None else u
        _scan_fwd_kernel[_grid(b, d, cfg)](
            u, delta, A, B, C, D if D is not None else A, zz, delta_bias if delta_bias is not None else A, y, states,
            d, length, n,
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), B.stride(0), B.stride(1),
            C.stride(0), C.stride(1), zz.stride(0), zz.stride(1), y.stride(0), y.stride(1),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), STORE_ALL=need_grad,
            BD=cfg.block_d, T=cfg.chunk, NU=cfg.unroll, num_warps=cfg.num_warps,
        )
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
            ctx.delta_softplus = bool(delta_softplus)
            ctx.cfg = KernelConfig(bwd_cfg.block_d, fwd_cfg.chunk, bwd_cfg.num_warps, bwd_cfg.unroll)
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        cfg = ctx.cfg
        b, d, length = u.shape
        n = A.shape[1]
        dy = _last_dim_contiguous(dy)
        dev = u.device
        du = torch.empty((b, d, length), dtype=u.dtype, device=dev)
        ddelta = torch.empty((b, d, length), dtype=delta.dtype, device=dev)
        dz = torch.empty((b, d, length), dtype=z.dtype, device=dev) if z is not None else du
        gbuf = torch.empty((b, 2, d, n), dtype=torch.float32, device=dev)
        # everything summed atomically, zeroed by one fill: dB, dC (b, n, l), dA (d, n), dD, dbias (d,)
        acc = torch.zeros(2 * b * n * length + d * n + 2 * d, dtype=torch.float32, device=dev)
        dB, dC = acc[:2 * b * n * length].view(2, b, n, length).unbind(0)
        dA = acc[2 * b * n * length:2 * b * n * length + d * n].view(d, n)
        dD, dbias = acc[2 * b * n * length + d * n:].view(2, d).unbind(0)
        zz = z if z is not None else u
        _scan_bwd_kernel[_grid(b, d, cfg)](
            u, delta, A, B, C, D if D is not None else A, zz, delta_bias if delta_bias is not None else A, dy,
            states, gbuf, du, ddelta, dA, dB, dC, dD, dz, dbias,
            d, length, n,
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), B.stride(0), B.stride(1),
            C.stride(0), C.stride(1), zz.stride(0), zz.stride(1), dy.stride(0), dy.stride(1),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=ctx.delta_softplus, BD=cfg.block_d, T=cfg.chunk, NU=cfg.unroll, num_warps=cfg.num_warps,
        )
        return (du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype),
                dD if D is not None else None, dz if z is not None else None,
                dbias if delta_bias is not None else None, None, None, None, None)


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                          z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                          delta_softplus: bool = True, *, fwd_config: Optional[KernelConfig] = None,
                          bwd_config: Optional[KernelConfig] = None,
                          infer_config: Optional[KernelConfig] = None) -> Tensor:
    """The selective scan on the tensors' device through Triton; ``y`` in ``u``'s dtype.

    ``A``, ``D`` and ``delta_bias`` are read as fp32 (as mamba-ssm does); the configs override the
    tiles of :func:`configs` (the backward pass always uses the forward pass's chunk length).
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

    cfg = configs()
    return _TritonScan.apply(u, delta, f32(A), B, C, f32(D), z, f32(delta_bias), delta_softplus,
                             fwd_config or cfg["fwd"], bwd_config or cfg["bwd"], infer_config or cfg["infer"])
