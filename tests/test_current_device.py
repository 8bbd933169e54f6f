"""A job on a GPU runs with that GPU current (stylemamba/current_device.py): CUDA graphs, our Triton kernels and
CUDA events follow the current device, so training or stylising on cuda:1 while cuda:0 is current must enter
cuda:1. The GPU tests need two GPUs for that case; one GPU checks the CLI's refusal of a GPU it lacks."""
import pytest
import torch

from small import small_config
from stylemamba.cli import pick_device
from stylemamba.current_device import on_device, runs_on_device_of, same_device
from stylemamba.encoders import load_text_image_encoder
from stylemamba.stylize import stylize
from stylemamba.style_model import StyleModel
from stylemamba.train import StyleTrainer
from stylemamba.vae import load_vae

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


def test_the_decorator_finds_its_argument_by_position_or_name_and_passes_everything_through():
    seen = []

    @runs_on_device_of("x")
    def job(scale, x, shift=0.0):
        seen.append((scale, x.device, shift))
        return x * scale + shift

    x = torch.ones(2)
    assert torch.equal(job(2.0, x, shift=1.0), torch.full((2,), 3.0))
    assert torch.equal(job(scale=3.0, x=x), torch.full((2,), 3.0))
    assert seen == [(2.0, torch.device("cpu"), 1.0), (3.0, torch.device("cpu"), 0.0)]
    with pytest.raises(ValueError):  # a name the function does not take is an error when decorating
        runs_on_device_of("images")(lambda x: x)


def test_devices_compare_by_what_they_name():
    assert same_device("cpu", torch.device("cpu"))
    assert not same_device("cpu", "cuda:0")
    assert not same_device("cuda:0", "cuda:1")
    assert same_device("cuda:1", torch.device("cuda", 1))
    with on_device("cpu"), on_device(None):  # the CPU enters nothing
        pass


@needs_cuda
def test_the_cli_names_the_gpus_there_are_for_an_index_beyond_them():
    count = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"cuda:{count} asked for, but PyTorch sees {count} GPU\(s\)"):
        pick_device(f"cuda:{count}")
    assert pick_device("cuda:0") == torch.device("cuda", 0) and torch.cuda.current_device() == 0


def _losses_and_style(vae, text, photo, device):
    trainer = StyleTrainer(vae, text, photo, "oil painting",
                           small_config(epochs=4, cuda_graphs="on", precision="fp32",
                                        loss={"patch": 0.0, "md": 0.0}), device=device)
    losses = []
    for epoch in range(4):
        terms, _ = trainer.step(epoch)
        losses.append({k: float(v) for k, v in terms.items()})
        trainer.history.append(terms)
        trainer.end_epoch()
    return trainer, losses, trainer.result(0.0, 4).style


@needs_two_gpus
def test_training_and_stylising_on_the_second_gpu_while_the_first_is_current(tiny_models, photo):
    assert torch.cuda.current_device() == 0
    first = torch.device("cuda", 0)
    second = torch.device("cuda", 1)
    vae0 = load_vae(tiny_models["vae"], device=first)
    text0 = load_text_image_encoder(tiny_models["siglip"], device=first)
    with pytest.raises(ValueError, match="the VAE is on cuda:0 but training was asked to run on cuda:1"):
        StyleTrainer(vae0, text0, photo, "oil painting", small_config(), device=second)
    vae1 = load_vae(tiny_models["vae"], device=second)
    text1 = load_text_image_encoder(tiny_models["siglip"], device=second)
    ref, ref_losses, ref_style = _losses_and_style(vae0, text0, photo, first)
    got, losses, style = _losses_and_style(vae1, text1, photo, second)
    assert torch.cuda.current_device() == 0  # entered and left again
    assert got.graphs is not None and len(got.graphs) == len(ref.graphs) >= 1  # steps replayed on cuda:1 too
    for step, (a, b) in enumerate(zip(ref_losses, losses)):  # replays that ran: each step its own losses
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=f"step {step} term {k}")
    assert len({round(v["total"], 6) for v in losses}) == 4
    # one style on both GPUs (two trainings differ by atomic-add rounding), in fp32: a graph replayed on cuda:1
    # gives what cuda:0 gives eagerly; the style trained on cuda:1 replays as it runs eagerly there
    frames = torch.rand(7, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model0, model1 = StyleModel.from_styles(vae0, [ref_style]), StyleModel.from_styles(vae1, [ref_style])
    eager = stylize(frames, vae0, model0, batch_size=2, cuda_graphs="off", precision="fp32")
    graphed = stylize(frames, vae1, model1, batch_size=2, cuda_graphs="on", precision="fp32")  # 3 batches + 1 frame
    torch.testing.assert_close(graphed, eager, rtol=1e-3, atol=2e-3)
    own = StyleModel.from_styles(vae1, [style])
    torch.testing.assert_close(stylize(frames, vae1, own, batch_size=2, cuda_graphs="on"),
                               stylize(frames, vae1, own, batch_size=2, cuda_graphs="off"), rtol=1e-3, atol=2e-3)
    assert torch.cuda.current_device() == 0


@needs_two_gpus
def test_the_cli_makes_its_gpu_current():
    try:
        assert pick_device("cuda:1") == torch.device("cuda", 1) and torch.cuda.current_device() == 1
    finally:
        torch.cuda.set_device(0)


@pytest.mark.parametrize("name", ["mps", "xpu"])
def test_a_device_type_this_pytorch_lacks_is_one_short_sentence(name):
    """mps's error is a page of dispatcher keys and xpu's an AssertionError (a traceback): both become the named
    flag error, short enough to read."""
    there = getattr(torch.backends, name, None) if name == "mps" else getattr(torch, name, None)
    if there is not None and there.is_available():
        pytest.skip(f"this machine has {name}")
    with pytest.raises(ValueError, match=f"--device '{name}' is not available here") as info:
        pick_device(name)
    assert len(str(info.value)) < 300, str(info.value)
