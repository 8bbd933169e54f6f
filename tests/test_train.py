"""The training loop: the recipe, losses going down, cancel, reproducibility, bad inputs."""
import dataclasses
import re
import signal
import time

import numpy as np
import pytest
import torch

from small import small_config
from stylemamba.encoders import load_text_image_encoder
from stylemamba.perceptual import LPIPSLoss, VGGFeatures
from stylemamba.stylize import stylize
from stylemamba.errors import OutOfMemory
from stylemamba.logs import said_already
from stylemamba.train import StyleTrainer, TrainingCancelled, prepare_content, seen_output, train_style
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
                       loss=dict(vgg_weight_start=10.0, vgg_weight_end=10.0, patch=50.0, dir=50.0,
                                 md=50.0, so=0.0, lpips=10.0))
    wall = time.perf_counter()
    result = train_style(vae, text, photo_batch, ["a watercolor painting"], cfg, vgg=vgg, lpips=lp)
    wall = time.perf_counter() - wall
    totals = [h["total"] for h in result.history]
    assert len(totals) == 12 and all(torch.isfinite(torch.tensor(totals)))
    assert sum(totals[-3:]) / 3 < totals[0], totals
    assert set(result.history[0]) >= {"dir", "patch", "md", "vgg", "lpips", "total"}
    assert result.style.metadata["prompts"] == ["a watercolor painting"]
    assert any(float(d.abs().max()) > 0 for d in result.style.decoder_delta.values())
    # where the time went, as the Train node logs it
    p = result.phases
    assert set(p) == {"setup", "steps", "package", "median_step"} and all(v > 0 for v in p.values()), p
    assert p["setup"] + p["steps"] + p["package"] <= wall and p["median_step"] < p["steps"] / 4
    assert result.describe_time().startswith("set-up ") and "12 steps" in result.describe_time()


def test_a_front_end_that_said_why_lpips_is_off_is_not_repeated(parts, photo, caplog):
    vae, text, _, _ = parts
    trainer = StyleTrainer(vae, text, photo, "oil painting", small_config())  # a library user: told once
    assert len([r for r in caplog.records if "no LPIPS network given: the LPIPS loss is skipped" in r.getMessage()]) == 1
    assert "lpips" in trainer.skipped_losses
    caplog.clear()
    with said_already("lpips loss skipped"):  # a front end (the CLI) said it, naming its flag
        assert "lpips" in StyleTrainer(vae, text, photo, "oil painting", small_config()).skipped_losses
    assert not [r for r in caplog.records if "LPIPS" in r.getMessage()]


def test_lpips_compares_with_the_content_features_computed_once(parts, photo_batch):
    """The content images' LPIPS features are computed with the trainer, not every step: a step runs the LPIPS
    backbone on Y alone, and its LPIPS term is the distance between Y and the content images."""
    vae, text, vgg, lp = parts
    trainer = StyleTrainer(vae, text, photo_batch, "pop art", small_config(loss=dict(lpips=10.0)), vgg=vgg, lpips=lp)
    batches = []
    hook = lp.model.net.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    try:
        terms, y = trainer.step(0)
    finally:
        hook.remove()
    assert batches == [photo_batch.shape[0]]  # once per step, on Y
    with torch.no_grad():
        expected = lp(seen_output(y, trainer.cfg.loss), trainer.x)
    assert expected > 0
    torch.testing.assert_close(terms["lpips"], expected, rtol=1e-5, atol=1e-7)


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
    # step 3 was already queued when step 2 was reported (reports lag one step, so the GPU never waits for
    # them): the partial style holds 3 steps and the progress showed all 3
    assert seen == [1, 2, 3]
    partial = info.value.partial
    assert partial is not None and partial.cancelled and partial.steps == 3
    out = stylize(prepare_content(photo, 64), vae, partial.style)
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    with pytest.raises(TrainingCancelled) as info:
        train_style(vae, text, photo, "ukiyo-e", small_config(), should_stop=lambda: True)
    assert info.value.partial is None  # nothing trained yet: no model rather than a broken one


class _CtrlCReachedTheCaller(Exception):
    pass


