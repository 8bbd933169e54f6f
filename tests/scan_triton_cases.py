"""The Triton selective scan against the sequential reference, run by Triton's CPU interpreter.

Not a test module: ``tests/test_scan_triton.py`` runs it in a subprocess, because
``TRITON_INTERPRET=1`` must be set before triton is first imported and must not leak into the
other tests (importing this module imports neither triton nor the kernels; ``main`` does). ``python tests/scan_triton_cases.py OUT.json [CASE ...]`` writes, per case, the
relative errors (max |out - ref| / max |ref|) of the output and of every gradient, and the
tolerance they must meet, or the exception the case raised.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stylemamba import ssm  # noqa: E402  (does not import triton)

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
SMALL = dict(block_d=2, chunk=16, num_warps=1)  # several chunks even at tiny lengths
SMALL_U2 = dict(block_d=2, chunk=16, num_warps=1, unroll=2)  # the state loop unrolled by 2


def selective_scan_triton(*args, fwd_config=None, bwd_config=None, infer_config=None, **kw):
    """The kernels' entry point, imported late (triton must not load before main() runs); configs as dicts."""
    from stylemamba.scan_triton import KernelConfig, selective_scan_triton as scan

    def cfg(c):
        return None if c is None else KernelConfig(**c)

    return scan(*args, fwd_config=cfg(fwd_config), bwd_config=cfg(bwd_config), infer_config=cfg(infer_config), **kw)


def make_inputs(b, d, n, length, seed=0, delta_shift=0.0, delta_scale=1.0, a_scale=1.0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return dict(u=r(b, d, length), delta=r(b, d, length) * delta_scale + delta_shift,
                A=-torch.exp(r(d, n) * 0.5) * a_scale, B=r(b, n, length), C=r(b, n, length), D=r(d),
                z=r(b, d, length), delta_bias=r(d) * 0.5)


def rel_err(a, ref):
    """max |a - ref| / max |ref|, the denominator at least 1e-3 (as in test_ssm.py): a gradient that is
    exactly 0 (dA at a single token) is compared in absolute terms, not against rounding noise."""
    a, ref = a.double(), ref.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-3))


def grads_of(fn, inputs, used, cot_seed=1, cot_dtype=torch.float32):
    """Output and gradients for a fixed cotangent (rounded to ``cot_dtype``, the same for both sides)."""
    leaves = {k: (v.clone().requires_grad_() if k in used else v) for k, v in inputs.items()}
    y = fn(leaves)
    cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(cot_seed), dtype=torch.float64)
    grads = torch.autograd.grad(y, [leaves[k] for k in used], cot.to(cot_dtype).to(y.dtype))
    return y.detach(), dict(zip(used, grads))


def compare(inputs, *, io_dtype=torch.float32, with_optional=True, softplus=True, cfg=SMALL, used=NAMES):
    """Triton (inputs rounded to io_dtype; A, D, bias fp32) against the fp64 sequential reference
    of the SAME rounded values: only the kernels' fp32 arithmetic and output rounding remain."""
    rounded = {k: (v.to(io_dtype) if k in ("u", "delta", "B", "C", "z") else v.float()) for k, v in inputs.items()}
    if not with_optional:
        rounded = {k: v for k, v in rounded.items() if k not in ("D", "z", "delta_bias")}
        used = tuple(k for k in used if k in rounded)
    ref_inputs = {k: v.double() for k, v in rounded.items()}

    def tri(t):
        return selective_scan_triton(**t, delta_softplus=softplus, fwd_config=cfg, bwd_config=cfg)

    def seq(t):
        return ssm.selective_scan(**t, delta_softplus=softplus, backend="sequential")

    y, g = grads_of(tri, rounded, used, cot_dtype=io_dtype)
    y_ref, g_ref = grads_of(seq, ref_inputs, used, cot_dtype=io_dtype)
    errs = {"y": rel_err(y, y_ref)}
    errs.update({k: rel_err(g[k], g_ref[k]) for k in used})
    dtypes_ok = y.dtype == rounded["u"].dtype and all(g[k].dtype == rounded[k].dtype for k in used)
    return errs, {"dtypes_ok": dtypes_ok}


def case_lengths(length, cfg=SMALL, b=1, d=2):
    return lambda: compare(make_inputs(b, d, 4, length, seed=length), cfg=cfg)


def case_state16_channels_not_multiple():
    # 5 channels in blocks of 4, 16 states (3 passes of the state loop unrolled by 6), chunk 32
    return compare(make_inputs(1, 5, 16, 50, seed=3), cfg=dict(block_d=4, chunk=32, num_warps=2, unroll=6))


def case_state3_no_optional_no_softplus():
    t = make_inputs(2, 3, 3, 45, seed=4)
    t["delta"] = torch.nn.functional.softplus(t["delta"])  # positive steps without the softplus
    return compare(t, with_optional=False, softplus=False)


def case_long_default_config():
    # a few thousand tokens through the shipped tiles (several chunks, the last one partial)
    return compare(make_inputs(1, 2, 3, 2000, seed=5, delta_scale=2.0), cfg=None)


def case_strong_decay(cfg):
    # decay e^-100 per step next to tiny steps: finite, and exact against the reference
    t = make_inputs(1, 2, 4, 160, seed=7, delta_scale=6.0, delta_shift=2.0, a_scale=8.0)
    return lambda: compare(t, cfg=cfg)


def case_bf16():
    return compare(make_inputs(2, 2, 4, 60, seed=8), io_dtype=torch.bfloat16, cfg=SMALL_U2)


def case_only_some_grads():
    return compare(make_inputs(1, 3, 4, 40, seed=9), used=("u", "B"))


