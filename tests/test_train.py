"""The training loop: the recipe, losses going down, cancel, reproducibility, bad inputs."""
import pytest
import torch

from small import small_config
from stylemamba.encoders import load_text_image_encoder
from stylemamba.perceptual import LPIPSLoss, VGGFeatures
from stylemamba.stylize import stylize
from stylemamba.train import OutOfMemory, StyleTrainer, TrainingCancelled, prepare_content, train_style
from stylemamba.vae import load_vae


@pytest.fixture(scope="module")
def parts(tiny_models):
    vae = load_vae(tiny_models["vae"])
    text = load_text_image_encoder(tiny_models["siglip"])
    vgg = VGGFeatures.from_safetensors(tiny_models["vgg19"])
    lp = LPIPSLoss(net="vgg")
    return vae, text, vgg, lp


def test_untrained_style_reproduces_the_vae_reconstruction(parts, photo):
    vae, text, vgg, lp = parts
    trainer = StyleTrainer(vae, text, photo, "oil painting", small_config())
    result = trainer.result(0.0, 0)
    assert all(float(d.abs().max()) == 0.0 for d in result.style.decoder_delta.values())
    x = prepare_content(photo, 64)
    torch.testing.assert_close(stylize(x, vae, result.style), vae.reconstruct(x), atol=1e-5, rtol=1e-5)


def test_training_lowers_the_total_loss(parts, photo_batch):
    vae, text, vgg, lp = parts
    # constant weights (no content-weight switch) so the total is comparable from step to step
    cfg = small_config(epochs=12, lr=2e-3, lr_decay_epoch=100,
                       loss=dict(content_weight_start=10.0, content_weight_end=10.0, patch=50.0, dir=50.0,
                                 md=50.0, so=0.0, lpips=10.0))
    result = train_style(vae, text, photo_batch, ["a watercolor painting"], cfg, vgg=vgg, lpips=lp)
    totals = [h["total"] for h in result.history]
    assert len(totals) == 12 and all(torch.isfinite(torch.tensor(totals)))
    assert sum(totals[-3:]) / 3 < totals[0], totals
    assert set(result.history[0]) >= {"dir", "patch", "md", "vgg", "lpips", "total"}
    assert result.style.metadata["prompts"] == ["a watercolor painting"]
    assert any(float(d.abs().max()) > 0 for d in result.style.decoder_delta.values())


def test_second_order_term_appears_on_its_interval(parts, photo):
    vae, text, vgg, lp = parts
    result = train_style(vae, text, photo, "cubism", small_config(epochs=5, loss=dict(so_interval=2, so_theta=2.0)))
    has_so = ["so" in h for h in result.history]
    assert has_so == [False, True, True, True, True]  # needs a previous epoch; gated inside the term
    so = [h.get("so", 0.0) for h in result.history]
    assert so[1] == 0.0 and so[3] == 0.0  # epochs 1 and 3 are off-interval (gate 0)
    assert so[2] > 0.0 and so[4] > 0.0


def test_reproducible_with_a_seed_on_cpu(parts, photo):
    vae, text, _, _ = parts
    a = train_style(vae, text, photo, "pop art", small_config(epochs=2))
    b = train_style(vae, text, photo, "pop art", small_config(epochs=2))
    assert a.history == b.history
    for k in a.style.decoder_delta:
        assert torch.equal(a.style.decoder_delta[k], b.style.decoder_delta[k])


def test_cancel_stops_at_the_next_step_and_leaves_a_usable_style(parts, photo):
    vae, text, _, _ = parts
    seen = []
    with pytest.raises(TrainingCancelled) as info:
        train_style(vae, text, photo, "ukiyo-e", small_config(epochs=6), on_step=lambda s: seen.append(s.step),
                    should_stop=lambda: len(seen) >= 2)
    assert seen == [1, 2]
    partial = info.value.partial
    assert partial is not None and partial.cancelled and partial.steps == 2
    out = stylize(prepare_content(photo, 64), vae, partial.style)
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    with pytest.raises(TrainingCancelled) as info:
        train_style(vae, text, photo, "ukiyo-e", small_config(), should_stop=lambda: True)
    assert info.value.partial is None  # nothing trained yet: no model rather than a broken one


def test_progress_reports_losses_and_previews(parts, photo):
    vae, text, _, _ = parts
    infos = []
    train_style(vae, text, photo, "sketch", small_config(epochs=3, preview_every=2), on_step=infos.append)
    assert [i.step for i in infos] == [1, 2, 3] and infos[-1].total_steps == 3
    assert infos[0].preview is None and infos[1].preview.shape == (3, 64, 64)
    assert "total" in infos[0].losses and isinstance(infos[0].losses["total"], float)


def test_multiple_prompts_with_weights(parts, photo):
    vae, text, _, _ = parts
    r = train_style(vae, text, photo, ["fire", "ice"], small_config(epochs=1), prompt_weights=[0.7, 0.3])
    e = text.encode_text(["fire", "ice"])
    expected = torch.nn.functional.normalize(0.7 * e[0] + 0.3 * e[1], dim=0)
    torch.testing.assert_close(r.style.embedding, expected)
    with pytest.raises(ValueError, match="prompt weights"):
        train_style(vae, text, photo, ["fire", "ice"], small_config(epochs=1), prompt_weights=[1.0])


def test_bad_inputs(parts, photo):
    vae, text, _, _ = parts
    with pytest.raises(ValueError, match="empty style prompt"):
        train_style(vae, text, photo, "", small_config(epochs=1))
    with pytest.raises(ValueError, match="content image 0 has shape"):
        train_style(vae, text, torch.rand(1, 2, 64, 64), "x", small_config(epochs=1))
    with pytest.raises(ValueError, match="no content images"):
        train_style(vae, text, [], "x", small_config(epochs=1))
    with pytest.raises(ValueError, match="resolution"):
        small_config(resolution=100)
    with pytest.raises(ValueError, match="unknown training option"):
        type(small_config()).from_dict({"epoch": 3})


