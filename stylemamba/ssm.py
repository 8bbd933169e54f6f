"""The selective state-space scan (Mamba-1 "S6") and the Mamba mixer built on it.

Recurrence (mamba-ssm's ``selective_scan_ref`` semantics, layout ``u, delta, z: (b,d,l)``,
``A: (d,n)`` real negative, ``B, C: (b,n,l)``, ``D: (d,)``)::

    delta = softplus(delta + delta_bias)
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t          (state (b,d,n))
    y_t   = <C_t, h_t> + D * u_t ;   y *= silu(z)

Backends (``selective_scan(..., backend=...)``):

* ``"mamba_ssm"`` -- the compiled CUDA kernel of the mamba-ssm package (module ``selective_scan_cuda``),
  used only when it imports and the tensors live on CUDA. ``import mamba_ssm`` itself fails under
  transformers >= 5, so the bare extension is wrapped here in a small autograd Function.
* ``"triton"`` -- ours, two Triton kernels (:mod:`stylemamba.scan_triton`): the default on CUDA
  without mamba-ssm. Triton compiles at run time (no compiler to install: it ships its own), but
  it may be missing or broken (Windows ComfyUI portable), so "auto" picks it only after it imported
  and passed a small self-check on that device; any failure falls back to ``"chunked"``, logged.
* ``"chunked"`` -- ours, plain PyTorch, no compiler needed (the default on the CPU, and on CUDA
  without a working Triton).
* ``"sequential"`` -- one step per token; the reference the tests compare against.

"auto" picks, on CUDA: mamba-ssm if importable, else Triton if it works, else chunked; on the
CPU: chunked. The active backend is logged once per (backend, device type).

How ``"chunked"`` works and why. The state tensor ``(b,d,n,l)`` is large (268 MB in fp32 at
b=2, d=512, n=16, l=4096), so autograd must never keep it. A custom autograd Function keeps only
its inputs plus the states at block boundaries, and recomputes a block's states in the backward
pass (the backward of a linear recurrence is the same recurrence run backwards, so both directions
share one routine). Each block of ``Lb`` tokens is laid out ``(T, K, b, d, n)`` (``K`` chunks of
``T`` tokens, ``T ~ sqrt(Lb)``): a loop over the ``T`` positions scans all chunks at once from a
zero state, a loop over the ``K`` chunks carries the state across chunk boundaries, and one
fused multiply-add adds the carried state times the within-chunk decay. That is ``T + K`` small
launches instead of ``Lb``, O(Lb) work (no log-factor), no division by decays and no ``exp`` of a
positive number: the within-chunk decay is ``exp(A * cumsum(delta))`` with ``A < 0``, ``delta >= 0``,
so it lies in [0, 1] however strong the decay. Everything is computed in fp32 (fp64 when the
inputs are fp64) with autocast off; no host-device synchronisation.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("stylemamba")

BACKENDS = ("auto", "mamba_ssm", "triton", "chunked", "sequential")

# Elements of one (T, K, b, d, n) work buffer of the chunked scan; the sequence is processed in
# blocks so that a buffer never exceeds this (fp32: 512 MB). Peak transient memory is about 3
# buffers in the backward pass, 2 in the forward pass.
CHUNKED_BLOCK_ELEMENTS = 1 << 27

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- the CUDA kernel
_KERNEL: Optional[object] = None
_KERNEL_TRIED = False
_SCAN_FN = None  # mamba_ssm.ops.selective_scan_interface.selective_scan_fn, the second option


def _load_kernel() -> bool:
    """Import the compiled kernel once; True when some mamba-ssm scan is usable."""
    global _KERNEL, _KERNEL_TRIED, _SCAN_FN
    if not _KERNEL_TRIED:
        _KERNEL_TRIED = True
        try:
            import selective_scan_cuda  # type: ignore[import-not-found]

            _KERNEL = selective_scan_cuda
        except Exception as exc:  # ImportError, OSError (missing CUDA libraries), ...
            logger.debug("selective_scan_cuda not importable: %s", exc)
            try:
                from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # type: ignore

                _SCAN_FN = selective_scan_fn
            except Exception as exc2:
                logger.debug("mamba_ssm.ops.selective_scan_interface not importable: %s", exc2)
    return _KERNEL is not None or _SCAN_FN is not None


class _KernelScan(torch.autograd.Function):
    """Autograd wrapper over ``selective_scan_cuda.fwd`` / ``.bwd`` (mamba-ssm 2.x argument order)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool):
        B4, C4 = B.unsqueeze(1), C.unsqueeze(1)  # the kernel wants (b, groups=1, n, l)
        out, states, *rest = _KERNEL.fwd(u, delta, A, B4, C4, D, z, delta_bias, delta_softplus)
        ctx.delta_softplus = delta_softplus
        ctx.has_D, ctx.has_z, ctx.has_bias = D is not None, z is not None, delta_bias is not None
        ctx.save_for_backward(u, delta, A, B4, C4, D, z, delta_bias, states, out if z is not None else None)
        return rest[0] if z is not None else out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B4, C4, D, z, delta_bias, states, out = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = _KERNEL.bwd(
            u, delta, A, B4, C4, D, z, delta_bias, dout.contiguous(), states, out, None,
            ctx.delta_softplus, False)
        return (du, ddelta, dA, dB.squeeze(1), dC.squeeze(1),
                dD if ctx.has_D else None,
                rest[0] if ctx.has_z else None,
                ddelta_bias if ctx.has_bias else None,
                None)


