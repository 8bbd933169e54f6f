"""Universal model training in one process: sampler, per-row prompts, files, styles from it, checkpoints and resume."""
from __future__ import annotations

import re
import signal

import pytest
import torch
from conftest import load_photo

from stylemamba.checkpoint import CheckpointError, list_checkpoints
from stylemamba.encoders import load_text_image_encoder
from stylemamba.fusion import FusionConfig
from stylemamba.losses import LossConfig
from stylemamba.style_file import (StyleFileError, file_kind, load_style, load_universal, read_style_metadata,
                                   save_style, save_universal)
from stylemamba import universal as universal_module
from stylemamba.stylize import stylize
from stylemamba.universal import (UNIVERSAL_VGG_TERM, PairSampler, UniversalConfig, UniversalTrainer, train_universal,
                                  universal_loss)
from stylemamba.vae import load_vae

PROMPTS = ["oil painting", "watercolor", "pencil sketch"]


def tiny_config(**overrides) -> UniversalConfig:
    loss = dict(n_crops=2, crop_fraction=0.5, so_interval=1, so_theta=2.0)
    loss.update(overrides.pop("loss", {}))
    cfg = dict(epochs=2, steps_per_epoch=2, batch_size=2, resolution=64, lr_decay_epoch=1, log_every=1,
               checkpoint_every=1, loss=universal_loss(**loss), fusion=FusionConfig(width=16, depth=1, d_state=4))
    cfg.update(overrides)
    return UniversalConfig(**cfg)


@pytest.fixture(scope="module")
def models(tiny_models):
    return load_vae(tiny_models["vae"]), load_text_image_encoder(tiny_models["siglip"])


@pytest.fixture(scope="module")
def images():
    return torch.cat([load_photo(n, 64) for n in ("astronaut", "chelsea", "coffee")])


def _params(trainer_or_net):
    net = getattr(trainer_or_net, "net", trainer_or_net)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_universal_training_keeps_its_vgg_term():
    """docs/METHOD_CHOICES.md item 5 turned the VGG term off for per-style training only: the universal recipe keeps
    0.1.0's raw mean 9000 -> 150, also when a config mapping leaves the VGG options out; given ones are kept."""
    term = ("mean", 9000.0, 150.0)
    for cfg in (UniversalConfig(), UniversalConfig.from_dict({"loss": {"n_crops": 8}}),
                UniversalConfig.from_dict(UniversalConfig().to_dict())):
        assert (cfg.loss.vgg_reduction, cfg.loss.vgg_weight(0), cfg.loss.vgg_weight(5)) == term
    assert dict(UNIVERSAL_VGG_TERM) == dict(zip(("vgg_reduction", "vgg_weight_start", "vgg_weight_end"), term))
    given = UniversalConfig.from_dict({"loss": {"vgg_weight_start": 0.0, "vgg_weight_end": 0.0}}).loss
    assert not given.uses_vgg and not LossConfig().uses_vgg
    old = UniversalConfig.from_dict({"loss": {"content_weight_start": 5.0}}).loss  # 0.1.0's name
    assert (old.vgg_weight_start, old.vgg_weight_end, old.vgg_reduction) == (5.0, 150.0, "mean")