def test_ctrl_c_from_python_keeps_the_steps_trained_so_far(parts, photo):
    """A script or notebook calling train_style without should_stop: Ctrl-C stops after the step and the style of
    the finished steps is on the exception (it used to be a KeyboardInterrupt that lost the run)."""
    vae, text, _, _ = parts

    def caller_handler(signum, frame):
        raise _CtrlCReachedTheCaller()

    previous = signal.signal(signal.SIGINT, caller_handler)
    try:
        seen = []

        def on_step(info):
            seen.append(info.step)
            if info.step == 2:
                signal.raise_signal(signal.SIGINT)

        with pytest.raises(TrainingCancelled) as info:
            train_style(vae, text, photo, "ukiyo-e", small_config(epochs=6), on_step=on_step)
        partial = info.value.partial
        assert partial is not None and partial.cancelled and partial.steps == 3 and seen == [1, 2, 3]
        assert "after 3 steps" in str(info.value) and ".partial" in str(info.value)
        assert signal.getsignal(signal.SIGINT) is caller_handler  # the caller's handler is back
    finally:
        signal.signal(signal.SIGINT, previous)



@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on Windows")
@pytest.mark.parametrize("name", ["SIGHUP", "SIGTERM", "SIGINT"])
def test_a_run_under_nohup_goes_on_when_the_terminal_closes(name):
    """nohup starts a process with SIGHUP ignored so that closing the terminal does not stop it; a training run
    stops on SIGHUP only where nobody asked for that. Likewise an ignored SIGTERM (a service manager's) or SIGINT (a
    background job's): before, only SIGHUP was left ignored."""
    from stylemamba.distributed import StopRequest

    sig = getattr(signal, name)
    default = signal.default_int_handler if name == "SIGINT" else signal.SIG_DFL  # Python's own at start
    previous = signal.signal(sig, signal.SIG_IGN)
    try:
        with StopRequest(announce=False) as stop:
            signal.raise_signal(sig)
            assert not stop.asked and signal.getsignal(sig) == signal.SIG_IGN
        signal.signal(sig, default)
        with StopRequest(announce=False) as stop:
            signal.raise_signal(sig)
            assert stop.asked
        assert signal.getsignal(sig) == default
    finally:
        signal.signal(sig, previous)


def test_a_handler_installed_outside_python_is_left_in_place(monkeypatch):
    """A program embedding Python may install a C handler first; signal.getsignal reports it as None, which
    signal.signal cannot put back: restoring it was a TypeError after the run. Such a signal is left to the host."""
    from stylemamba.stop_signals import install, restore

    seen = []
    real = signal.getsignal
    monkeypatch.setattr(signal, "getsignal", lambda sig: None if sig == signal.SIGTERM else real(sig))
    before = real(signal.SIGINT)
    previous = install((signal.SIGINT, signal.SIGTERM), lambda signum, frame: seen.append(signum))
    try:
        assert list(previous) == [signal.SIGINT] and real(signal.SIGTERM) == signal.SIG_DFL
        signal.raise_signal(signal.SIGINT)
        assert seen == [signal.SIGINT]
    finally:
        restore(previous)
    assert real(signal.SIGINT) is before


def test_progress_reports_losses_and_previews(parts, photo):
    vae, text, _, _ = parts
    infos = []
    train_style(vae, text, photo, "sketch", small_config(epochs=3, preview_every=2), on_step=infos.append)
    assert [i.step for i in infos] == [1, 2, 3] and infos[-1].total_steps == 3
    assert infos[0].preview is None and infos[1].preview.shape == (3, 64, 64)
    assert "total" in infos[0].losses and isinstance(infos[0].losses["total"], float)


def test_a_step_is_reported_once_the_next_is_queued(parts, photo):
    vae, text, _, _ = parts
    trainer = StyleTrainer(vae, text, photo, "sketch", small_config(epochs=3))
    queued = []
    trainer.run(on_step=lambda info: queued.append((info.step, len(trainer.history))))
    assert queued == [(1, 2), (2, 3), (3, 3)]  # the last one after the loop
    # callers that read the trainer at the step (method_choices' snapshots) ask for no lag
    trainer = StyleTrainer(vae, text, photo, "sketch", small_config(epochs=3))
    at_once = []
    trainer.run(on_step=lambda info: at_once.append((info.step, len(trainer.history))), lag_reports=False)
    assert at_once == [(1, 1), (2, 2), (3, 3)]