def _scan_mamba_ssm(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    if not (_load_kernel() and u.is_cuda):
        raise RuntimeError("backend 'mamba_ssm' needs the compiled mamba-ssm kernel and CUDA tensors")
    in_dtype = u.dtype
    # The kernel reads u/delta/B/C/z in one dtype (fp32/fp16/bf16) and A, D, delta_bias in fp32,
    # and accumulates in fp32 itself.
    io = in_dtype if in_dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32

    def prep(t):
        return None if t is None else t.to(io).contiguous()

    def prep32(t):
        return None if t is None else t.float().contiguous()

    args = (prep(u), prep(delta), prep32(A), prep(B), prep(C), prep32(D), prep(z), prep32(delta_bias))
    if _KERNEL is not None:
        y = _KernelScan.apply(*args, bool(delta_softplus))
    else:
        y = _SCAN_FN(*args, delta_softplus=bool(delta_softplus))
    return y.to(in_dtype)


# ----------------------------------------------------------------------------- the Triton kernels
_TRITON_SCAN = None  # the module stylemamba.scan_triton, once imported
_TRITON_IMPORT_ERROR: Optional[str] = None
_TRITON_OK: dict = {}  # device ("cuda:0", "cpu") -> passed the self-check there


def _triton_interpreted() -> bool:
    """True under ``TRITON_INTERPRET=1``: Triton then runs kernels on CPU tensors (slowly; for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _import_triton_scan():
    """The module :mod:`stylemamba.scan_triton`, or None when triton does not import (logged once)."""
    global _TRITON_SCAN, _TRITON_IMPORT_ERROR
    if _TRITON_SCAN is None and _TRITON_IMPORT_ERROR is None:
        try:
            from . import scan_triton

            _TRITON_SCAN = scan_triton
        except Exception as exc:  # ImportError, or a broken install failing in any other way
            _TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
            logger.info("stylemamba: triton is not importable (%s); the Triton selective scan is off",
                        _TRITON_IMPORT_ERROR)
    return _TRITON_SCAN


def _device_key(dev: torch.device) -> str:
    if dev.type == "cuda" and dev.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(dev)


def _triton_self_check(dev: torch.device) -> Optional[str]:
    """None when the Triton scan compiles, runs on ``dev`` and matches the chunked scan (output and
    every gradient, a small problem crossing a chunk boundary); otherwise the reason."""
    mod = _import_triton_scan()
    if mod is None:
        return f"triton does not import ({_TRITON_IMPORT_ERROR})"
    try:
        g = torch.Generator().manual_seed(0)
        b, d, n, length = 1, 4, 16, mod.configs()["fwd"].chunk + 44  # two chunks

        def r(*shape, scale=1.0):
            return (torch.randn(*shape, generator=g) * scale).to(dev)

        inputs = dict(u=r(b, d, length), delta=r(b, d, length, scale=0.5), A=-torch.exp(r(d, n, scale=0.5)),
                      B=r(b, n, length), C=r(b, n, length), D=r(d), z=r(b, d, length), delta_bias=r(d, scale=0.5))
        results = []
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(dev.type, enabled=False):
            for fn in (mod.selective_scan_triton, lambda **kw: _scan_pytorch(**kw, backend="chunked")):
                leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
                y = fn(**leaves, delta_softplus=True)
                grads = torch.autograd.grad(y, list(leaves.values()), torch.cos(y.detach()))
                results.append([y.detach(), *grads])
        for name, a, ref in zip(("y",) + tuple(inputs), *results):
            err = float((a.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6))
            if not err < 1e-3:  # also catches NaN
                return f"self-check mismatch against the chunked scan: {name} off by {err:.2e}"
    except Exception as exc:  # compilation, launch, driver, ... anything
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_works(device) -> bool:
    """Whether the Triton scan passed its self-check on ``device`` (checked once per device, logged)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return False
    if not (dev.type == "cuda" or (dev.type == "cpu" and _triton_interpreted())):
        return False
    key = _device_key(dev)
    if key not in _TRITON_OK:
        why = _triton_self_check(dev)
        _TRITON_OK[key] = why is None
        if why is not None and _TRITON_IMPORT_ERROR is None:
            logger.warning("stylemamba: the Triton selective scan does not work on %s (%s); using the "
                           "chunked PyTorch scan", key, why)
    return _TRITON_OK[key]


def _triton_failed(dev: torch.device, exc: BaseException) -> None:
    _TRITON_OK[_device_key(dev)] = False
    logger.warning("stylemamba: the Triton selective scan failed on %s (%s: %s); falling back to the chunked "
                   "PyTorch scan for the rest of this process", dev, type(exc).__name__, exc)


_EAGER: dict = {}


def _eager(fn):
    """``fn`` hidden from torch.compile (an opaque kernel call: it runs eagerly between graphs).
    Wrapped on first use: ``torch.compiler.disable`` imports torch._dynamo, which imports triton."""
    if fn not in _EAGER:
        _EAGER[fn] = torch.compiler.disable(fn)
    return _EAGER[fn]


def _scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    mod = _import_triton_scan()
    if mod is None:
        raise RuntimeError(f"backend 'triton' needs the triton package ({_TRITON_IMPORT_ERROR})")
    in_dtype = u.dtype
    io_types = (torch.float32, torch.float16, torch.bfloat16)
    if not all(t is None or t.dtype in io_types for t in (u, delta, B, C, z)):
        u, delta, B, C, z = (None if t is None else t.float() for t in (u, delta, B, C, z))
    y = mod.selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus=bool(delta_softplus))
    return y.to(in_dtype)