def test_pair_sampler_is_a_function_of_seed_and_step_and_splits_evenly():
    s = PairSampler(n_images=5, prompt_weights=[1, 1, 6], batch_size=4, seed=3)
    a = s.global_batch(7)
    assert all(torch.equal(x, y) for x, y in zip(a, PairSampler(5, [1, 1, 6], 4, 3).global_batch(7)))
    assert not torch.equal(a[1], s.global_batch(8)[1]) or not torch.equal(a[0], s.global_batch(8)[0])
    # every image once per pass over the set (5 images, 4 per step: steps 0..4 hold 4 full passes)
    seen = torch.cat([s.global_batch(k)[0] for k in range(5)])
    assert sorted(seen.tolist()) == sorted(list(range(5)) * 4)
    prompts = torch.cat([s.global_batch(k)[1] for k in range(300)])
    share = float((prompts == 2).float().mean())
    assert 0.65 < share < 0.85, share  # weight 6 of 8
    assert list(s.rows(0, 2)) == [0, 1] and list(s.rows(1, 2)) == [2, 3] and list(s.rows(0, 1)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        s.rows(0, 3)


def test_batches_mix_prompts_each_row_with_its_own_condition(models, images):
    vae, text = models
    trainer = UniversalTrainer(vae, text, images, PROMPTS, tiny_config(batch_size=4))
    rows_seen = []
    original = trainer.ddp.forward

    def spy(z, cond):
        rows_seen.append(cond.detach().clone())
        return original(z, cond)

    trainer.ddp.forward = spy
    for _ in range(3):
        terms = trainer.step()
        assert {"dir", "patch", "md"} <= set(terms) and all(torch.isfinite(v) for v in terms.values())
    conds = torch.cat(rows_seen)
    emb = text.encode_text(PROMPTS)
    matches = [(torch.cdist(c[None], emb)[0].argmin()).item() for c in conds]
    assert all(torch.allclose(c, emb[m], atol=1e-6) for c, m in zip(conds, matches))  # each row: one bank prompt
    assert len(set(matches)) >= 2  # batches mix prompts
    # the second-order loss runs (against the previous epoch's weights) from epoch so_interval on
    assert trainer.epoch_of(2) == 1 and "so" in terms


@pytest.mark.parametrize("loss", [dict(so_form="eq4", clamp_output=False, range_weight=0.0),
                                  dict(crop_reference="same-crop", mask_reference="same-mask", vgg_reduction="sum")],
                         ids=["paper forms", "same-crop and same-mask references"])
def test_the_per_style_loss_options_train_the_universal_model(models, images, loss):
    """The universal trainer takes the per-style losses' options: the paper's forms (Eq. 4, raw output) and the
    same-crop / same-mask references (drawn per row with the row's generator); the defaults add the range term."""
    vae, text = models
    trainer = UniversalTrainer(vae, text, images, PROMPTS, tiny_config(loss=loss))
    before = _params(trainer)
    first = trainer.step()
    for _ in range(2):
        terms = trainer.step()
        assert {"dir", "patch", "md"} <= set(terms) and all(torch.isfinite(v) for v in terms.values())
    assert "so" in terms and ("range" in terms) == (loss.get("range_weight", 1e6) > 0)
    after = _params(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    default = UniversalTrainer(vae, text, images, PROMPTS, tiny_config()).step()
    assert "range" in default and float(default["range"]) >= 0.0
    if "mask_reference" in loss:  # same first output (batch, weights, views), but the masked view is compared
        assert torch.equal(first["dir"], default["dir"])  # with the same-masked content image instead
        assert not torch.equal(first["md"], default["md"])
    else:  # the paper's forms see the raw output
        assert not torch.equal(first["dir"], default["dir"])


def test_universal_file_round_trip_kinds_and_styles_from_it(models, images, photo, tmp_path):
    vae, text = models
    trainer = UniversalTrainer(vae, text, images, PROMPTS, tiny_config(epochs=1))
    model = trainer.run().model
    assert model.metadata["bank_size"] == 3 and model.metadata["steps"] == 2
    path = save_universal(model, tmp_path / "uni", delta_dtype=torch.float32)["path"]
    assert file_kind(path) == "universal"
    loaded = load_universal(path)
    assert torch.equal(loaded.source_embedding, model.source_embedding)
    assert loaded.metadata["bank_prompts"] == PROMPTS and loaded.metadata["text_model"] == text.name
    with pytest.raises(StyleFileError, match="universal StyleMamba model.*Universal Style"):
        load_style(path)
    with pytest.raises(StyleFileError, match="universal StyleMamba model"):
        read_style_metadata(path)

    e = text.encode_text(["watercolor"])[0]
    style = loaded.style(e, {"prompts": ["watercolor"]})
    out = stylize(photo, vae, style)
    # the style IS the trained network conditioned on e_t: the same pixels as its forward pass
    with torch.no_grad():
        direct = trainer.net(vae.encode(photo), e[None]).clamp(0, 1)
    assert (direct - out).abs().max() < 1e-5
    style_path = save_style(style, tmp_path / "from_uni", delta_dtype=torch.float32)["path"]
    assert file_kind(style_path) == "style" and load_style(style_path).metadata["universal_model"] == "uni.safetensors"
    with pytest.raises(StyleFileError, match="is a style trained for 'watercolor', not a universal model"):
        load_universal(style_path)
    assert torch.equal(stylize(photo, vae, load_style(style_path)), out)
    other = loaded.style(text.encode_text(["pencil sketch"])[0])
    assert not torch.equal(stylize(photo, vae, other), out)  # the prompt changes the output
    with pytest.raises(StyleFileError, match="4-d embeddings but universal model"):
        loaded.style(torch.ones(4))


def test_stopped_and_resumed_run_equals_the_uninterrupted_one(models, images, tmp_path):
    vae, text = models
    straight = train_universal(vae, text, images, PROMPTS, tiny_config(), checkpoint_dir=tmp_path / "a")
    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] >= 3

    first = train_universal(vae, text, images, PROMPTS, tiny_config(), checkpoint_dir=tmp_path / "b",
                            should_stop=stop_after_three)
    assert first.cancelled and first.steps == 3 and first.checkpoint.name == "step-00000003"
    # the checkpoint of step 3 lies in the epoch whose successor uses the second-order snapshot
    with pytest.raises(FileExistsError, match="pass --resume"):
        UniversalTrainer(vae, text, images, PROMPTS, tiny_config(), checkpoint_dir=tmp_path / "b")
    resumed = UniversalTrainer(vae, text, images, PROMPTS, tiny_config(), checkpoint_dir=tmp_path / "b", resume=True)
    assert resumed.step_index == 3
    result = resumed.run()
    assert result.steps == 4 and not result.cancelled
    a, b = straight.model, result.model
    for k in a.fusion_state:
        assert torch.equal(a.fusion_state[k], b.fusion_state[k]), k
    for k in a.decoder_delta:
        assert torch.equal(a.decoder_delta[k], b.decoder_delta[k]), k
    assert [h["total"] for h in straight.history] == [h["total"] for h in result.history]
    assert len(list_checkpoints(tmp_path / "b")) == 2  # keep_checkpoints
    with pytest.raises(CheckpointError, match="belongs to another run: bank '[0-9a-f]+' in the checkpoint"):
        UniversalTrainer(vae, text, images, PROMPTS[:2], tiny_config(), checkpoint_dir=tmp_path / "b", resume=True)


def test_resuming_where_a_field_changed_between_a_value_and_nested_fields_names_both():
    # before: "recipe.memory_plan (not recorded in the checkpoint)", though the checkpoint recorded 'auto'
    mine = {"recipe": {"memory_plan": {"micro_batch": 1, "checkpointing": False}, "lr": 0.001}}
    theirs = {"recipe": {"memory_plan": "auto", "lr": 0.001, "dropped_since": 3}}
    assert universal_module._differences(mine, theirs) == [
        "recipe.memory_plan 'auto' in the checkpoint, {\"checkpointing\": false, \"micro_batch\": 1} now"]
    assert universal_module._differences({"recipe": {"new": 2}}, {"recipe": {}}) == [
        "recipe.new not recorded in the checkpoint, 2 now"]


def test_a_universal_run_resumes_with_another_memory_plan(models, images, tmp_path):
    """Universal training does not use memory_plan (it says so), yet a resume with another one was refused."""
    vae, text = models
    first = train_universal(vae, text, images, PROMPTS, tiny_config(), checkpoint_dir=tmp_path,
                            should_stop=lambda: True)
    assert first.checkpoint is not None
    plan = {"micro_batch": 1, "view_chunk": 0, "checkpointing": False}
    trainer = UniversalTrainer(vae, text, images, PROMPTS, tiny_config(memory_plan=plan), checkpoint_dir=tmp_path,
                               resume=True)
    assert trainer.step_index == first.steps > 0


def test_ctrl_c_from_python_stops_after_the_step_with_a_checkpoint(models, images, tmp_path):
    """train_universal called from a script without should_stop: Ctrl-C used to raise KeyboardInterrupt in mid-step
    and lose the run; it now stops after the step, writes the checkpoint and returns the model so far."""
    vae, text = models

    def caller_handler(signum, frame):
        raise AssertionError("Ctrl-C reached the caller: the run was lost")

    def on_log(line):
        if line.step == 2:
            signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGINT, caller_handler)
    try:
        result = train_universal(vae, text, images, PROMPTS, tiny_config(), checkpoint_dir=tmp_path / "ck",
                                 on_log=on_log)
        assert signal.getsignal(signal.SIGINT) is caller_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.cancelled and result.steps == 2 and result.checkpoint.name == "step-00000002"


