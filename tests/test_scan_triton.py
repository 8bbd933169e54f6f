"""The Triton selective scan (stylemamba/scan_triton.py) against the reference scans.

On the CPU (CI) the kernels run in Triton's interpreter, in ONE subprocess (``TRITON_INTERPRET=1``
must be set before triton is imported, and must not leak into the other tests): small shapes,
outputs and all gradients, fp32 tight and bf16 loose (tests/scan_triton_cases.py). On CUDA the
compiled kernels are checked at the fusion module's real shapes.
"""
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scan_triton_cases
from stylemamba import ssm
from stylemamba.ssm import selective_scan

HERE = Path(__file__).resolve().parent
HAS_TRITON = importlib.util.find_spec("triton") is not None
NAMES = scan_triton_cases.NAMES


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """Every case of scan_triton_cases.py, run once in a subprocess under the interpreter."""
    out = tmp_path_factory.mktemp("triton_interpret") / "cases.json"
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(HERE.parent),
                                                                              os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(HERE / "scan_triton_cases.py"), str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("case", list(scan_triton_cases.CASES))
def test_interpreted_triton_scan_matches_reference(interpreted, case):
    res = interpreted[case]
    assert res["exception"] is None, res["exception"]
    assert all(res["flags"].values()), res["flags"]
    for name, err in res["errors"].items():
        assert err < res["tol"], (name, err)  # fails on NaN / inf too
    if case not in ("no_grad_forward", "self_check"):
        assert "y" in res["errors"] and len(res["errors"]) > 1  # the output and the gradients were compared


# ------------------------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and triton")


def cuda_inputs(b, d, n, length, dtype=torch.float32, seed=0):
    t = scan_triton_cases.make_inputs(b, d, n, length, seed=seed, delta_scale=0.5)
    return {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v.float()).cuda() for k, v in t.items()}


def fwd_bwd(inputs, backend, used=NAMES, cot_dtype=torch.float32, **kw):
    """Output and gradients for a fixed cotangent (rounded to ``cot_dtype``: the same on both sides)."""
    leaves = {k: (v.clone().requires_grad_() if k in used else v) for k, v in inputs.items()}
    y = selective_scan(**leaves, delta_softplus=True, backend=backend, **kw)
    cot = torch.sin(torch.arange(y.numel(), device=y.device, dtype=torch.float32)).view_as(y)
    cot = cot.to(cot_dtype).to(y.dtype)
    grads = torch.autograd.grad(y, [leaves[k] for k in used], cot)
    return y.detach(), dict(zip(used, grads))


def errors(a, ref):
    (y, g), (y_ref, g_ref) = a, ref
    out = {"y": scan_triton_cases.rel_err(y, y_ref)}
    out.update({k: scan_triton_cases.rel_err(g[k], g_ref[k]) for k in g_ref})
    return out


@cuda
@pytest.mark.parametrize("b,length,tol", [(2, 4096, 1e-4), (8, 4096, 1e-4), (2, 16384, 2e-4)])
def test_cuda_triton_fp32_at_fusion_shapes(b, length, tol):
    """512 px (64x64 tokens), bidirectional = batch x2, 1 and 4 images; 1024 px: 16384 tokens.
    Reference: the chunked scan in fp64 (itself checked against the sequential one)."""
    assert ssm.triton_works("cuda")
    t = cuda_inputs(b, 512, 16, length, seed=length + b)
    errs = errors(fwd_bwd(t, "triton"), fwd_bwd({k: v.double() for k, v in t.items()}, "chunked"))
    print("fp32", b, length, errs)
    assert all(e < tol for e in errs.values()), errs


@cuda
def test_cuda_triton_bf16_at_fusion_shape():
    t = cuda_inputs(2, 512, 16, 4096, dtype=torch.bfloat16, seed=1)
    y, g = fwd_bwd(t, "triton", cot_dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16 and all(g[k].dtype == t[k].dtype for k in NAMES)
    errs = errors((y, g), fwd_bwd({k: v.double() for k, v in t.items()}, "chunked", cot_dtype=torch.bfloat16))
    print("bf16", errs)
    assert all(e < 2e-2 for e in errs.values()), errs


@cuda
@pytest.mark.parametrize("length", [1, 37, 1000, 4097])
def test_cuda_triton_lengths(length):
    t = cuda_inputs(2, 24, 16, length, seed=length)
    ref_backend = "sequential" if length <= 1000 else "chunked"
    errs = errors(fwd_bwd(t, "triton"), fwd_bwd({k: v.double() for k, v in t.items()}, ref_backend))
    assert all(e < 1e-4 for e in errs.values()), errs


@cuda
@pytest.mark.parametrize("tiles", [dict(fwd=(1, 256, 1, 1), bwd=(1, 256, 1, 1)), dict(fwd=(1, 128, 1, 2), bwd=(1, 128, 1, 1))])
def test_cuda_other_tiles(tiles):
    """Tiles other than the shipped ones (other chunks, one warp, state loop unrolled or not) are
    exact at the 512 px shape too: a user may pick them with STYLEMAMBA_SCAN_TILES."""
    from stylemamba import scan_triton as st

    t = cuda_inputs(2, 512, 16, 4096, seed=5)
    leaves = {k: v.clone().requires_grad_() for k, v in t.items()}
    y = st.selective_scan_triton(**leaves, fwd_config=st.KernelConfig(*tiles["fwd"]),
                                 bwd_config=st.KernelConfig(*tiles["bwd"]))
    cot = torch.sin(torch.arange(y.numel(), device=y.device, dtype=torch.float32)).view_as(y)
    g = dict(zip(NAMES, torch.autograd.grad(y, list(leaves.values()), cot)))
    errs = errors((y.detach(), g), fwd_bwd({k: v.double() for k, v in t.items()}, "chunked"))
    assert all(e < 1e-4 for e in errs.values()), errs


@cuda
def test_cuda_triton_no_grad_and_partial_grads():
    t = cuda_inputs(2, 512, 16, 4096, seed=3)
    with torch.no_grad():
        y0 = selective_scan(**t, backend="triton")
    y, g = fwd_bwd(t, "triton", used=("u", "C"))
    assert scan_triton_cases.rel_err(y0, y) < 1e-5
    _, g_all = fwd_bwd(t, "triton")
    assert all(scan_triton_cases.rel_err(g[k], g_all[k]) < 1e-5 for k in g)


@cuda
def test_cuda_auto_picks_triton_without_mamba_ssm(monkeypatch, caplog):
    monkeypatch.setattr(ssm, "_load_kernel", lambda: False)
    monkeypatch.setattr(ssm, "_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="stylemamba"):
        assert ssm.resolve_backend("auto", "cuda") == "triton"
        m = ssm.MambaMixer(32, d_state=16).cuda()
        x = torch.randn(2, 300, 32, device="cuda")
        y = m(x)
    assert any("'triton' on cuda" in r.getMessage() for r in caplog.records)
    m.backend = "chunked"
    assert scan_triton_cases.rel_err(y, m(x)) < 1e-4


@cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and "mamba_ssm" in ssm.available_backends()),
                    reason="needs the compiled mamba-ssm kernel")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 2e-2)])
def test_cuda_triton_matches_mamba_ssm(dtype, tol):
    t = cuda_inputs(2, 512, 16, 4096, dtype=dtype, seed=4)
    errs = errors(fwd_bwd(t, "triton"), fwd_bwd(t, "mamba_ssm"))
    print("vs mamba_ssm", dtype, errs)
    assert all(e < tol for e in errs.values()), errs
