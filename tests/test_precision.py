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
    # a recipe's field named as such (it said "precision 'BF16' ...", naming neither); any case is the same value
    assert TrainConfig.from_dict({"precision": " BF16"}).precision == "bf16"
    for bad in ("half", None):
        with pytest.raises(ValueError, match=r"^TrainConfig\.precision .* is not one of auto, bf16, fp16, fp32"):
            TrainConfig.from_dict({"precision": bad})
    for flag in ("--precision", "--dtype"):  # --dtype: the 0.1.0 flag
        args = build_parser().parse_args(["stylize", flag, "fp32", "--style", "s", "--input", "i", "--output", "o"])
        assert args.precision == "fp32"


class _HostGroupNorm(torch.nn.GroupNorm):
    """Stands for a host's own GroupNorm subclass (ComfyUI's ops.GroupNorm)."""


def test_groupnorm_in_the_autocast_dtype_keeps_parameters_and_results():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.GroupNorm(4, 16),
                              torch.nn.Sequential(torch.nn.SiLU(), _HostGroupNorm(2, 16, eps=1e-6)))
    keys, params = sorted(net.state_dict()), [p for p in net.parameters()]
    x = torch.randn(2, 3, 12, 12)
    fp32 = net(x)  # (CUDA autocast runs GroupNorm in fp32, CPU autocast does not: the replacement is the same)
    assert precision.groupnorm_in_autocast_dtype_(net) == 2
    assert [type(m) for m in (net[1], net[2][1])] == [precision.AutocastGroupNorm] * 2 and net[2][1].eps == 1e-6
    assert sorted(net.state_dict()) == keys and all(a is b for a, b in zip(net.parameters(), params))
    assert precision.groupnorm_in_autocast_dtype_(net) == 0  # once is enough
    torch.testing.assert_close(net(x), fp32)  # without autocast: the plain GroupNorm, bit for bit
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), fp32, rtol=3e-2, atol=3e-2)
    out.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