# ----------------------------------------------------------------------------- chunked scan
def _to_chunks(t: Tensor, T: int, K: int) -> Tensor:
    """(b, c, l) -> contiguous (T, K, b, c), zero-padded to l = K*T (pad: delta=0, u=0 -> no-op)."""
    b, c, l = t.shape
    if K * T != l:
        t = F.pad(t, (0, K * T - l))
    return t.reshape(b, c, K, T).permute(3, 2, 0, 1).contiguous()


def _from_chunks(t: Tensor, l: int) -> Tensor:
    """(T, K, b, c) -> (b, c, l) (inverse of ``_to_chunks``, padding dropped)."""
    T, K, b, c = t.shape
    return t.permute(2, 3, 1, 0).reshape(b, c, K * T)[..., :l]


def _chunk_shape(length: int, chunk_size: Optional[int]) -> tuple[int, int]:
    T = chunk_size if chunk_size else max(1, math.ceil(math.sqrt(length)))
    T = max(1, min(T, length))
    return T, math.ceil(length / T)


def _linear_scan_(a: Tensor, x: Tensor, dcs: Tensor, A: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    """In place: ``x <- h`` with ``h_t = a_t * h_{t-1} + x_t`` (``h_{t+1}`` when ``reverse``).

    ``a, x: (T, K, b, d, n)`` (``a`` is overwritten with the within-chunk decays), ``dcs: (T, K, b, d)``
    the deltas whose ``exp(delta * A)`` are the ``a``; ``h0: (b, d, n)`` the state entering the
    block (from the left, or from the right when ``reverse``).
    """
    T, K = a.shape[0], a.shape[1]
    # 1) every chunk from a zero state, all chunks at once: T-1 fused multiply-adds
    xs, as_ = x.unbind(0), a.unbind(0)  # all views at once: the loops are host-bound at small sizes
    if reverse:
        for t in range(T - 2, -1, -1):
            xs[t].addcmul_(as_[t], xs[t + 1])
    else:
        for t in range(1, T):
            xs[t].addcmul_(as_[t], xs[t - 1])
    # 2) decay from the chunk edge to each position: exp(A * sum of deltas) in [0, 1], in a's buffer
    cum = dcs.flip(0).cumsum(0).flip(0) if reverse else dcs.cumsum(0)
    torch.mul(cum.unsqueeze(-1), A, out=a)
    a.exp_()
    # 3) carry the state across chunks (K-1 steps); carry[k] = state entering chunk k
    carry = torch.empty_like(x[0])
    edge = 0 if reverse else T - 1  # the position where a chunk hands its state on
    xe, ae, cs = xs[edge].unbind(0), a[edge].unbind(0), carry.unbind(0)
    cs[K - 1 if reverse else 0].copy_(h0)
    for k in (range(K - 2, -1, -1) if reverse else range(1, K)):
        src = k + 1 if reverse else k - 1  # the chunk the state comes from
        torch.addcmul(xe[src], ae[src], cs[src], out=cs[k])
    # 4) add the carried state, decayed to each position
    x.addcmul_(a, carry.unsqueeze(0))
    return x


def _block_bounds(b: int, d: int, n: int, length: int, block_len: Optional[int]) -> list[tuple[int, int]]:
    Lb = block_len if block_len else max(1, CHUNKED_BLOCK_ELEMENTS // max(1, b * d * n))
    Lb = max(1, min(Lb, length))
    return [(s, min(s + Lb, length)) for s in range(0, length, Lb)]


def _block_states(u, delta, A, B, s, e, h0, chunk_size):
    """Recompute the states h (T, K, b, d, n) of tokens [s, e) from the state h0 entering them."""
    T, K = _chunk_shape(e - s, chunk_size)
    dl = _to_chunks(delta[..., s:e], T, K)
    xl = _to_chunks(delta[..., s:e] * u[..., s:e], T, K)
    Bl = _to_chunks(B[..., s:e], T, K)
    a = torch.mul(dl.unsqueeze(-1), A).exp_()
    h = torch.mul(xl.unsqueeze(-1), Bl.unsqueeze(-2))
    _linear_scan_(a, h, dl, A, h0, reverse=False)
    return h, a, T, K, dl, xl, Bl


class _ChunkedScan(torch.autograd.Function):
    """y_t = <C_t, h_t> for the recurrence above (no D, z, softplus: plain autograd adds those)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk_size, block_len):
        b, d, length = u.shape
        n = A.shape[1]
        bounds = _block_bounds(b, d, n, length, block_len)
        y = u.new_empty(b, d, length)
        starts = u.new_zeros(len(bounds), b, d, n)  # state entering each block
        with torch.autocast(u.device.type, enabled=False):
            for i, (s, e) in enumerate(bounds):
                h, _, T, K, *_ = _block_states(u, delta, A, B, s, e, starts[i], chunk_size)
                Cl = _to_chunks(C[..., s:e], T, K)
                y[..., s:e] = _from_chunks(torch.matmul(h, Cl.unsqueeze(-1)).squeeze(-1), e - s)
                if i + 1 < len(bounds):
                    starts[i + 1].copy_(h[T - 1, K - 1])  # padded tail positions keep the last state
        ctx.save_for_backward(u, delta, A, B, C, starts)
        ctx.cfg = (chunk_size, bounds)
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, starts = ctx.saved_tensors
        chunk_size, bounds = ctx.cfg
        b, d, length = u.shape
        n = A.shape[1]
        dy = dy.to(u.dtype)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        dA = torch.zeros_like(A)
        # the reverse recurrence g_t = C_t dy_t + a_{t+1} g_{t+1} decays with the NEXT token's delta
        delta_next = F.pad(delta[..., 1:], (0, 1))
        g_next = u.new_zeros(b, d, n)  # dL/dh at the first token of the following block
        with torch.autocast(u.device.type, enabled=False):
            for i in range(len(bounds) - 1, -1, -1):
                s, e = bounds[i]
                h, a, T, K, dl, xl, Bl = _block_states(u, delta, A, B, s, e, starts[i], chunk_size)
                dyl = _to_chunks(dy[..., s:e], T, K)
                Cl = _to_chunks(C[..., s:e], T, K)
                ul = _to_chunks(u[..., s:e], T, K)
                dC[..., s:e] = _from_chunks(torch.matmul(dyl.unsqueeze(-2), h).squeeze(-2), e - s)
                # g: the same scan run backwards, reusing a's buffer for the decays
                dnl = _to_chunks(delta_next[..., s:e], T, K)
                torch.mul(dnl.unsqueeze(-1), A, out=a).exp_()
                g = torch.mul(dyl.unsqueeze(-1), Cl.unsqueeze(-2))
                _linear_scan_(a, g, dnl, A, g_next, reverse=True)
                del a
                g_next = g[0, 0].clone()
                gB = torch.matmul(g, Bl.unsqueeze(-1)).squeeze(-1)  # sum_n g B   (T, K, b, d)
                du[..., s:e] = _from_chunks(gB * dl, e - s)
                dB[..., s:e] = _from_chunks(torch.matmul(xl.unsqueeze(-2), g).squeeze(-2), e - s)
                # q = g * a_t * h_{t-1} = g * (h_t - delta_t B_t u_t): the gradient through the decay
                h.addcmul_(xl.unsqueeze(-1), Bl.unsqueeze(-2), value=-1).mul_(g)
                del g
                # batched over d, strided views (no copies): sum_n q A -> (d, m), sum_m q delta -> (d, n)
                q = h.view(T * K * b, d, n).transpose(0, 1)  # (d, m, n)
                qA = torch.matmul(q, A.unsqueeze(-1)).squeeze(-1).t().reshape(T, K, b, d)
                ddelta[..., s:e] = _from_chunks(gB * ul + qA, e - s)
                dA += torch.matmul(dl.reshape(T * K * b, d).t().unsqueeze(1), q).squeeze(1)
        return du, ddelta, dA, dB, dC, None, None


def _scan_chunked(u, delta, A, B, C, chunk_size=None, block_len=None):
    return _ChunkedScan.apply(u, delta, A, B, C, chunk_size, block_len)


def _scan_sequential(u, delta, A, B, C):
    """One token at a time with plain autograd: slow, obviously correct; the tests' reference."""
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        dt = delta[..., t].unsqueeze(-1)
        h = torch.exp(dt * A) * h + (dt * u[..., t].unsqueeze(-1)) * B[..., t].unsqueeze(1)
        ys.append((h * C[..., t].unsqueeze(1)).sum(-1))
    return torch.stack(ys, dim=-1)


# ----------------------------------------------------------------------------- public API
def available_backends() -> list[str]:
    """Backends usable in this process (``"mamba_ssm"`` only with the kernel and a CUDA device,
    ``"triton"`` only with CUDA and a Triton that passed the self-check)."""
    out = ["chunked", "sequential"]
    if torch.cuda.is_available() and triton_works("cuda"):
        out.insert(0, "triton")
    if torch.cuda.is_available() and _load_kernel():
        out.insert(0, "mamba_ssm")
    return out


_LOGGED: set = set()


def resolve_backend(name: str, device) -> str:
    """Concrete backend for ``name`` on ``device``: "auto" -> on CUDA "mamba_ssm" when importable,
    else "triton" when it works there, else "chunked"; on the CPU "chunked". Logs the first use of
    each (backend, device type)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {name!r}; expected one of {BACKENDS}")
    dev = torch.device(device)
    if name == "auto":
        if dev.type == "cuda" and _load_kernel():
            name = "mamba_ssm"
        elif dev.type == "cuda" and triton_works(dev):
            name = "triton"
        else:
            name = "chunked"
    elif name == "mamba_ssm" and not (dev.type == "cuda" and _load_kernel()):
        raise RuntimeError("selective-scan backend 'mamba_ssm' needs the compiled mamba-ssm kernel "
                           f"(module selective_scan_cuda) and a CUDA device (got {dev.type})")
    elif name == "triton":
        if not (dev.type == "cuda" or (dev.type == "cpu" and _triton_interpreted())):
            raise RuntimeError(f"selective-scan backend 'triton' needs a CUDA device (got {dev.type}; on the CPU "
                               "only under TRITON_INTERPRET=1, for tests); use 'chunked' or 'auto'")
        if _import_triton_scan() is None:
            raise RuntimeError(f"selective-scan backend 'triton' needs the triton package, which does not import "
                               f"here ({_TRITON_IMPORT_ERROR}); use 'chunked' or 'auto'")
    key = (name, dev.type)
    if key not in _LOGGED:
        _LOGGED.add(key)
        logger.info("stylemamba: selective scan backend '%s' on %s", name, dev.type)
    return name


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = True, backend: str = "auto", *,
                   chunk_size: Optional[int] = None, block_len: Optional[int] = None) -> Tensor:
    """Mamba-1 selective scan (see module docstring); returns y ``(b,d,l)`` in ``u``'s dtype.

    ``chunk_size`` / ``block_len`` tune the ``"chunked"`` backend (defaults: ``sqrt`` of the block,
    blocks of at most ``CHUNKED_BLOCK_ELEMENTS`` state elements). ``"mamba_ssm"`` and ``"triton"``
    compute in fp32 whatever the inputs' dtype; ``"chunked"`` and ``"sequential"`` in fp32, or fp64
    for fp64 inputs. Under "auto", a failing Triton call falls back to ``"chunked"`` (logged).
    """
    requested = backend
    backend = resolve_backend(backend, u.device)
    if backend == "mamba_ssm":
        return _scan_mamba_ssm(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if backend == "triton":
        try:
            return _eager(_scan_triton)(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # a shape or dtype the self-check did not compile, a driver problem, ...
            if requested != "auto":
                raise
            _triton_failed(u.device, exc)
            backend = resolve_backend("chunked", u.device)
    return _scan_pytorch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend,
                         chunk_size=chunk_size, block_len=block_len)


def _scan_pytorch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, *, chunk_size=None,
                  block_len=None) -> Tensor:
    """The plain-PyTorch scans ("chunked" or "sequential") with the shared pre/post-processing; no
    backend selection or logging (the Triton self-check compares against it silently)."""
    in_dtype = u.dtype
    cdt = torch.float64 if in_dtype == torch.float64 else torch.float32
    with torch.autocast(u.device.type, enabled=False):
        u_ = u.to(cdt)
        dt = delta.to(cdt)
        if delta_bias is not None:
            dt = dt + delta_bias.to(cdt).unsqueeze(-1)
        if delta_softplus:
            dt = F.softplus(dt)
        args = (u_.contiguous(), dt.contiguous(), A.to(cdt).contiguous(), B.to(cdt).contiguous(),
                C.to(cdt).contiguous())
        if backend == "chunked":
            y = _scan_chunked(*args, chunk_size=chunk_size, block_len=block_len)
        else:
            y = _scan_sequential(*args)
        if D is not None:
            y = y + D.to(cdt).unsqueeze(-1) * u_
        if z is not None:
            y = y * F.silu(z.to(cdt))
    return y.to(in_dtype)


# ----------------------------------------------------------------------------- the Mamba block
class MambaMixer(nn.Module):
    """Mamba-1 mixer (Gu & Dao 2023, Fig. 3): in-projection to x and gate z, causal depthwise conv,
    input-dependent (selective) delta/B/C, the scan, gating by silu(z), out-projection.

    ``(B, L, d_model) -> (B, L, d_model)``; causal along L. ``backend`` may be changed at any time.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank="auto", backend: str = "auto", dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_init_floor: float = 1e-4):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown selective-scan backend {backend!r}; expected one of {BACKENDS}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = backend
        E = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(E, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, E, bias=True)
        # dt init: weights keep the variance of dt_rank inputs; bias = softplus^-1 of a step size
        # drawn log-uniformly in [dt_min, dt_max], so the initial memory spans 10..1000 tokens.
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(E) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real init: A[:, j] = -(j + 1); stored as log so A stays negative under training
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(E, d_model, bias=False)

    def forward(self, hidden: Tensor) -> Tensor:
        L = hidden.shape[1]
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, E, L) each
        x = F.silu(self.conv1d(x)[..., :L])  # causal: keep the first L outputs of the padded conv
        dt, Bm, Cm = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # bias goes in as delta_bias (fp32)
        A = -torch.exp(self.A_log.float())
        y = selective_scan(x, dt, A, Bm.transpose(1, 2), Cm.transpose(1, 2), self.D.float(), z=z,
                           delta_bias=self.dt_proj.bias.float(), delta_softplus=True, backend=self.backend)
        return self.out_proj(y.transpose(1, 2))