def test_a_frozen_decoder_trains_only_the_fusion_module(models, images, tmp_path):
    vae, text = models
    trainer = UniversalTrainer(vae, text, images, PROMPTS, tiny_config(decoder_lr_scale=0.0),
                               checkpoint_dir=tmp_path / "ck")
    assert all(n.startswith("model.fusions.") for n in trainer.names)
    result = trainer.run()
    assert max(float(d.abs().max()) for d in result.model.decoder_delta.values()) == 0.0
    before = UniversalTrainer(vae, text, images, PROMPTS, tiny_config()).net.model.fusion.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in result.model.fusion_state.items())
    resumed = UniversalTrainer(vae, text, images, PROMPTS, tiny_config(decoder_lr_scale=0.0),
                               checkpoint_dir=tmp_path / "ck", resume=True)  # the optimizer state matches again
    assert resumed.step_index == 4


def test_gradient_checkpointing_recomputes_and_trains_the_same(models, images):
    vae, text = models
    plain = UniversalTrainer(vae, text, images, PROMPTS, tiny_config(epochs=1, steps_per_epoch=1))
    saving = UniversalTrainer(vae, text, images, PROMPTS, tiny_config(epochs=1, steps_per_epoch=1,
                                                                      gradient_checkpointing=True))
    assert saving.net.model.decoder.decoder.gradient_checkpointing
    assert not plain.net.model.decoder.decoder.gradient_checkpointing
    a, b = plain.step(), saving.step()
    assert torch.allclose(a["total"], b["total"], rtol=1e-5)
    for (k, p), q in zip(plain.net.named_parameters(), saving.net.parameters()):
        assert torch.allclose(p, q, atol=1e-6), k