def case_strided_like_mixer():
    """The strides the MambaMixer passes (channels fastest for u, z, delta; a slice for B, C)."""
    t = {k: v.float() for k, v in make_inputs(2, 6, 4, 33, seed=10).items()}
    b, d, n, length = 2, 6, 4, 33
    strided = dict(t)
    for k in ("u", "z", "delta"):
        strided[k] = t[k].transpose(1, 2).contiguous().transpose(1, 2)  # stride (l*d, 1, d)
    bc = torch.cat([t["B"], t["C"]], dim=1).transpose(1, 2).contiguous().transpose(1, 2)
    strided["B"], strided["C"] = bc[:, :n], bc[:, n:]
    assert not strided["u"].is_contiguous() and strided["B"].stride(-1) != 1
    y, g = grads_of(lambda x: selective_scan_triton(**x, fwd_config=SMALL, bwd_config=SMALL), strided, NAMES)
    y_ref, g_ref = grads_of(lambda x: ssm.selective_scan(**x, backend="sequential"),
                            {k: v.double() for k, v in t.items()}, NAMES)
    errs = {"y": rel_err(y, y_ref)}
    errs.update({k: rel_err(g[k], g_ref[k]) for k in NAMES})
    return errs, {"shape_ok": y.shape == (b, d, length)}


def case_no_grad_forward():
    """Without gradients the forward runs its own tile and stores no states: same output."""
    t = {k: v.float() for k, v in make_inputs(2, 3, 4, 70, seed=11).items()}
    with torch.no_grad():
        y0 = selective_scan_triton(**t, infer_config=dict(block_d=1, chunk=32, num_warps=1, unroll=3))
    y_ref = ssm.selective_scan(**{k: v.double() for k, v in t.items()}, backend="sequential")
    return {"y": rel_err(y0, y_ref)}, {}


def case_mixer():
    """A MambaMixer with backend 'triton' against 'sequential' in fp64: output and every parameter's gradient
    (tiles from the environment variable, as a user would override them: one program of 8 channels)."""
    os.environ["STYLEMAMBA_SCAN_TILES"] = json.dumps({"fwd": [8, 32, 1, 2], "bwd": [8, 32, 1, 1]})
    torch.manual_seed(0)
    m = ssm.MambaMixer(8, d_state=4, d_conv=3, expand=1)  # 8 channels: two programs of the shipped tile
    x = torch.randn(1, 23, 8)
    out = {}
    for backend, dtype in (("triton", torch.float32), ("sequential", torch.float64)):
        mm = ssm.MambaMixer(8, d_state=4, d_conv=3, expand=1, backend=backend).to(dtype)
        mm.load_state_dict(m.state_dict())
        y = mm(x.to(dtype))
        (y * torch.cos(y)).sum().backward()
        out[backend] = (y.detach(), {k: p.grad.clone() for k, p in mm.named_parameters()})
    del os.environ["STYLEMAMBA_SCAN_TILES"]
    errs = {"y": rel_err(out["triton"][0], out["sequential"][0])}
    errs.update({k: rel_err(v, out["sequential"][1][k]) for k, v in out["triton"][1].items()})
    nonzero = all(v.abs().max() > 0 for v in out["sequential"][1].values())
    return errs, {"grads_nonzero": nonzero}


def case_self_check():
    """The self-check that "auto" runs before picking Triton passes (here on the interpreter, with
    small tiles so that it stays quick: its length is the chunk + 44 tokens)."""
    os.environ["STYLEMAMBA_SCAN_TILES"] = json.dumps({"fwd": [4, 16, 1, 4], "bwd": [4, 16, 1, 2]})
    ok = ssm.triton_works("cpu")
    del os.environ["STYLEMAMBA_SCAN_TILES"]
    return {}, {"triton_works": ok, "resolve_triton": ssm.resolve_backend("triton", "cpu") == "triton"}


CASES = {
    "fp32_len1": (case_lengths(1), 1e-4), "fp32_len37_batch2_ch3": (case_lengths(37, b=2, d=3), 1e-4),
    "fp32_len64": (case_lengths(64), 1e-4), "fp32_len130": (case_lengths(130), 1e-4),
    "fp32_len37_unroll2": (case_lengths(37, SMALL_U2), 1e-4),
    "fp32_state16_channels_not_multiple": (case_state16_channels_not_multiple, 1e-4),
    "fp32_state3_no_optional_no_softplus": (case_state3_no_optional_no_softplus, 1e-4),
    "fp32_len2000_default_config": (case_long_default_config, 1e-4),
    "fp32_strong_decay": (case_strong_decay(SMALL), 1e-4),
    "fp32_strong_decay_unroll2": (case_strong_decay(SMALL_U2), 1e-4),
    "bf16": (case_bf16, 2e-2),
    "only_some_grads": (case_only_some_grads, 1e-4),
    "strided_like_mixer": (case_strided_like_mixer, 1e-4),
    "no_grad_forward": (case_no_grad_forward, 1e-5),
    "mixer_vs_sequential": (case_mixer, 1e-4),
    "self_check": (case_self_check, 0.0),
}


def main(argv: list[str]) -> int:
    if "triton" in sys.modules or os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run me in a fresh process with TRITON_INTERPRET=1 (set before triton is imported)")
    torch.set_num_threads(1)
    out_path, names = Path(argv[0]), argv[1:] or list(CASES)
    results = {}
    for name in names:
        fn, tol = CASES[name]
        t0 = time.perf_counter()
        try:
            errs, flags = fn()
            results[name] = {"errors": errs, "tol": tol, "flags": flags, "exception": None}
        except Exception:
            results[name] = {"errors": {}, "tol": tol, "flags": {}, "exception": traceback.format_exc()}
        results[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(name, json.dumps(results[name]), flush=True)
    out_path.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.exit(main(sys.argv[1:]))
