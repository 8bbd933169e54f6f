"""The selective scan backends agree with the sequential reference, outputs AND gradients."""
import logging
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from stylemamba import ssm
from stylemamba.ssm import MambaMixer, available_backends, resolve_backend, selective_scan

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(b, d, n, length, dtype, device="cpu", seed=0, delta_shift=0.0, delta_scale=1.0, a_scale=1.0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    t = dict(u=r(b, d, length), delta=r(b, d, length) * delta_scale + delta_shift,
             A=-torch.exp(r(d, n) * 0.5) * a_scale, B=r(b, n, length), C=r(b, n, length), D=r(d),
             z=r(b, d, length), delta_bias=r(d) * 0.5)
    return {k: v.to(device=device, dtype=dtype).requires_grad_() for k, v in t.items()}


def run(inputs, backend, with_dz=True, **kw):
    """Output and gradients of every input, for a fixed non-trivial output cotangent."""
    args = dict(inputs)
    if not with_dz:
        args["D"] = args["z"] = args["delta_bias"] = None
    y = selective_scan(**args, delta_softplus=True, backend=backend, **kw)
    cot = torch.sin(torch.arange(y.numel(), dtype=torch.float64, device=y.device)).view_as(y).to(y.dtype)
    used = [k for k in NAMES if args[k] is not None]
    grads = torch.autograd.grad(y, [args[k] for k in used], cot)
    return y, dict(zip(used, grads))


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-3)).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
@pytest.mark.parametrize("length", [1, 2, 37, 130])
@pytest.mark.parametrize("chunk_size,block_len", [(None, None), (8, None), (5, 32)])
def test_chunked_matches_sequential(dtype, tol, length, chunk_size, block_len):
    inputs = make_inputs(2, 3, 4, length, dtype, seed=length)
    y_ref, g_ref = run(inputs, "sequential")
    y, g = run(inputs, "chunked", chunk_size=chunk_size, block_len=block_len)
    assert y.dtype == dtype and y.shape == (2, 3, length)
    assert rel_err(y, y_ref) < tol
    assert set(g) == set(NAMES)
    for k in NAMES:
        assert rel_err(g[k], g_ref[k]) < tol, k


def test_chunked_without_optional_inputs():
    inputs = make_inputs(2, 5, 3, 50, torch.float64, seed=3)
    y_ref, g_ref = run(inputs, "sequential", with_dz=False)
    y, g = run(inputs, "chunked", with_dz=False, chunk_size=7, block_len=20)
    assert rel_err(y, y_ref) < 1e-10
    for k in g_ref:
        assert rel_err(g[k], g_ref[k]) < 1e-10, k


def test_chunked_gradcheck():
    """The hand-written backward of the chunked scan against finite differences (fp64)."""
    t = make_inputs(1, 2, 3, 11, torch.float64, seed=5)
    args = (t["u"], F.softplus(t["delta"]).detach().requires_grad_(), t["A"], t["B"], t["C"])
    assert torch.autograd.gradcheck(lambda *a: ssm._scan_chunked(*a, chunk_size=3, block_len=5), args)


def test_long_sequence_strong_decay_is_finite_and_exact():
    """Large delta (decay e^-100 per step) next to tiny delta (memory ~ the whole sequence)."""
    length = 2000
    t = make_inputs(2, 4, 8, length, torch.float32, seed=7, delta_scale=6.0, delta_shift=2.0, a_scale=8.0)
    y, g = run(t, "chunked")
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(v).all() for v in g.values())
    # the fp64 chunked scan (equal to the sequential one, tested above) as the reference
    t64 = {k: v.detach().double().requires_grad_() for k, v in t.items()}
    y64, g64 = run(t64, "chunked", chunk_size=64)
    assert rel_err(y, y64) < 1e-4
    for k in NAMES:
        assert rel_err(g[k], g64[k]) < 1e-4, k
    # and the strong decay really is strong: the state forgets (delta large), so no overflow risk
    assert (F.softplus(t["delta"] + t["delta_bias"][:, None]).max() * (-t["A"]).max()).item() > 50


def test_long_sequence_matches_sequential_fp32():
    t = make_inputs(1, 3, 4, 400, torch.float32, seed=11, delta_scale=2.0)
    y_ref, g_ref = run({k: v.detach().double().requires_grad_() for k, v in t.items()}, "sequential")
    y, g = run(t, "chunked")
    assert rel_err(y, y_ref) < 1e-4
    for k in NAMES:
        assert rel_err(g[k], g_ref[k]) < 1e-4, k