@pytest.mark.parametrize("bank", ["watercolor", "prompts.txt"])
def test_a_string_as_the_bank_is_refused_not_read_letter_by_letter(models, images, bank):
    """A string is a sequence of its letters: 'abc' trained on the prompts 'a', 'b', 'c'; a file name failed with
    "prompt 't' repeats line 9"."""
    vae, text = models
    with pytest.raises(TypeError, match=f"not the string '{bank}'.*load_prompt_bank"):
        UniversalTrainer(vae, text, images, bank, tiny_config())


def test_a_file_as_the_checkpoint_directory_is_named(models, images, tmp_path):
    vae, text = models
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt is a file, not a folder: give a folder"):
        UniversalTrainer(vae, text, images, PROMPTS, tiny_config(), checkpoint_dir=taken)
    assert taken.read_text() == "mine"


def test_bf16_on_the_cpu_trains(models, images):
    """--precision bf16 --device cpu (allowed: only fp16 needs CUDA) crashed in the tower's antialiased bicubic resize,
    which PyTorch has no bf16 CPU kernel for (the per-style trainer's step views and the second-order reference)."""
    vae, text = models
    result = UniversalTrainer(vae, text, images, PROMPTS, tiny_config(precision="bf16")).run()
    assert result.steps == 4 and "so" in result.history[-1]
    assert all(torch.isfinite(torch.tensor(v)) for v in result.history[-1].values())


def test_a_folder_or_file_name_as_the_images_is_read_as_photos(tmp_path):
    """A string is a sequence of its letters: ImageSet('photos') held the 'files' 'p', 'h', 'o' ... ('image not found:
    p'); a folder or a file name is now read as the command line reads --images."""
    from stylemamba.image_io import save_image
    from stylemamba.universal import ImageSet

    for name in ("astronaut", "chelsea"):
        save_image(load_photo(name, 64)[0], tmp_path / f"{name}.png")
    assert [p.name for p in ImageSet(str(tmp_path), 64).items] == ["astronaut.png", "chelsea.png"]
    one = ImageSet(tmp_path / "chelsea.png", 64)
    assert len(one) == 1 and one[0].shape == (3, 64, 64)