def test_prepare_content_handles_sizes_and_channels():
    imgs = [torch.rand(3, 50, 90), torch.rand(1, 70, 40), torch.rand(4, 64, 64)]
    out = prepare_content(imgs, 64)
    assert out.shape == (3, 3, 64, 64)
    torch.testing.assert_close(out[1, 0], out[1, 1])  # gray expanded to RGB


def test_out_of_memory_says_what_to_lower(parts, photo, monkeypatch):
    vae, text, _, _ = parts

    def oom(self, epoch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(StyleTrainer, "step", oom)
    with pytest.raises(OutOfMemory, match="Lower the resolution"):
        train_style(vae, text, photo, "x", small_config(epochs=1))


def test_gradient_checkpointing_gives_the_same_training(parts, photo):
    vae, text, _, _ = parts
    plain = train_style(vae, text, photo, "pop art", small_config(epochs=2))
    ckpt = train_style(vae, text, photo, "pop art", small_config(epochs=2, gradient_checkpointing=True))
    for a, b in zip(plain.history, ckpt.history):
        assert a.keys() == b.keys()
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-4 * max(1.0, abs(a[k])), k
    # and it really recomputes: the decoder's mid block runs again during backward
    calls = []
    for flag, expected in ((False, 1), (True, 2)):
        trainer = StyleTrainer(vae, text, photo, "pop art", small_config(epochs=1, gradient_checkpointing=flag))
        calls.clear()
        trainer.model.decoder.decoder.mid_block.register_forward_pre_hook(lambda *a: calls.append(1))
        trainer.step(0)
        assert len(calls) == expected


# ----- issue 9 options: views of the content image, clamped output, partial decoder -----------
def test_same_crop_and_same_mask_views_of_the_content_image(photo_batch):
    from stylemamba.losses import LossConfig, random_crops
    from stylemamba.train import tower_views

    y = torch.rand(2, 3, 64, 64)
    x = photo_batch
    lc = LossConfig(n_crops=3, crop_fraction=0.5, crop_reference="same", mask_reference="same", mask_patch=16)
    views = tower_views(y, x, lc, 32, torch.Generator().manual_seed(4))
    full = tower_views(y, x, LossConfig(n_crops=3, crop_fraction=0.5), 32, torch.Generator().manual_seed(4))
    assert views.n_crops == 3 and views.masked and views.of_y.shape == (2 + 6 + 2, 3, 32, 32)
    # Y's views do not depend on the reference (same boxes, same masks: the random numbers are the same)
    torch.testing.assert_close(views.of_y, full.of_y)
    assert full.of_x is None
    # X's crops are the crops of X with the same boxes and perspective as Y's
    expected = random_crops(x, 3, 32, 32, perspective=lc.crop_perspective, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(views.of_x[:6], expected)
    # X's masked view has its grey patches exactly where Y's has them
    y_grey = (views.of_y[-2:] - 0.5).abs().amax(1) < 1e-6
    x_grey = (views.of_x[-2:] - 0.5).abs().amax(1) < 1e-6
    assert y_grey.float().mean() > 0.3 and bool((y_grey <= x_grey).all())


def test_clamped_output_and_range_penalty(parts, photo):
    vae, text, _, _ = parts
    trainer = StyleTrainer(vae, text, photo, "fire", small_config(loss=dict(clamp_output=True, range_weight=10.0)))
    y = torch.linspace(-1, 2, 3 * 64 * 64).reshape(1, 3, 64, 64).requires_grad_(True)
    terms = trainer.loss_terms(y, 0)
    assert terms["range"].item() > 0
    seen = []
    trainer.vgg = lambda img: seen.append(img) or [img]
    trainer.feats_x = [trainer.x]
    trainer.loss_terms(y, 0)
    assert float(seen[0].detach().min()) == 0.0 and float(seen[0].detach().max()) == 1.0  # the losses see it clamped
    raw = StyleTrainer(vae, text, photo, "fire", small_config(loss=dict(clamp_output=False, range_weight=0.0)))
    seen.clear()
    raw.vgg, raw.feats_x = trainer.vgg, trainer.feats_x
    assert "range" not in raw.loss_terms(y, 0)
    assert float(seen[0].detach().min()) == -1.0  # the paper's form: the losses see the raw output


def test_training_part_of_the_decoder_stores_that_part(parts, photo):
    from stylemamba.decoder_parts import in_part

    vae, text, _, _ = parts
    full = train_style(vae, text, photo, "fire", small_config(epochs=2))
    top = train_style(vae, text, photo, "fire", small_config(epochs=2, train_decoder="top1"))
    none = train_style(vae, text, photo, "fire", small_config(epochs=2, train_decoder="none"))
    assert set(top.style.decoder_delta) == {k for k in full.style.decoder_delta if in_part(k, "top1")}
    assert 0 < len(top.style.decoder_delta) < len(full.style.decoder_delta) and none.style.decoder_delta == {}
    assert any(float(d.abs().max()) > 0 for d in top.style.decoder_delta.values())
    x = prepare_content(photo, 64)
    for result in (top, none):  # a partial style stylises; without its fusion change it would be the reconstruction
        out = stylize(x, vae, result.style)
        assert out.shape == x.shape and (out - vae.reconstruct(x)).abs().mean() > 1e-4
    with pytest.raises(ValueError, match="decoder part"):
        small_config(train_decoder="top9")