def test_a_failing_step_still_reports_the_step_before_it(parts, photo, monkeypatch):
    vae, text, _, _ = parts
    trainer = StyleTrainer(vae, text, photo, "sketch", small_config(epochs=3))
    real = trainer.step_within_memory

    def third_fails(epoch, **kw):
        if epoch == 2:
            raise RuntimeError("a step failed")
        return real(epoch, **kw)

    monkeypatch.setattr(trainer, "step_within_memory", third_fails)
    seen = []
    with pytest.raises(RuntimeError, match="a step failed"):
        trainer.run(on_step=lambda info: seen.append(info.step))
    assert seen == [1, 2]


def test_multiple_prompts_with_weights(parts, photo):
    vae, text, _, _ = parts
    r = train_style(vae, text, photo, ["fire", "ice"], small_config(epochs=1), prompt_weights=[0.7, 0.3])
    e = text.encode_text(["fire", "ice"])
    expected = torch.nn.functional.normalize(0.7 * e[0] + 0.3 * e[1], dim=0)
    torch.testing.assert_close(r.style.embedding, expected)
    with pytest.raises(ValueError, match="prompt weights"):
        train_style(vae, text, photo, ["fire", "ice"], small_config(epochs=1), prompt_weights=[1.0])


def test_bf16_trains_on_the_cpu(parts, photo):
    """--precision bf16 on a CPU (documented: "bf16/fp16 force one") failed in the first step with a traceback: the
    CPU's antialiased bicubic resize of the output for the image tower has no bf16 kernel."""
    vae, text, _, _ = parts
    r = train_style(vae, text, photo, "oil painting", small_config(epochs=2, precision="bf16"), device="cpu")
    assert r.steps == 2 and all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in r.history)