def test_a_per_style_recipe_as_the_config_is_named(models, images):
    """A TrainConfig (the README's per-style recipe) failed with "'TrainConfig' object has no attribute
    'batch_size'"."""
    from stylemamba.train import TrainConfig

    vae, text = models
    with pytest.raises(TypeError, match="UniversalConfig.*not a TrainConfig"):
        UniversalTrainer(vae, text, images, PROMPTS, TrainConfig(resolution=64))


def test_a_last_checkpoint_that_cannot_be_written_keeps_the_trained_model(models, images, tmp_path, monkeypatch,
                                                                         caplog):
    """With checkpoint_every 0 (a checkpoint only at the end) a full disk at the end lost the whole run: the error
    came before the model was returned. Now it is logged and the model returned (to be saved elsewhere)."""
    import errno

    import safetensors.torch

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    vae, text = models
    with caplog.at_level("ERROR", logger="stylemamba"):
        result = train_universal(vae, text, images, PROMPTS, tiny_config(epochs=1, checkpoint_every=0),
                                 checkpoint_dir=tmp_path / "ck")
    assert result.steps == 2 and result.checkpoint is None and result.model.decoder_delta
    assert "step-00000002 could not be written" in caplog.text and "No earlier checkpoint" in caplog.text
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["log.jsonl"]  # no half checkpoint


def test_a_run_killed_after_its_last_checkpoint_logs_each_step_once(models, images, tmp_path):
    """Killed after step 4 was logged but before its checkpoint was written, the run resumed from step 2 and logged
    steps 3 and 4 again: log.jsonl held them twice (and a line half-written by the kill stayed broken)."""
    import json
    import shutil

    vae, text = models
    ck = tmp_path / "ck"
    train_universal(vae, text, images, PROMPTS, tiny_config(checkpoint_every=2), checkpoint_dir=ck)
    shutil.rmtree(ck / "step-00000004")  # what a kill before the last checkpoint leaves
    with open(ck / "log.jsonl", "a") as f:
        f.write('{"step": 5, "total_st')
    result = train_universal(vae, text, images, PROMPTS, tiny_config(checkpoint_every=2), checkpoint_dir=ck,
                             resume=True)
    assert result.steps == 4
    assert [json.loads(line)["step"] for line in (ck / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


@pytest.mark.parametrize("options, message", [
    ({"batch_size": "8"}, "UniversalConfig.batch_size must be an integer, got '8'"),
    ({"checkpoint_every": 1.5}, "UniversalConfig.checkpoint_every must be an integer, got 1.5"),
    ({"keep_checkpoints": True}, "UniversalConfig.keep_checkpoints must be an integer, got True"),
])
def test_universal_options_of_the_wrong_kind_are_named(options, message):
    """A string "8" as the batch size failed with a TypeError; 1.5 as checkpoint_every wrote a checkpoint every 3
    steps."""
    with pytest.raises(ValueError, match=re.escape(message)):
        UniversalConfig.from_dict(options)


def test_a_memory_plan_in_the_universal_recipe_is_said_to_be_unused(models, images, caplog):
    """memory_plan 'micro_batch=1' in a universal recipe was followed by nothing, without a word: the run took the
    memory of the whole batch as if no plan had been asked for."""
    vae, text = models
    with caplog.at_level("WARNING", logger="stylemamba"):
        UniversalTrainer(vae, text, images, PROMPTS, tiny_config(memory_plan="micro_batch=1"))
    assert 'memory_plan {"micro_batch": 1, "view_chunk": 0, "checkpointing": false} is not used' in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="stylemamba"):
        UniversalTrainer(vae, text, images, PROMPTS, tiny_config())
    assert "memory_plan" not in caplog.text


def test_a_run_stopped_between_two_log_lines_resumes_to_the_same_losses(models, images, tmp_path):
    """Stopped at step 3 with a loss line every 2 steps, the resumed run's history held a line at step 3 and one at
    step 4 for step 4 alone: the model file's final_losses and log.jsonl differed from an uninterrupted run's (the
    weights did not). The checkpoint now keeps the open interval's loss sums."""
    import json

    vae, text = models
    straight = train_universal(vae, text, images, PROMPTS, tiny_config(log_every=2, checkpoint_every=2),
                               checkpoint_dir=tmp_path / "a")
    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] >= 3

    stopped = train_universal(vae, text, images, PROMPTS, tiny_config(log_every=2, checkpoint_every=2),
                              checkpoint_dir=tmp_path / "b", should_stop=stop_after_three)
    assert stopped.cancelled and [h["step"] for h in stopped.history] == [2, 3]  # the stop still shows its losses
    resumed = train_universal(vae, text, images, PROMPTS, tiny_config(log_every=2, checkpoint_every=2),
                              checkpoint_dir=tmp_path / "b", resume=True)
    assert resumed.history == straight.history and [h["step"] for h in resumed.history] == [2, 4]
    assert resumed.model.metadata["final_losses"] == straight.model.metadata["final_losses"]
    lines = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [(x["step"], x["losses"]) for x in lines] == [(h["step"], {k: v for k, v in h.items() if k != "step"})
                                                         for h in straight.history]


