"""The GPU-wide GroupNorm (stylemamba.group_norm) and the decoder's attention as matrix products
(stylemamba.decoder_attention): the same values and gradients as the PyTorch / diffusers forms they replace."""
import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stylemamba import precision
from stylemamba.decoder_attention import MatmulAttention, attention_by_matmul_
from stylemamba.group_norm import group_norm, pays_here


def _grads(fn, x, w, b, gy):
    x, w, b = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    y = fn(x, w, b)
    y.backward(gy.to(y.dtype))
    return y.detach(), x.grad, w.grad, b.grad


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_group_norm_matches_pytorch_values_and_gradients(channels_last, batch):
    """fp64: equal to rounding (measured <= 3e-15); an offset mean (3) and std 2 test the E[x^2] - E[x]^2 form."""
    torch.manual_seed(0)
    x = torch.randn(batch, 64, 12, 10, dtype=torch.float64) * 2 + 3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b, gy = torch.randn(64, dtype=torch.float64), torch.randn(64, dtype=torch.float64), torch.randn_like(x)
    ref = _grads(lambda x, w, b: F.group_norm(x, 8, w, b, 1e-5), x, w, b, gy)
    got = _grads(lambda x, w, b: group_norm(x, 8, w, b, 1e-5), x, w, b, gy)
    for name, a, r in zip(("y", "dx", "dw", "db"), got, ref):
        assert _rel(a, r) < 1e-12, (name, _rel(a, r))
    assert got[0].is_contiguous(memory_format=torch.channels_last) == channels_last  # the layout is kept
    assert torch.autograd.gradcheck(lambda x, w, b: group_norm(x, 4, w, b), (
        x[:1, :8, :3, :3].detach().clone().requires_grad_(True), w[:8].detach().clone().requires_grad_(True),
        b[:8].detach().clone().requires_grad_(True)))


def test_group_norm_in_bf16_is_as_close_to_exact_as_pytorchs():
    """bf16 input, fp32 weight and bias (as AutocastGroupNorm passes them): against the fp64 result of the same
    bf16 input, the error is bf16 output rounding, as PyTorch's own bf16 GroupNorm's (measured 1.6e-3 vs
    similar); gradients likewise."""
    torch.manual_seed(1)
    x = (torch.randn(2, 64, 16, 16) * 2 + 3).bfloat16()
    w, b = torch.randn(64), torch.randn(64)
    gy = torch.randn(2, 64, 16, 16).bfloat16()
    exact = _grads(lambda x, w, b: F.group_norm(x.double(), 8, w.double(), b.double()), x, w, b, gy)
    ours = _grads(lambda x, w, b: group_norm(x, 8, w, b), x, w, b, gy)
    torchs = _grads(lambda x, w, b: F.group_norm(x, 8, w.bfloat16(), b.bfloat16()), x, w, b, gy)
    assert ours[0].dtype == torch.bfloat16 and ours[2].dtype == torch.float32
    for name, a, t, e in zip(("y", "dx", "dw", "db"), ours, torchs, exact):
        assert _rel(a, e) < 1e-2 and _rel(a, e) <= 2 * _rel(t, e) + 1e-3, (name, _rel(a, e), _rel(t, e))


def test_group_norm_refuses_channels_that_do_not_divide():
    with pytest.raises(ValueError, match="divisible by 8 groups"):
        group_norm(torch.randn(1, 12, 4, 4), 8)


def test_autocast_groupnorm_uses_it_only_for_large_groups_on_cuda():
    assert not pays_here(torch.empty(1, 128, 512, 512, device="meta"), 32)  # not CUDA
    norm = precision.AutocastGroupNorm(4, 16)
    x = torch.randn(2, 16, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    torch.testing.assert_close(out.float(), F.group_norm(x, 4, norm.weight, norm.bias), rtol=3e-2, atol=3e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])  # the Triton kernels / the operator form
