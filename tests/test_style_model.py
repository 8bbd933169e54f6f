"""StyleModel: training and stylising run the same forward pass; the views of a step; latents in and out."""
import dataclasses
import functools
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import load_photo
from small import small_config
from stylemamba import train
from stylemamba.encoders import load_text_image_encoder
from stylemamba.losses import LossConfig
from stylemamba.style_model import StyleModel
from stylemamba.stylize import encode_latents, stylize, stylize_latents
from stylemamba.train import StyleTrainer, step_views
from stylemamba.vae import load_vae

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def trained(tiny_models):
    vae = load_vae(tiny_models["vae"])
    trainer = StyleTrainer(vae, load_text_image_encoder(tiny_models["siglip"]), load_photo(), "fire",
                           small_config(epochs=3, lr=3e-3))
    result = trainer.run()
    return vae, trainer, result.style


def test_training_and_stylising_run_the_same_forward_pass(trained):
    vae, trainer, style = trained
    built = StyleModel.from_styles(vae, [style])
    with torch.no_grad():
        during_training = trainer.model.raw_output(trainer.z)
        from_the_file = built.raw_output(trainer.z)
    torch.testing.assert_close(from_the_file, during_training, atol=1e-5, rtol=1e-5)
    assert (during_training - vae.reconstruct(trainer.x)).abs().mean() > 1e-3  # the style does something
    assert torch.equal(built.output(trainer.z), from_the_file.float().clamp(0, 1))


def test_weights_and_strength_are_built_into_a_model(trained, photo):
    vae, _, style = trained
    half = StyleModel.from_styles(vae, [style], strength=0.5)
    torch.testing.assert_close(stylize(photo, vae, half), stylize(photo, vae, style, strength=0.5))
    for kwargs in ({"strength": 0.5}, {"weights": [1.0]}):
        with pytest.raises(ValueError, match="built into a StyleModel"):
            stylize(photo, vae, half, **kwargs)


def test_a_built_model_takes_the_same_vae_in_another_wrapper_only(trained, tiny_models, photo):
    vae, _, style = trained
    model = StyleModel.from_styles(vae, [style])
    reloaded = load_vae(tiny_models["vae"])  # the same file loaded again (a front end's reload)
    model.use_vae(reloaded)
    assert model.vae is reloaded
    torch.testing.assert_close(stylize(photo, reloaded, model), stylize(photo, vae, style))
    other = load_vae(tiny_models["vae"])
    with torch.no_grad():
        next(other.decoder.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="is not the VAE this style model was built on"):
        model.use_vae(other)
    assert model.vae is reloaded


def test_to_style_packages_a_single_style_only(trained):
    vae, trainer, style = trained
    again = trainer.model.to_style({"name": "again"})
    assert again.metadata["name"] == "again" and again.metadata["base_vae"] == vae.identity
    assert again.fusion_state.keys() == style.fusion_state.keys()
    assert all(torch.equal(again.fusion_state[k], style.fusion_state[k]) for k in style.fusion_state)
    with pytest.raises(ValueError, match="single style at full strength"):
        StyleModel.from_styles(vae, [style, style]).to_style()
    with pytest.raises(ValueError, match="mixes 2 styles"):
        StyleModel.from_styles(vae, [style, style]).fusion


def test_to_style_copies_the_weights_once_and_keeps_them(trained, tmp_path):
    """Packaging copies every tensor to the host (in one copy on a GPU); the style is a copy, not the live weights,
    its delta is the trained decoder minus the base (whatever dtype the base is held in), and it saves."""
    from stylemamba.style_file import load_style, save_style
    from stylemamba.vae import decoder_state
    from stylemamba.vae_layout import to_ldm

    vae, trainer, _ = trained
    style = trainer.model.to_style()
    base = to_ldm(decoder_state(vae.decoder, vae.post_quant_conv))
    trained_now = to_ldm(trainer.model.decoder.state_dict())
    assert style.decoder_delta.keys() == base.keys()
    for k, delta in style.decoder_delta.items():
        assert delta.dtype == torch.float32 and delta.is_contiguous() and delta.device.type == "cpu"
        torch.testing.assert_close(delta, (trained_now[k].float() - base[k].float()).reshape(delta.shape))
    live = dict(trainer.model.fusion.named_parameters())
    name = next(iter(live))
    before, weight = style.fusion_state[name].clone(), live[name].detach().clone()
    with torch.no_grad():
        live[name].add_(1.0)
    try:
        assert torch.equal(style.fusion_state[name], before)  # not a view of the trainer's weights
    finally:
        with torch.no_grad():
            live[name].copy_(weight)
    torch.testing.assert_close(load_style(save_style(style, tmp_path / "s.safetensors", torch.float32)["path"])
                               .decoder_delta[k], style.decoder_delta[k])