def test_bad_inputs(parts, photo):
    vae, text, _, _ = parts
    with pytest.raises(ValueError, match="empty style prompt"):
        train_style(vae, text, photo, "", small_config(epochs=1))
    with pytest.raises(ValueError, match="content image 0 has shape"):
        train_style(vae, text, torch.rand(1, 2, 64, 64), "x", small_config(epochs=1))
    with pytest.raises(ValueError, match="no content images"):
        train_style(vae, text, [], "x", small_config(epochs=1))
    # a style prompt that is the source prompt (or a reference that looks like the content) points nowhere: the
    # directional losses would sit at 1 with no gradient (before: trained without a word)
    with pytest.raises(ValueError, match="encodes the same as the source prompt 'a photo'.*nothing to learn"):
        train_style(vae, text, photo, "a photo", small_config(epochs=1, loss=dict(source_prompt="a photo")))
    from stylemamba.direction import TextDirection

    same = TextDirection.from_reference(text, photo, source_images=photo)
    with pytest.raises(ValueError, match="does not look like the content photos"):
        train_style(vae, text, photo, same, small_config(epochs=1))
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

    def oom(self, epoch, *args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(StyleTrainer, "step", oom)
    with pytest.raises(OutOfMemory, match=r"Lower TrainConfig.resolution \(e.g. 384"):
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


def test_a_0_1_0_recipe_reads_with_todays_names():
    from pathlib import Path

    from stylemamba.style_file import read_style_metadata
    from stylemamba.train import TrainConfig

    recipe = read_style_metadata(Path(__file__).parent / "data" / "v0_1_0" / "style_v0_1_0.safetensors")["recipe"]
    assert recipe["amp"] == "auto" and "content_weight_start" in recipe["loss"] and "use_patch" in recipe["loss"]
    cfg = TrainConfig.from_dict(recipe)
    assert cfg.precision == "auto" and cfg.epochs == recipe["epochs"]
    assert (cfg.loss.vgg_weight_start, cfg.loss.vgg_weight_end) == (recipe["loss"]["content_weight_start"],
                                                                     recipe["loss"]["content_weight_end"])
    assert cfg.loss.patch == recipe["loss"]["patch"]


def test_the_step_sees_the_clamped_output_and_pulls_the_raw_one_into_range(parts, photo):
    """clamp_output (default): the losses see Y clamped to [0, 1], as stylising gives it; the range term is the
    penalty of the RAW output (what the step returns)."""
    from stylemamba.losses import range_penalty
    from stylemamba.train import seen_output

    raw = torch.tensor([-0.5, 0.25, 1.5])
    assert seen_output(raw, small_config().loss).tolist() == [0.0, 0.25, 1.0]
    assert seen_output(raw, small_config(loss=dict(clamp_output=False)).loss).tolist() == raw.tolist()
    vae, text, _, _ = parts
    trainer = StyleTrainer(vae, text, photo, "pop art", small_config(epochs=1))
    terms, y = trainer.step(0)
    assert torch.allclose(terms["range"], range_penalty(y)), (terms["range"], range_penalty(y))
    off = StyleTrainer(vae, text, photo, "pop art", small_config(epochs=1, loss=dict(range_weight=0.0)))
    assert "range" not in off.step(0)[0]


def test_same_crop_and_same_mask_references_use_the_steps_boxes_and_mask(parts, photo_batch):
    """The references are the content image under the SAME crops and mask as Y (so Y = X gives equal views),
    and micro-batches give the whole batch's terms."""
    from stylemamba.train import step_views

    vae, text, _, _ = parts
    cfg = small_config(epochs=2, loss=dict(crop_reference="same-crop", mask_reference="same-mask"))
    x = prepare_content(photo_batch, 64)
    views = step_views(x, cfg.loss, 32, torch.Generator().manual_seed(0), content=x)
    b, n = x.shape[0], cfg.loss.n_crops
    assert views.references.shape[0] == b * n + b
    torch.testing.assert_close(views.references, views.images[b:])
    emb = torch.arange(views.references.shape[0], dtype=torch.float32)[:, None]
    crops, masked = views.split_references(emb)
    assert crops.shape[0] == b * n and masked[:, 0].tolist() == [b * n, b * n + 1]
    with pytest.raises(ValueError, match="content"):
        step_views(x, cfg.loss, 32, torch.Generator().manual_seed(0))
    runs = [train_style(vae, text, photo_batch, "pop art", dataclasses.replace(cfg, memory_plan=plan))
            for plan in ("fast", "micro_batch=1")]
    for ha, hb in zip(runs[0].history, runs[1].history):
        assert ha.keys() == hb.keys() >= {"patch", "md", "range"}
        for k in ha:
            assert abs(ha[k] - hb[k]) <= 1e-4 * abs(ha[k]) + 1e-7, (k, ha[k], hb[k])
    full = train_style(vae, text, photo_batch, "pop art", small_config(epochs=1))
    assert full.history[0]["patch"] != runs[0].history[0]["patch"]  # the reference changes the term


@pytest.mark.parametrize("options, message", [
    ({"epochs": "3"}, "TrainConfig.epochs must be an integer, got '3'"),
    ({"lr": "1e-3"}, "TrainConfig.lr must be a finite number, got '1e-3'"),
    ({"epochs": 2.5}, "TrainConfig.epochs must be an integer, got 2.5"),
    ({"gradient_checkpointing": "false"}, "TrainConfig.gradient_checkpointing must be true or false, got 'false'"),
    ({"lr": float("inf")}, "TrainConfig.lr must be a finite number"),
    ({"lr_decay": -0.5}, "TrainConfig.lr_decay=-0.5 is invalid: it must be > 0"),
    ({"preview_every": -1}, "TrainConfig.preview_every=-1 is invalid"),
    ({"fusion": {"width": "16"}}, "FusionConfig.width must be an integer, got '16'"),
])
def test_options_of_the_wrong_kind_are_named(options, message):
    """Options given as strings from the Python API (or a --config file): "3" failed with "'>=' not supported between
    'str' and 'int'" (a TypeError: a traceback from the CLI), 2.5 epochs and an infinite lr trained, and the string
    "false" turned gradient checkpointing on."""
    from stylemamba.train import TrainConfig

    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig.from_dict(options)
    assert TrainConfig.from_dict({"epochs": np.int64(3), "lr": np.float32(1e-3), "lr_decay": 1}).epochs == 3



def test_numpy_and_torch_scalars_and_0_1_switches_still_train_as_plain_values():
    """Refused by the kind checks, though they trained before: np.bool_ (what a numpy comparison gives) and 0 / 1 for
    a switch, and torch.tensor(1e-3) for lr. They are kept as Python's own numbers (a recipe writes those)."""
    from stylemamba.train import TrainConfig

    cfg = TrainConfig(gradient_checkpointing=np.bool_(True), channels_last=0, lr=torch.tensor(1e-3),
                      epochs=np.int64(3), fusion={"mlp_ratio": np.float32(0.5)})
    assert cfg.gradient_checkpointing is True and cfg.channels_last is False
    assert type(cfg.lr) is float and cfg.lr == pytest.approx(1e-3) and type(cfg.epochs) is int
    assert type(cfg.fusion.mlp_ratio) is float
    with pytest.raises(ValueError, match="channels_last must be true or false, got 2"):
        TrainConfig(channels_last=2)


def test_a_diverged_run_makes_no_style_and_says_to_lower_the_learning_rate(parts, photo):
    """At learning rate 1 the weights became NaN: the run returned (the CLI saved and said it succeeded) a style that
    stylises every picture black, and printed its losses as bare NaN."""
    from stylemamba.train import TrainingDiverged

    vae, text, _, _ = parts
    with pytest.raises(TrainingDiverged, match=r"training diverged at step \d+ of 6: the style's weights became NaN "
                                               r"or infinite, so no style was made; the learning rate 1 is too high"):
        train_style(vae, text, photo, "oil painting", small_config(epochs=6, lr=1.0))
    assert issubclass(TrainingDiverged, ValueError)  # the CLI's one error line, exit 2
    sane = train_style(vae, text, photo, "oil painting", small_config(epochs=6))
    assert all(bool(torch.isfinite(d).all()) for d in sane.style.decoder_delta.values())


def test_recipes_and_contents_that_cannot_train_are_named_before_the_models_work(parts, tmp_path):
    """A recipe with "loss": null or "fusion": "mamba" crashed with an AttributeError after the models loaded; one
    with every style loss at 0 trained a style that ignored its prompt, without a word; a path, PIL or numpy image as
    content raised a bare AttributeError ('str' object has no attribute 'dim')."""
    import numpy
    from PIL import Image

    from stylemamba.train import TrainConfig

    with pytest.raises(ValueError, match=r"TrainConfig.loss=None is invalid: it must be the loss settings"):
        TrainConfig.from_dict({"loss": None})
    with pytest.raises(ValueError, match=r"TrainConfig.fusion='mamba' is invalid: it must be the fusion settings"):
        TrainConfig.from_dict({"fusion": "mamba"})
    with pytest.raises(ValueError, match=r"turns off every style loss .* set at least one above 0"):
        TrainConfig.from_dict({"loss": {"dir": 0, "patch": 0, "md": 0, "so": 0}})
    TrainConfig.from_dict({"loss": {"dir": 0, "patch": 0, "md": 0, "so": 1}})  # one is enough
    picture = Image.new("RGB", (32, 32))
    for content in (str(tmp_path / "photo.png"), picture, numpy.zeros((32, 32, 3), numpy.uint8), [picture]):
        with pytest.raises(TypeError, match=r"content image 0 is a \w+: give image tensors .*train.load_content"):
            prepare_content(content, 64)


def test_fine_tuning_a_style_of_another_kind_of_text_model_is_refused(parts, photo, tiny_models):
    """Tiny CLIP and tiny SigLIP both give 768-d embeddings: a CLIP style started a SigLIP run without a word (only
    the width was checked; a universal model's start checks its text model)."""
    vae, siglip, _, _ = parts
    clip = load_text_image_encoder(tiny_models["clip"])
    clip_style = train_style(vae, clip, photo, "oil painting", small_config(epochs=1)).style
    with pytest.raises(ValueError, match=r"style '.*' was trained with a clip text model .* this run encodes with a "
                                         r"siglip one: its fusion module reads another embedding space"):
        train_style(vae, siglip, photo, "watercolor", small_config(epochs=1), start=clip_style)
    assert train_style(vae, clip, photo, "watercolor", small_config(epochs=1), start=clip_style).steps == 1