def test_bf16_inputs_are_scanned_in_fp32():
    t = make_inputs(2, 4, 4, 64, torch.float32, seed=2)
    y32 = selective_scan(**t, backend="chunked")
    tb = {k: v.detach().bfloat16() for k, v in t.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = selective_scan(**tb, backend="chunked")
    assert yb.dtype == torch.bfloat16
    # only the bf16 rounding of the inputs and of the output remains
    ref = selective_scan(**{k: v.float() for k, v in tb.items()}, backend="sequential")
    assert rel_err(yb.float(), ref) < 1e-2
    assert rel_err(yb.float(), y32) < 5e-2


def test_no_grad_and_non_grad_inputs():
    t = {k: v.detach() for k, v in make_inputs(2, 3, 4, 20, torch.float32).items()}
    with torch.no_grad():
        y = selective_scan(**t, backend="chunked")
    assert rel_err(y, selective_scan(**t, backend="sequential")) < 1e-5
    # gradient w.r.t. only some inputs
    u = t["u"].clone().requires_grad_()
    t2 = dict(t, u=u)
    (gu,) = torch.autograd.grad(selective_scan(**t2, backend="chunked").sum(), [u])
    (gu_ref,) = torch.autograd.grad(selective_scan(**t2, backend="sequential").sum(), [u])
    assert rel_err(gu, gu_ref) < 1e-4


def test_backend_resolution():
    assert resolve_backend("auto", "cpu") == "chunked"
    assert resolve_backend("chunked", torch.device("cpu")) == "chunked"
    assert resolve_backend("sequential", "cpu") == "sequential"
    assert {"chunked", "sequential"} <= set(available_backends())
    with pytest.raises(ValueError):
        resolve_backend("fast", "cpu")
    with pytest.raises(RuntimeError):
        resolve_backend("mamba_ssm", "cpu")
    with pytest.raises(ValueError):
        MambaMixer(8, backend="nope")
    if not ssm._triton_interpreted():
        with pytest.raises(RuntimeError, match="CUDA"):
            resolve_backend("triton", "cpu")
    assert "triton" in ssm.BACKENDS


@pytest.mark.parametrize("kernel,triton_ok,expected", [
    (True, True, "mamba_ssm"), (False, True, "triton"), (False, False, "chunked")])
def test_auto_backend_order_on_cuda(monkeypatch, kernel, triton_ok, expected):
    """On CUDA: mamba-ssm if importable, else Triton if it passed its self-check, else chunked."""
    monkeypatch.setattr(ssm, "_load_kernel", lambda: kernel)
    monkeypatch.setattr(ssm, "triton_works", lambda dev: triton_ok)
    assert resolve_backend("auto", torch.device("cuda")) == expected
    assert resolve_backend("auto", "cpu") == "chunked"  # the CPU always scans in PyTorch


def test_triton_import_failure_falls_back(monkeypatch, caplog):
    """No triton (Windows ComfyUI portable): logged once, never picked, a clear error when asked for."""
    import stylemamba

    monkeypatch.setitem(sys.modules, "triton", None)  # ``import triton`` now raises ImportError
    monkeypatch.delitem(sys.modules, "stylemamba.scan_triton", raising=False)
    monkeypatch.delattr(stylemamba, "scan_triton", raising=False)  # else ``from . import`` finds it there
    monkeypatch.setattr(ssm, "_TRITON_SCAN", None)
    monkeypatch.setattr(ssm, "_TRITON_IMPORT_ERROR", None)
    monkeypatch.setattr(ssm, "_TRITON_OK", {})
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # so that the CPU would otherwise qualify
    with caplog.at_level(logging.INFO, logger="stylemamba"):
        assert ssm._import_triton_scan() is None
        assert ssm._import_triton_scan() is None
        assert not ssm.triton_works("cpu")
    assert "ImportError" in ssm._TRITON_IMPORT_ERROR or "ModuleNotFoundError" in ssm._TRITON_IMPORT_ERROR
    assert sum("triton is not importable" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(RuntimeError, match="triton package"):
        resolve_backend("triton", "cpu")


def test_triton_failure_at_run_time_falls_back_to_chunked(monkeypatch, caplog):
    """A Triton call that raises under "auto" is logged, answered by the chunked scan, and not retried."""
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("PTX assembly failed")

    monkeypatch.setattr(ssm, "_scan_triton", broken)
    monkeypatch.setattr(ssm, "_TRITON_OK", {})
    real_resolve = ssm.resolve_backend

    def resolve_as_on_cuda(name, dev):  # "auto" picks Triton until it failed (as on a CUDA device)
        if name == "triton" or (name == "auto" and ssm._TRITON_OK.get(str(dev), True)):
            return "triton"
        return real_resolve("chunked" if name == "auto" else name, dev)

    monkeypatch.setattr(ssm, "resolve_backend", resolve_as_on_cuda)
    t = {k: v.detach() for k, v in make_inputs(2, 3, 4, 20, torch.float32).items()}
    with caplog.at_level(logging.WARNING, logger="stylemamba"):
        y = selective_scan(**t, backend="auto")
        y2 = selective_scan(**t, backend="auto")
    assert rel_err(y, selective_scan(**t, backend="sequential")) < 1e-5
    assert torch.equal(y, y2) and len(calls) == 1
    assert ssm._TRITON_OK == {"cpu": False}
    assert any("PTX assembly failed" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="PTX"):  # asked for by name: the error is not hidden
        selective_scan(**t, backend="triton")


def test_backend_logged_once(caplog):
    ssm._LOGGED.discard(("sequential", "cpu"))
    with caplog.at_level(logging.INFO, logger="stylemamba"):
        resolve_backend("sequential", "cpu")
        resolve_backend("sequential", "cpu")
    assert sum("sequential" in r.getMessage() for r in caplog.records) == 1


def test_mamba_mixer_shapes_init_and_backends_agree():
    torch.manual_seed(0)
    m = MambaMixer(16, d_state=4, d_conv=3, expand=2).double()
    assert m.d_inner == 32 and m.dt_rank == 1
    assert m.x_proj.out_features == 1 + 2 * 4 and m.conv1d.groups == 32
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001
    assert torch.allclose(-torch.exp(m.A_log[5]), -torch.arange(1, 5, dtype=torch.float64))
    assert torch.equal(m.D, torch.ones(32, dtype=torch.float64))
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    outs, grads = {}, {}
    for backend in ("sequential", "chunked"):
        m.backend = backend
        m.zero_grad()
        y = m(x)
        assert y.shape == (2, 23, 16)
        (y * torch.cos(y)).sum().backward()
        outs[backend] = y.detach()
        grads[backend] = {k: p.grad.clone() for k, p in m.named_parameters()}
    assert rel_err(outs["chunked"], outs["sequential"]) < 1e-10
    for k in grads["sequential"]:
        assert grads["sequential"][k].abs().max() > 0, k
        assert rel_err(grads["chunked"][k], grads["sequential"][k]) < 1e-9, k


def test_mamba_mixer_is_causal():
    torch.manual_seed(1)
    m = MambaMixer(8, d_state=4, backend="chunked")
    x = torch.randn(1, 30, 8)
    x2 = x.clone()
    x2[:, 20:] += 1.0
    y, y2 = m(x), m(x2)
    assert torch.allclose(y[:, :20], y2[:, :20], atol=1e-6)
    assert not torch.allclose(y[:, 20:], y2[:, 20:], atol=1e-3)


@pytest.mark.skipif(not (torch.cuda.is_available() and "mamba_ssm" in available_backends()),
                    reason="needs CUDA and the compiled mamba-ssm kernel (selective_scan_cuda)")
@pytest.mark.parametrize("with_dz", [True, False])
def test_mamba_ssm_kernel_matches_reference(with_dz):
    assert resolve_backend("auto", "cuda") == "mamba_ssm"
    t = make_inputs(2, 8, 16, 300, torch.float32, device="cuda", seed=13)
    y_ref, g_ref = run(t, "sequential", with_dz=with_dz)
    y, g = run(t, "mamba_ssm", with_dz=with_dz)
    assert y.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-3
    assert set(g) == set(g_ref)
    for k in g_ref:
        assert rel_err(g[k], g_ref[k]) < 1e-3, k
    y_c, g_c = run(t, "chunked", with_dz=with_dz)
    assert rel_err(y_c, y_ref) < 1e-4
    for k in g_ref:
        assert rel_err(g_c[k], g_ref[k]) < 1e-4, k
    # bf16 under autocast: the kernel still accumulates in fp32
    tb = {k: v.detach().bfloat16() for k, v in t.items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        yb = selective_scan(**tb, backend="mamba_ssm")
        yc = selective_scan(**tb, backend="chunked")
    assert yb.dtype == torch.bfloat16 and math.isfinite(yb.float().abs().max().item())
    assert rel_err(yb.float(), yc.float()) < 2e-2