@pytest.mark.parametrize("one_buffer", [False, True])
def test_host_copies_per_tensor_and_in_one_buffer(one_buffer, tmp_path, trained, monkeypatch):
    """The copies a style is packaged from: per tensor (the CPU) or written into one buffer and copied once (a GPU,
    forced here on the CPU): the differences are views of that one buffer, the plain tensors copies of their own,
    and a style made so saves and loads (safetensors takes the shared storage)."""
    from stylemamba import style_model
    from stylemamba.style_file import load_style, save_style

    a, b = torch.randn(3, 4), torch.randn(3, 4).to(torch.bfloat16)
    ints = torch.arange(5)
    diff, other, copy = style_model._copies_on_host([(a, b), (2 * a, b), ints], one_buffer=one_buffer)
    torch.testing.assert_close(diff, a - b.float())
    torch.testing.assert_close(other, 2 * a - b.float())
    assert copy.dtype == torch.float32 and copy.tolist() == [0, 1, 2, 3, 4]
    assert all(t.is_contiguous() for t in (diff, other, copy))
    shared = diff.untyped_storage().data_ptr() == other.untyped_storage().data_ptr()
    assert shared == one_buffer and copy.untyped_storage().data_ptr() != diff.untyped_storage().data_ptr()
    a.add_(1)
    ints.add_(1)
    torch.testing.assert_close(diff, a - 1 - b.float())  # copies, not views of the inputs
    assert copy.tolist() == [0, 1, 2, 3, 4]

    _, trainer, _ = trained
    monkeypatch.setattr(style_model, "_copies_on_host",
                        functools.partial(style_model._copies_on_host, one_buffer=one_buffer))
    style = trainer.model.to_style()
    for dtype in (torch.float32, torch.float16):
        loaded = load_style(save_style(style, tmp_path / f"{dtype}.safetensors", dtype)["path"])
        for k, v in style.decoder_delta.items():
            torch.testing.assert_close(loaded.decoder_delta[k], v.to(dtype).float(), msg=k)
        for k, v in style.fusion_state.items():
            assert torch.equal(loaded.fusion_state[k], v), k


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_a_built_style_gets_its_decoder_delta_in_one_copy_equal_to_copies_per_tensor(device, trained, tiny_models,
                                                                                      monkeypatch):
    """Building a style's model adds its decoder delta to a decoder copy; the delta goes to the decoder's device
    as ONE buffer (pinned where CUDA allows), which must give the same weights as a copy per tensor, for one
    style and for a weights-blend of two."""
    from stylemamba import style_model

    vae, _, style = trained
    vae = load_vae(tiny_models["vae"], device=device) if device != "cpu" else vae
    other = dataclasses.replace(style, decoder_delta={k: -0.5 * v for k, v in style.decoder_delta.items()})
    built = {}
    for one_buffer in (False, True):
        with monkeypatch.context() as m:
            m.setattr(style_model, "_add_deltas", functools.partial(style_model._add_deltas, one_buffer=one_buffer))
            built[one_buffer] = [StyleModel.from_styles(vae, [style], strength=0.7),
                                 StyleModel.from_styles(vae, [style, other], [0.3, 0.7], blend="weights")]
    for a, b in zip(built[False], built[True]):
        state_a, state_b = a.decoder.state_dict(), b.decoder.state_dict()
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    base = vae.make_decoder().state_dict()
    assert any(not torch.equal(base[k], v) for k, v in built[True][0].decoder.state_dict().items())


def test_a_decoder_delta_of_another_size_names_the_tensor_and_both_shapes(trained):
    """A delta of another size (a file edited, or made for another decoder) said only PyTorch's "shape '[16]' is
    invalid for input of size 1", not which weight; the shape check meant to name it could never run."""
    from stylemamba.style_file import StyleFileError

    vae, _, style = trained
    first = next(iter(style.decoder_delta))
    bad = dataclasses.replace(style, decoder_delta={**style.decoder_delta,
                                                    first: style.decoder_delta[first].flatten()[:1]})
    with pytest.raises(StyleFileError, match=rf"{re.escape(first)}: \(1,\) in the file, \(\d+(, \d+)*\) here\); "
                                             "it was made for a different VAE, or the file is damaged"):
        StyleModel.from_styles(vae, [bad])


