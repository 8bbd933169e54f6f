"""Autocast precision choices (the GPU-dependent branch is exercised through its inputs), one vocabulary."""
import pytest
import torch

from stylemamba import precision
from stylemamba.cli import build_parser
from stylemamba.experiments.baselines.clipstyler import ClipStylerConfig
from stylemamba.train import TrainConfig


def test_cpu_defaults_to_fp32_and_respects_explicit_choices():
    assert precision.autocast_dtype("cpu", "auto") is None
    assert precision.autocast_dtype("cpu", "fp32") is None
    assert precision.autocast_dtype("cpu", "bf16") is torch.bfloat16
    assert precision.autocast_dtype("cpu", "fp16") is None  # fp16 autocast is a CUDA feature here
    with pytest.raises(ValueError, match="not one of"):
        precision.autocast_dtype("cpu", "fp8")


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_cuda_falls_back_to_fp16_without_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "bf16_native", lambda device: native)
    assert precision.autocast_dtype("cuda", "auto") is expected
    assert precision.autocast_dtype("cuda", "fp32") is None
    assert precision.autocast_dtype("cuda", "fp16") is torch.float16


def test_autocast_context_on_cpu():
    with precision.autocast("cpu", "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with precision.autocast("cpu", "auto"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_one_vocabulary_and_the_0_1_0_spellings_still_read():
    assert precision.check_precision("off") == "fp32"  # 0.1.0 recipes wrote amp="off"
    assert TrainConfig.from_dict({"amp": "off"}).precision == "fp32"
    assert TrainConfig.from_dict({"precision": "bf16"}).precision == "bf16"
    assert ClipStylerConfig.from_dict({"amp": "fp16"}).precision == "fp16"
    with pytest.raises(ValueError, match="both given"):
        TrainConfig.from_dict({"amp": "off", "precision": "fp32"})
    with pytest.raises(ValueError, match="not one of"):
        TrainConfig(precision="half")
    for flag in ("--precision", "--dtype"):  # --dtype: the 0.1.0 flag
        args = build_parser().parse_args(["stylize", flag, "fp32", "--style", "s", "--input", "i", "--output", "o"])
        assert args.precision == "fp32"