@pytest.mark.parametrize("autocast_groupnorm", [True, False])
def test_training_runs_its_decoder_groupnorms_in_the_autocast_dtype_by_default(tiny_models, photo,
                                                                                 autocast_groupnorm):
    from small import small_config

    from stylemamba.encoders import load_text_image_encoder
    from stylemamba.train import StyleTrainer
    from stylemamba.vae import load_vae

    cfg = TrainConfig()
    assert cfg.autocast_groupnorm and cfg.channels_last  # measured on an H200 (TrainConfig's comments)
    assert not TrainConfig.from_dict({**cfg.to_dict(), "channels_last": False}).channels_last  # older recipes load
    vae = load_vae(tiny_models["vae"])
    trainer = StyleTrainer(vae, load_text_image_encoder(tiny_models["siglip"]), photo, "pop art",
                           small_config(autocast_groupnorm=autocast_groupnorm, epochs=1))
    norms = [m for m in trainer.model.decoder.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(isinstance(m, precision.AutocastGroupNorm) == autocast_groupnorm for m in norms)
    assert not any(isinstance(m, precision.AutocastGroupNorm) for m in vae.modules())  # the shared VAE is untouched
    # the decoder's attention as matrix products (default; tests/test_group_norm.py), the shared VAE's as it was
    from stylemamba.decoder_attention import MatmulAttention
    processors = [m.processor for m in trainer.model.decoder.modules() if hasattr(m, "set_processor")]
    assert cfg.matmul_attention and processors and all(isinstance(p, MatmulAttention) for p in processors)
    assert not any(isinstance(getattr(m, "processor", None), MatmulAttention) for m in vae.modules())
    trainer.step(0)  # and it trains


def _resnet_copies_only_while_training() -> bool:
    """diffusers >= 0.37 (PR 12977) copies a residual block's input to NCHW only in training mode; older versions
    always did (0.33-0.36) or never did, and there train_in_channels_last_ changes nothing."""
    import inspect

    from diffusers.models.resnet import ResnetBlock2D

    return "if self.training:" in inspect.getsource(ResnetBlock2D.forward)


@pytest.mark.skipif(not _resnet_copies_only_while_training(), reason="this diffusers copies in both modes or never")
def test_a_channels_last_decoder_trains_without_copying_to_nchw_and_computes_the_same():
    """speed.train_in_channels_last_: diffusers' training-mode residual blocks copied a channels_last input to NCHW
    before their shortcut convolution (a full-size copy at 512 px); the blocks it switches make no such copy and give
    the same values and gradients as the NCHW decoder (fp64)."""
    import copy

    from diffusers import AutoencoderKL

    from stylemamba.experiments.bench import copy_sources
    from stylemamba.speed import train_in_channels_last_
    from stylemamba.testing.tiny_models import tiny_vae_config

    torch.manual_seed(0)
    nchw = AutoencoderKL(**tiny_vae_config()).decoder.double().train()
    assert any(getattr(m, "conv_shortcut", None) is not None for m in nchw.modules())
    cl = copy.deepcopy(nchw)
    z = torch.randn(2, nchw.conv_in.in_channels, 8, 8, dtype=torch.float64)

    def run(dec, z):  # -> output, parameter gradients, copies of a strided 4-D tensor (C > 1) into NCHW
        out = {}

        def forward_backward():
            out["y"] = dec(z)
            out["y"].square().sum().backward()

        rows = copy_sources(forward_backward, top=10**6)
        copies = sum(r["calls"] for r in rows if r["op"] == "clone" and len(r["shape"]) == 4 and r["shape"][1] > 1
                     and r["layouts"] in ("channels_last -> contiguous", "strided -> contiguous"))
        return out["y"], [p.grad for p in dec.parameters()], copies

    trained_nchw_style = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    assert run(trained_nchw_style, z.contiguous(memory_format=torch.channels_last))[2] > 0  # the copies it removes
    assert train_in_channels_last_(cl) > 0
    y_ref, g_ref, _ = run(nchw, z)
    y, g, copies = run(cl, z.contiguous(memory_format=torch.channels_last))
    assert copies == 0
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_the_trained_decoder_copy_runs_silu_out_of_place(tiny_models, photo):
    """ComfyUI's VAE decoder runs nn.SiLU(inplace=True); in a decoder being trained autograd copies each SiLU's input
    before overwriting it. The trainer's copy computes them out of place (no copies, same values and gradients);
    the shared VAE keeps its own modules."""
    from stylemamba.encoders import load_text_image_encoder
    from stylemamba.experiments.bench import copy_sources
    from stylemamba.speed import silu_out_of_place_
    from stylemamba.train import StyleTrainer
    from stylemamba.vae import load_vae

    vae = load_vae(tiny_models["vae"])
    silus = [m for m in vae.modules() if isinstance(m, torch.nn.SiLU)]
    assert silus
    for m in silus:  # as ComfyUI builds its decoder
        m.inplace = True
    inplace = vae.make_decoder().double()
    out_of_place = vae.make_decoder().double()
    assert silu_out_of_place_(out_of_place) == len([m for m in inplace.modules() if isinstance(m, torch.nn.SiLU)])
    z = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    silu_calls = [0]
    for m in inplace.modules():
        if isinstance(m, torch.nn.SiLU):
            m.register_forward_hook(lambda *_: silu_calls.__setitem__(0, silu_calls[0] + 1))
    results = []
    for dec in (inplace, out_of_place):
        out = {}

        def forward_backward():
            out["y"] = dec(z)
            out["grads"] = torch.autograd.grad(out["y"].square().sum(), list(dec.parameters()))

        rows = copy_sources(forward_backward, top=10**6)
        results.append((out["y"], out["grads"], sum(r["calls"] for r in rows if r["op"] == "clone")))
    # one copy per SiLU call is gone; other clones are the same in both (with torch 2.11 the two decoders made 24
    # and 3 clones, with 2.14 21 and 0: 21 SiLU calls)
    assert silu_calls[0] > 0 and results[0][2] - results[1][2] == silu_calls[0], (silu_calls, results[0][2],
                                                                                 results[1][2])
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    trainer = StyleTrainer(vae, load_text_image_encoder(tiny_models["siglip"]), photo, "pop art", TrainConfig(epochs=1))
    assert not any(isinstance(m, torch.nn.SiLU) and m.inplace for m in trainer.model.decoder.modules())
    assert all(m.inplace for m in silus)


def test_fp16_asked_on_the_cpu_says_once_that_it_runs_in_fp32(monkeypatch, caplog):
    """--precision fp16 --device cpu trained in fp32 without a word (and the recipe says fp16)."""
    monkeypatch.setattr(precision, "_TOLD_NO_FP16", set())
    with caplog.at_level("WARNING", logger="stylemamba"):
        assert precision.autocast_dtype("cpu", "fp16") is None and precision.autocast_dtype("cpu", "fp16") is None
        assert precision.autocast_dtype("cpu", "fp32") is None and precision.autocast_dtype("cpu", "bf16") is not None
    assert caplog.text.count("fp16 needs a CUDA GPU: on cpu the computation runs in fp32") == 1, caplog.text