def test_resuming_with_fewer_epochs_than_the_checkpoint_is_refused(models, images, tmp_path):
    """A checkpoint at step 4 resumed with a 1-epoch recipe (2 steps) wrote its 4-step model as the 2-step recipe's,
    with no word; now it is named, with how many epochs resume."""
    vae, text = models
    train_universal(vae, text, images, PROMPTS, tiny_config(), checkpoint_dir=tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"at step 4, past this recipe's 2 steps \(1 epochs\): resume with at "
                                              r"least 2 epochs \(--epochs 2\)"):
        UniversalTrainer(vae, text, images, PROMPTS, tiny_config(epochs=1), checkpoint_dir=tmp_path / "ck",
                         resume=True)
    same = UniversalTrainer(vae, text, images, PROMPTS, tiny_config(), checkpoint_dir=tmp_path / "ck", resume=True)
    assert same.step_index == 4  # as many epochs as the checkpoint: nothing left to train, accepted


def test_a_checkpoint_whose_weights_do_not_fit_is_named_not_a_traceback(models, images, tmp_path):
    """A tensor of another shape in a checkpoint's model.safetensors (edited, or a damaged copy) gave torch's
    RuntimeError from load_state_dict: now the project's CheckpointError, naming the folder and the fix."""
    from safetensors.torch import load_file, save_file

    vae, text = models
    first = train_universal(vae, text, images, PROMPTS, tiny_config(), checkpoint_dir=tmp_path,
                            should_stop=lambda: True)
    weights = first.checkpoint / "model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.startswith("model.decoder."))
    tensors[key] = tensors[key].flatten()[:1]
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match=rf"checkpoint {re.escape(str(first.checkpoint))}: its "
                                              rf"model.safetensors does not fit this model \(of another shape "
                                              rf"{re.escape(key)} \(1 in the file"):
        UniversalTrainer(vae, text, images, PROMPTS, tiny_config(), checkpoint_dir=tmp_path, resume=True)


def test_speed_options_universal_training_does_not_apply_are_said_and_free_on_resume(models, images, tmp_path,
                                                                                   caplog):
    """cuda_graphs, matmul_attention and autocast_groupnorm in a universal recipe were followed by nothing without a
    word, yet part of the resume identity: changing an option that did nothing refused the resume."""
    vae, text = models
    with caplog.at_level("WARNING", logger="stylemamba"):
        first = train_universal(vae, text, images, PROMPTS, tiny_config(), checkpoint_dir=tmp_path,
                                should_stop=lambda: True)
    assert "is not used" not in caplog.text
    caplog.clear()
    changed = dict(cuda_graphs="on", matmul_attention=False, autocast_groupnorm=False)
    with caplog.at_level("WARNING", logger="stylemamba"):
        trainer = UniversalTrainer(vae, text, images, PROMPTS, tiny_config(**changed), checkpoint_dir=tmp_path,
                                   resume=True)
    assert trainer.step_index == first.steps > 0
    for said in ('cuda_graphs "on" is not used: its steps run eagerly',
                 "matmul_attention false is not used", "autocast_groupnorm false is not used"):
        assert said in caplog.text, caplog.text