def test_group_norm_on_gpu_matches_pytorch_at_decoder_size(layout):
    """The decoder's largest norm (128 channels at 512 px, 32 groups), bf16 as in training: within bf16 rounding
    of PyTorch's fp32 result, and taken by AutocastGroupNorm."""
    torch.manual_seed(0)
    x = (torch.randn(1, 128, 512, 512, device="cuda") * 2 + 1).bfloat16()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    assert pays_here(x, 32)
    w, b = torch.randn(128, device="cuda"), torch.randn(128, device="cuda")
    gy = torch.randn_like(x)
    exact = _grads(lambda x, w, b: F.group_norm(x.float(), 32, w, b), x, w, b, gy)
    ours = _grads(lambda x, w, b: group_norm(x, 32, w, b), x, w, b, gy)
    for name, a, e in zip(("y", "dx", "dw", "db"), ours, exact):
        assert _rel(a, e) < 1e-2, (name, _rel(a, e))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_channels_last_norm_takes_the_kernels_and_keeps_its_layout_on_gpu(monkeypatch):
    """A large channels_last norm goes through the channels_last kernels (PyTorch's CUDA kernel copies the input to
    NCHW and returns NCHW, so the next convolution converts it back): its output stays channels_last, with
    PyTorch's values and gradients under autocast."""
    from stylemamba import group_norm_triton
    from stylemamba.group_norm import _on_kernels

    assert _on_kernels(torch.empty(1, 8, 4, 4, device="cuda"))  # the self-check (it calls the kernels) runs now
    calls = []
    for name in ("forward_channels_last", "backward_channels_last"):
        real = getattr(group_norm_triton, name)
        monkeypatch.setattr(group_norm_triton, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    torch.manual_seed(0)
    norm = precision.AutocastGroupNorm(32, 128).cuda()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = (torch.randn(1, 128, 256, 256, device="cuda") * 2 + 1).contiguous(memory_format=torch.channels_last)
    assert pays_here(x, 32)
    x.requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = norm(x)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    gy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, gy)
    assert calls == ["forward_channels_last", "backward_channels_last"]
    xr = x.detach().float().requires_grad_(True)
    ref = F.group_norm(xr, 32, norm.weight.detach(), norm.bias.detach())
    (dxr,) = torch.autograd.grad(ref, xr, gy.float())
    assert _rel(y, ref) < 1e-2 and _rel(dx, dxr) < 1e-2


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_match_pytorch_under_the_interpreter():
    """The CUDA kernels' arithmetic, run by Triton's CPU interpreter on small shapes spanning several chunks and
    tiles: fp32 against fp64 within 1e-5 of the largest value (measured <= 3e-7); and their self-check."""
    here = Path(__file__).resolve().parent
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(here / "group_norm_triton_cases.py")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # the self-check passes working kernels and names the failure of broken ones (then training uses operators)
    assert report["self_check"]["working"] is None
    assert report["self_check"]["broken"] == "RuntimeError: no C compiler"
    results = report["cases"]
    assert len(results) == 6 and sum(len(r) for r in results.values()) == 20  # NCHW and channels_last
    for case, errors in results.items():
        for name, err in errors.items():
            assert err < 1e-5, (case, name, err)


def _attention_block():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(32, heads=1, dim_head=32, rescale_output_factor=1.0, eps=1e-6, norm_num_groups=8,
                     spatial_norm_dim=None, residual_connection=True, bias=True, upcast_softmax=True,
                     _from_deprecated_attn_block=True).double()


def _same_values_and_gradients(block, ours):
    """fp64: the block and its copy with matmul attention give the same output and input / weight gradients."""
    x = torch.randn(2, 32, 6, 5, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = block(xa), ours(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-10, atol=1e-10)
    gy = torch.randn_like(ya)
    ya.backward(gy)
    yb.backward(gy)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-10, atol=1e-10)
    for (name, pa), pb in zip(block.named_parameters(), ours.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-9, atol=1e-10, msg=name)


class ComfyAttnBlock(torch.nn.Module):
    """ComfyUI's VAE AttnBlock as ComfyUI 0.3.64 writes it (comfy/ldm/modules/diffusionmodules/model.py; the tests
    run without ComfyUI): GroupNorm, 1x1 convs q, k, v, ``optimized_attention`` = its pytorch_attention (one head
    over the pixels, scaled_dot_product_attention), proj_out, residual."""

    def __init__(self, c):
        super().__init__()
        self.norm = torch.nn.GroupNorm(8, c, eps=1e-6)
        self.q, self.k, self.v, self.proj_out = (torch.nn.Conv2d(c, c, 1) for _ in range(4))
        self.optimized_attention = self.pytorch_attention

    @staticmethod
    def pytorch_attention(q, k, v):
        shape = q.shape
        b, c = shape[:2]
        q, k, v = (t.view(b, 1, c, -1).transpose(2, 3).contiguous() for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
        return out.transpose(2, 3).reshape(shape)

    def forward(self, x):
        h = self.norm(x)
        return x + self.proj_out(self.optimized_attention(self.q(h), self.k(h), self.v(h)))


def test_matmul_attention_takes_over_comfyuis_vae_attention_with_the_same_values_and_gradients():
    torch.manual_seed(0)
    block = ComfyAttnBlock(32).double()
    ours = copy.deepcopy(block)
    assert attention_by_matmul_(torch.nn.Sequential(ours)) == 1 and attention_by_matmul_(ours) == 0
    _same_values_and_gradients(block, ours)
    # a module that only looks partly like one is left alone
    odd = torch.nn.Module()
    odd.optimized_attention = ComfyAttnBlock.pytorch_attention
    assert attention_by_matmul_(odd) == 0


def test_matmul_attention_equals_the_sdpa_processor_it_replaces():
    block = _attention_block()
    ours = copy.deepcopy(block)
    assert attention_by_matmul_(ours) == 1 and attention_by_matmul_(ours) == 0  # once is enough
    assert isinstance(ours.processor, MatmulAttention)
    _same_values_and_gradients(block, ours)
    tokens = torch.randn(2, 7, 32, dtype=torch.float64)  # 3-D input: the processor it replaced runs
    torch.testing.assert_close(ours(tokens), block(tokens))