@needs_cuda
def test_packaging_on_the_gpu_is_one_copy_equal_to_copies_per_tensor(tiny_models, monkeypatch):
    """On a GPU the decoder delta comes over as views of ONE host buffer (not pinned: the pinned staging buffer
    goes back to torch's cache), equal to the per-tensor copies; packaging again (the staging buffer reused)
    leaves the first style as it was; without GPU room for the buffer it copies tensor by tensor."""
    from stylemamba import style_model

    vae = load_vae(tiny_models["vae"], device="cuda")
    trainer = StyleTrainer(vae, load_text_image_encoder(tiny_models["siglip"], device="cuda"), load_photo(), "fire",
                           small_config(epochs=2, lr=3e-3))
    trainer.run()
    one = trainer.model.to_style()
    with monkeypatch.context() as m:
        m.setattr(style_model, "_copies_on_host", functools.partial(style_model._copies_on_host, one_buffer=False))
        per_tensor = trainer.model.to_style()
    tensors = [*one.decoder_delta.values(), *one.fusion_state.values(), one.embedding]
    assert all(t.device.type == "cpu" and not t.is_pinned() for t in tensors)
    assert len({t.untyped_storage().data_ptr() for t in one.decoder_delta.values()}) == 1
    assert len({t.untyped_storage().data_ptr() for t in per_tensor.decoder_delta.values()}) == len(one.decoder_delta)
    for got, want in ((one.decoder_delta, per_tensor.decoder_delta), (one.fusion_state, per_tensor.fusion_state),
                      ({"e": one.embedding}, {"e": per_tensor.embedding})):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    kept = {k: v.clone() for k, v in one.decoder_delta.items()}
    with torch.no_grad():
        for p in trainer.model.decoder.parameters():
            p.add_(1.0)
    again = trainer.model.to_style()
    assert all(torch.equal(one.decoder_delta[k], kept[k]) for k in kept)
    assert all(torch.allclose(again.decoder_delta[k], kept[k] + 1.0) for k in kept)

    def no_room(items, device):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (a test: no room for the packaging buffer)")

    monkeypatch.setattr(style_model, "_one_copy", no_room)
    fallback = trainer.model.to_style()
    assert all(torch.equal(fallback.decoder_delta[k], again.decoder_delta[k]) for k in kept)


def test_latents_in_and_out_match_stylising_images(trained, photo):
    vae, _, style = trained
    z = encode_latents(photo, vae)
    assert z.shape == (1, 4, 8, 8)
    torch.testing.assert_close(z * vae.scaling_factor, vae.encode(photo))  # the VAE's own (unscaled) space
    seen = []
    out = stylize_latents(z, vae, style, strength=0.7, on_batch=lambda done, total: seen.append((done, total)))
    torch.testing.assert_close(out, stylize(photo, vae, style, strength=0.7), atol=1e-5, rtol=1e-4)
    assert seen == [(1, 1)]
    with pytest.raises(ValueError, match="does not fit this VAE"):
        stylize_latents(torch.zeros(1, 16, 8, 8), vae, style)


def test_step_views_are_what_the_image_tower_sees(trained, monkeypatch):
    y = torch.rand(2, 3, 64, 64)
    loss = LossConfig(n_crops=3, crop_fraction=0.5)
    views = step_views(y, loss, 32, torch.Generator().manual_seed(0))
    assert views.images.shape == (2 + 2 * 3 + 2, 3, 32, 32)
    torch.testing.assert_close(views.images[:2], F.interpolate(y, size=(32, 32), mode="bicubic",
                                                               align_corners=False, antialias=True))
    whole, crops, masked = views.split(torch.arange(10.0)[:, None])
    assert whole.flatten().tolist() == [0, 1] and crops.shape == (6, 1) and masked.flatten().tolist() == [8, 9]
    again = step_views(y, loss, 32, torch.Generator().manual_seed(0))
    assert torch.equal(again.images, views.images)  # crops and masks come from the generator only
    bare = step_views(y, LossConfig(patch=0.0, md=0.0), 32)
    assert bare.images.shape == (2, 3, 32, 32) and bare.split(torch.zeros(2, 1))[1:] == (None, None)
    # and a training step builds its views with this very function
    _, trainer, _ = trained
    calls = []
    monkeypatch.setattr(train, "step_views", lambda *a, **k: calls.append(1) or step_views(*a, **k))
    trainer.step(0)
    assert calls == [1]
