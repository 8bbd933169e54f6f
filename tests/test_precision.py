"""Autocast precision choices (the GPU-dependent branch is exercised through its inputs)."""
import pytest
import torch

from stylemamba import precision


def test_cpu_defaults_to_fp32_and_respects_explicit_choices():
    assert precision.autocast_dtype("cpu", "auto") is None
    assert precision.autocast_dtype("cpu", "off") is None
    assert precision.autocast_dtype("cpu", "bf16") is torch.bfloat16
    assert precision.autocast_dtype("cpu", "fp16") is None  # fp16 autocast is a CUDA feature here
    with pytest.raises(ValueError, match="not one of"):
        precision.autocast_dtype("cpu", "fp8")


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_cuda_falls_back_to_fp16_without_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "bf16_native", lambda device: native)
    assert precision.autocast_dtype("cuda", "auto") is expected
    assert precision.autocast_dtype("cuda", "off") is None
    assert precision.autocast_dtype("cuda", "fp16") is torch.float16


def test_autocast_context_on_cpu():
    with precision.autocast("cpu", "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with precision.autocast("cpu", "auto"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