def _perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """The same layout and name, other weights (a fine-tune, or another model's copy in a folder of that name)."""
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1.25).add_(0.01)
    return module


def _forget(checkpoint, *fields: str, photos: bool = False) -> None:
    """Make ``checkpoint`` look written by an older version: its identity without ``fields`` (and no photo list)."""
    import json

    state_file = checkpoint / "trainer.json"
    state = json.loads(state_file.read_text())
    for field in fields:
        state["identity"].pop(field)
    if photos:
        state.pop("photos")
    state_file.write_text(json.dumps(state))


def test_resuming_with_other_vae_or_text_model_weights_of_the_same_layout_is_refused(models, images, tiny_models,
                                                                                     tmp_path):
    """The resume compared only the VAE's layout and the text model's folder name: a run resumed with other weights
    of the same layout went on silently, training a model for neither. An older checkpoint (without the weights'
    record) still resumes."""
    vae, text = models
    first = train_universal(vae, text, images, PROMPTS, tiny_config(), checkpoint_dir=tmp_path,
                            should_stop=lambda: True)
    other_vae = load_vae(tiny_models["vae"])
    _perturbed(other_vae.decoder)
    with pytest.raises(CheckpointError, match=r"belongs to another run: the VAE: trained on the VAE .*\(weights "
                                              r"[0-9a-f]{12}\), but the VAE given now \(--vae\) is .*\(weights "
                                              r"[0-9a-f]{12}\)\. Resume with the same .*without --resume"):
        UniversalTrainer(other_vae, text, images, PROMPTS, tiny_config(), checkpoint_dir=tmp_path, resume=True)
    other_text = _perturbed(load_text_image_encoder(tiny_models["siglip"]))
    with pytest.raises(CheckpointError, match=r"the text model: trained with 'siglip', but the text model given now "
                                              r"\(--text-model\) is 'siglip', of the same name but other weights"):
        UniversalTrainer(vae, other_text, images, PROMPTS, tiny_config(), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(CheckpointError) as other_prompt:  # another source prompt is not another text model
        UniversalTrainer(vae, text, images, PROMPTS, tiny_config(loss={"source_prompt": "a photo"}),
                         checkpoint_dir=tmp_path, resume=True)
    assert "source_prompt 'a plain photo' in the checkpoint" in str(other_prompt.value)
    assert "text model" not in str(other_prompt.value)
    assert UniversalTrainer(vae, text, images, PROMPTS, tiny_config(), checkpoint_dir=tmp_path,
                            resume=True).step_index == first.steps
    _forget(first.checkpoint, "base_vae_weights", "base_vae_name", "source_embedding")
    older = UniversalTrainer(vae, text, images, PROMPTS, tiny_config(), checkpoint_dir=tmp_path, resume=True)
    assert older.step_index == first.steps


@pytest.fixture
def photo_folder(tmp_path):
    from stylemamba.image_io import save_image

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        save_image(load_photo(name, 64)[0], folder / f"{name}.png")
    return folder


def test_the_same_photos_typed_another_way_resume_and_other_photos_are_told_in_words(models, photo_folder, tmp_path,
                                                                                     monkeypatch, caplog):
    """The photos were identified by their paths as typed: `--images photos` and `--images $PWD/photos` were
    different runs, and the error showed two hashes."""
    from stylemamba.image_io import list_images, save_image

    vae, text = models
    monkeypatch.chdir(photo_folder.parent)
    first = train_universal(vae, text, list_images("photos"), PROMPTS, tiny_config(), checkpoint_dir=tmp_path / "ck",
                            should_stop=lambda: True)
    again = UniversalTrainer(vae, text, list_images(photo_folder.resolve()), PROMPTS, tiny_config(),
                             checkpoint_dir=tmp_path / "ck", resume=True)
    assert again.step_index == first.steps
    (photo_folder / "coffee.png").unlink()
    save_image(load_photo("rocket", 64)[0], photo_folder / "rocket.png")
    with pytest.raises(CheckpointError, match=r"belongs to another run: images: the photos differ: 1 added "
                                              r"\(rocket.png\); 1 removed \(coffee.png\)"):
        UniversalTrainer(vae, text, list_images("photos"), PROMPTS, tiny_config(), checkpoint_dir=tmp_path / "ck",
                         resume=True)
    (photo_folder / "rocket.png").unlink()
    with pytest.raises(CheckpointError, match=r"images: the photos differ: 3 photos in the checkpoint, 2 now; 1 "
                                              r"removed \(coffee.png\)"):
        UniversalTrainer(vae, text, list_images("photos"), PROMPTS, tiny_config(), checkpoint_dir=tmp_path / "ck",
                         resume=True)
    save_image(load_photo("coffee", 96)[0], photo_folder / "coffee.png")  # re-saved under its name: resumes
    with caplog.at_level("WARNING", logger="stylemamba"):
        resaved = UniversalTrainer(vae, text, list_images("photos"), PROMPTS, tiny_config(),
                                   checkpoint_dir=tmp_path / "ck", resume=True)
    assert resaved.step_index == first.steps
    assert "1 photo(s) changed size since the checkpoint (coffee.png)" in caplog.text


def test_an_older_checkpoint_resumes_with_its_photos_typed_as_before_and_says_how_otherwise(models, photo_folder,
                                                                                           tmp_path, monkeypatch):
    import json

    from stylemamba.image_io import list_images
    from stylemamba.photo_set import paths_as_typed_fingerprint

    vae, text = models
    monkeypatch.chdir(photo_folder.parent)
    typed = list_images("photos")
    first = train_universal(vae, text, typed, PROMPTS, tiny_config(), checkpoint_dir=tmp_path / "ck",
                            should_stop=lambda: True)
    _forget(first.checkpoint, photos=True)
    state = json.loads((first.checkpoint / "trainer.json").read_text())
    state["identity"]["images"] = paths_as_typed_fingerprint(typed)  # what an older version recorded
    (first.checkpoint / "trainer.json").write_text(json.dumps(state))
    assert UniversalTrainer(vae, text, list_images("photos"), PROMPTS, tiny_config(), checkpoint_dir=tmp_path / "ck",
                            resume=True).step_index == first.steps
    with pytest.raises(CheckpointError, match=r"images: the checkpoint, written by an older version, identifies its "
                                              r"photos by their paths as typed.*give --images exactly as when the "
                                              r"run started"):
        UniversalTrainer(vae, text, list_images(photo_folder.resolve()), PROMPTS, tiny_config(),
                         checkpoint_dir=tmp_path / "ck", resume=True)


def test_a_bad_image_tensor_drawn_in_mid_run_is_named_by_its_place_and_the_run_kept(models, images, tmp_path,
                                                                                   monkeypatch):
    """A NaN tensor at place 3 of the set was reported as 'content image 0' (each is prepared alone), and the run
    it stopped when drawn kept nothing since its last checkpoint; now it is named by its place, the run stops as a
    Ctrl-C stops it, and the error carries the model trained so far."""
    from stylemamba.universal import ImageSet, PhotoUnreadable

    vae, text = models
    bad = images[0].clone()
    bad[0, 0, 0] = float("nan")
    photos = [*images.unbind(0), bad]
    with pytest.raises(ValueError, match="content image 3 has 1 NaN"):
        ImageSet(photos, 64)[3]
    monkeypatch.setattr(universal_module, "SOURCE_PHOTOS", 2)  # read before training: the first 2 (256 in real runs)
    with pytest.raises(PhotoUnreadable, match=r"content image 3 has 1 NaN .*\. Training stopped before step 2 of 4: "
                                              r"checkpoint .*step-00000001 keeps the run; continue it") as stopped:
        train_universal(vae, text, photos, PROMPTS, tiny_config(checkpoint_every=0), checkpoint_dir=tmp_path)
    partial = stopped.value.partial  # the seed's step 0 draws images 1 and 0, step 1 images 3 and 2
    assert partial.cancelled and partial.steps == 1 and partial.model.metadata["steps"] == 1
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"]
