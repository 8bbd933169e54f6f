"""The command line of zero-shot styles, in-process: train-universal, stylize with a prompt or a reference picture,
train a style from a reference picture or starting from the universal model, info; and the errors on the way."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import load_photo

from stylemamba.cli import main
from stylemamba.direction import TextDirection
from stylemamba.image_io import load_image, save_image
from stylemamba.style_file import load_style, load_universal

RECIPE = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "resolution": 64, "log_every": 1,
          "loss": {"n_crops": 2, "crop_fraction": 0.5}, "fusion": {"width": 16, "depth": 1, "d_state": 4}}


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("universal_cli")
    (root / "images").mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        save_image(load_photo(name, 64)[0], root / "images" / f"{name}.png")
    save_image(load_photo("rocket", 64)[0], root / "rocket.png")
    (root / "bank.txt").write_text("oil painting\nwatercolor\npencil sketch\n")
    (root / "recipe.json").write_text(json.dumps(RECIPE))
    common = ["--device", "cpu", "--vae", str(tiny_models["vae"])]
    text = ["--text-model", str(tiny_models["siglip"])]
    code = main(["train-universal", *common, *text, "--bank", str(root / "bank.txt"), "--images",
                 str(root / "images"), "--config", str(root / "recipe.json"), "--out", str(root / "uni.safetensors"),
                 "--checkpoint-dir", str(root / "ck"), "--quiet"])
    assert code == 0
    return root, common, text


def test_train_universal_refuses_to_overwrite_and_to_reuse_a_checkpoint_dir(setup, capsys):
    root, common, text = setup
    args = ["train-universal", *common, *text, "--bank", str(root / "bank.txt"), "--images", str(root / "images"),
            "--config", str(root / "recipe.json"), "--out", str(root / "uni.safetensors"), "--checkpoint-dir",
            str(root / "ck2")]
    assert main(args) == 2 and "pass --overwrite" in capsys.readouterr().err
    args[-3:] = [str(root / "uni2.safetensors"), "--checkpoint-dir", str(root / "ck")]
    assert main(args) == 2 and "pass --resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # nothing left to train: the model of the last checkpoint is written
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 2 and (root / "uni2.safetensors").is_file()


def test_stylize_with_a_prompt_or_a_reference_and_the_errors(setup, capsys):
    root, common, text = setup
    photo = str(root / "rocket.png")
    run = ["stylize", *common, *text, "--input", photo, "--quiet"]
    assert main(run + ["--universal", str(root / "uni.safetensors"), "--prompt", "watercolor", "--output",
                       str(root / "a.png")]) == 0
    assert main(run + ["--style", str(root / "uni.safetensors"), "--prompt", "watercolor", "--output",
                       str(root / "b.png")]) == 0  # recognised by its kind
    a, b = load_image(root / "a.png"), load_image(root / "b.png")
    assert a.shape == (1, 3, 64, 64) and torch.equal(a, b)
    assert main(run + ["--universal", str(root / "uni.safetensors"), "--prompt", "pencil sketch", "--output",
                       str(root / "c.png")]) == 0
    assert not torch.equal(load_image(root / "c.png"), a)
    assert main(run + ["--universal", str(root / "uni.safetensors"), "--reference", str(root / "images" / "coffee.png"),
                       "--output", str(root / "d.png")]) == 0
    capsys.readouterr()
    assert main(run + ["--universal", str(root / "uni.safetensors"), "--output", str(root / "e.png")]) == 2
    assert "add --prompt" in capsys.readouterr().err
    assert main(run + ["--prompt", "watercolor", "--output", str(root / "e.png")]) == 2
    assert "give one with --universal" in capsys.readouterr().err
    # the model records its text model by name only: without --text-model, the error says to give it
    assert main(["stylize", *common, "--input", photo, "--quiet", "--universal", str(root / "uni.safetensors"),
                 "--prompt", "watercolor", "--output", str(root / "e.png")]) == 2
    err = capsys.readouterr().err
    assert "universal model uni.safetensors names its text model" in err and "give it with --text-model" in err, err
    info = main(["info", str(root / "uni.safetensors")])
    out = json.loads(capsys.readouterr().out)
    assert info == 0 and out["kind"] == "universal" and out["bank_size"] == 3 and "bank_prompts" not in out


def test_prompts_of_no_words_the_text_model_knows_are_refused(setup, capsys):
    root, common, text = setup
    assert main(["stylize", *common, *text, "--input", str(root / "rocket.png"), "--quiet", "--universal",
                 str(root / "uni.safetensors"), "--prompt", "🎨🌊", "--output", str(root / "emoji.png")]) == 2
    err = capsys.readouterr().err  # before: a style of one unknown token, written silently
    assert "prompt '🎨🌊' has no words the text model knows" in err and not (root / "emoji.png").exists()
    (root / "odd_bank.txt").write_text("oil painting\n!!!\nwatercolor\n", encoding="utf-8")
    assert main(["train-universal", *common, *text, "--bank", str(root / "odd_bank.txt"), "--images",
                 str(root / "images"), "--config", str(root / "recipe.json"), "--out", str(root / "odd.safetensors"),
                 "--checkpoint-dir", str(root / "ck_odd"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{root / 'odd_bank.txt'}: line 2: prompt '!!!' has no words the text model knows" in err, err


def test_train_from_a_reference_picture_and_from_the_universal_model(setup, capsys):
    root, common, text = setup
    recipe = root / "style_recipe.json"
    recipe.write_text(json.dumps({"epochs": 1, "resolution": 64, "loss": {"n_crops": 2, "crop_fraction": 0.5},
                                  "fusion": {"width": 8, "depth": 1, "d_state": 2}}))
    base = ["train", *common, *text, "--content", str(root / "rocket.png"), "--config", str(recipe), "--quiet"]
    assert main(base + ["--reference", str(root / "images" / "coffee.png"), "--out", str(root / "ref.safetensors")]) == 0
    ref = load_style(root / "ref.safetensors")
    assert ref.metadata["prompts"] == ["reference coffee.png"]
    assert main(base + ["--prompt", "watercolor", "--start-from", str(root / "uni.safetensors"), "--out",
                        str(root / "fine.safetensors")]) == 0
    fine = load_style(root / "fine.safetensors")
    # the starting model's architecture is kept (width 16 from the universal recipe, not this recipe's 8)
    assert fine.metadata["started_from"] == "uni.safetensors" and fine.fusion_config["width"] == 16
    capsys.readouterr()
    assert main(base + ["--out", str(root / "x.safetensors")]) == 2
    assert "--prompt TEXT or as --reference" in capsys.readouterr().err


def test_fine_tuning_from_a_universal_model_refuses_another_text_model(setup, tiny_models, capsys):
    """The tiny CLIP has SigLIP's embedding size: only the check of the text model tells them apart."""
    root, common, _ = setup
    recipe = root / "style_recipe.json"
    recipe.write_text(json.dumps({"epochs": 1, "resolution": 64, "loss": {"n_crops": 2, "crop_fraction": 0.5},
                                  "fusion": {"width": 8, "depth": 1, "d_state": 2}}))
    out = root / "clip_fine.safetensors"
    assert main(["train", *common, "--text-model", str(tiny_models["clip"]), "--content", str(root / "rocket.png"),
                 "--config", str(recipe), "--quiet", "--prompt", "watercolor", "--start-from",
                 str(root / "uni.safetensors"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "was trained with the text model 'siglip'" in err and not out.exists(), err


def test_resuming_with_another_recipe_names_the_option_that_differs(setup, capsys):
    root, common, text = setup
    args = ["train-universal", *common, *text, "--bank", str(root / "bank.txt"), "--images", str(root / "images"),
            "--config", str(root / "recipe.json"), "--out", str(root / "other_lr.safetensors"), "--checkpoint-dir",
            str(root / "ck"), "--resume", "--quiet"]
    assert main(args + ["--lr", "0.001", "--resolution", "72"]) == 2
    err = capsys.readouterr().err
    assert "recipe.lr 0.002 in the checkpoint, 0.001 now" in err and "recipe.resolution 64 in the checkpoint, 72 now" \
        in err, err


def test_another_text_model_of_the_same_name_is_told_apart(setup, tiny_models):
    """Two local folders named 'siglip' (or a fine-tuned SigLIP): the error said "trained with 'siglip' but encoded with
    'siglip'"; it now says the names agree but the weights do not."""
    import dataclasses

    from stylemamba.encoders import load_text_image_encoder
    from stylemamba.style_file import load_universal
    from stylemamba.universal import style_from_universal

    root, _, _ = setup
    universal = load_universal(root / "uni.safetensors")
    direction = TextDirection.encode(load_text_image_encoder(tiny_models["siglip"]), "watercolor")
    other = dataclasses.replace(direction, source_embedding=-direction.source_embedding)  # another model's space
    with pytest.raises(ValueError, match="another model named 'siglip'.*source prompt 'a plain photo'"):
        style_from_universal(universal, other)
    # another source prompt: nothing would tell the weights apart, and it was taken (only the names were compared)
    other_source = TextDirection.encode(load_text_image_encoder(tiny_models["siglip"]), "watercolor",
                                        source_prompt="a photo")
    with pytest.raises(ValueError, match="source prompt 'a photo' is not the one .* trained against \\('a plain "
                                         "photo'\\).*set source_prompt to 'a plain photo' in Text Conditioning"):
        style_from_universal(universal, other_source)


def test_an_unreadable_photo_is_named_before_any_model_loads(setup, tmp_path, capsys):
    """Only the first 256 photos are read before training: a bad one further on stopped a long run in mid-course."""
    root, _, text = setup
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut", "chelsea"):
        (folder / f"{name}.png").write_bytes((root / "images" / f"{name}.png").read_bytes())
    (folder / "zz_download_failed.jpg").write_text("<html>404</html>")
    assert main(["train-universal", "--device", "cpu", "--vae", str(tmp_path / "no-vae"), *text, "--bank",
                 str(root / "bank.txt"), "--images", str(folder), "--out", str(tmp_path / "u.safetensors"),
                 "--checkpoint-dir", str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert "zz_download_failed.jpg" in err and "not readable images" in err, err
    (folder / "zz_download_failed.jpg").unlink()
    save_image(torch.ones(3, 4, 64), folder / "zz_strip.png")  # a 64x4 strip: too small to train on
    assert main(["train-universal", "--device", "cpu", "--vae", str(tmp_path / "no-vae"), *text, "--bank",
                 str(root / "bank.txt"), "--images", str(folder), "--out", str(tmp_path / "u.safetensors"),
                 "--checkpoint-dir", str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err  # before: the run stopped when the strip was drawn, after the models loaded
    assert "smaller than 8 pixels on a side: zz_strip.png (64x4)" in err, err


def test_weights_follow_the_order_of_the_style_files_a_universal_one_included(setup, tiny_models, capsys):
    """--style UNI --style STYLE --prompt p --weights 1 0 gave the weight 1 to STYLE (universal files were moved after
    the styles); the weights now follow the --style files as given, a universal one taking one per --prompt."""
    from stylemamba.encoders import load_text_image_encoder
    from stylemamba.style_file import load_universal, save_style
    from stylemamba.universal import style_from_universal, universal_direction

    root, common, text = setup
    universal = load_universal(root / "uni.safetensors")
    sketch = style_from_universal(universal, universal_direction(
        universal, load_text_image_encoder(tiny_models["siglip"]), prompt="pencil sketch"))
    save_style(sketch, root / "sketch.safetensors")
    run = ["stylize", *common, *text, "--input", str(root / "rocket.png"), "--quiet"]
    assert main(run + ["--style", str(root / "uni.safetensors"), "--style", str(root / "sketch.safetensors"),
                       "--prompt", "watercolor", "--weights", "1", "0", "--output", str(root / "w_mix.png")]) == 0
    assert main(run + ["--universal", str(root / "uni.safetensors"), "--prompt", "watercolor", "--output",
                       str(root / "w_uni.png")]) == 0
    assert torch.equal(load_image(root / "w_mix.png"), load_image(root / "w_uni.png"))


def test_a_run_resumes_with_gradient_checkpointing_added(setup, capsys):
    """Resuming on fewer GPUs puts more of the global batch on each: --gradient-checkpointing (the same steps, less
    memory) was refused as 'another run'."""
    root, common, text = setup
    out = root / "resumed_gc.safetensors"
    assert main(["train-universal", *common, *text, "--bank", str(root / "bank.txt"), "--images", str(root / "images"),
                 "--config", str(root / "recipe.json"), "--out", str(out), "--checkpoint-dir", str(root / "ck"),
                 "--resume", "--quiet", "--gradient-checkpointing"]) == 0, capsys.readouterr().err
    assert out.is_file()


def test_a_decoder_delta_of_the_wrong_shape_is_named_not_a_traceback(setup, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    root, common, text = setup
    with safe_open(str(root / "uni.safetensors"), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    first = next(k for k in tensors if k.startswith("decoder_delta."))
    tensors[first] = tensors[first].flatten()[:1]  # a file edited or made for another decoder
    save_file(tensors, str(root / "uni_bad_delta.safetensors"), metadata=meta)
    assert main(["stylize", *common, *text, "--input", str(root / "rocket.png"), "--universal",
                 str(root / "uni_bad_delta.safetensors"), "--prompt", "watercolor", "--output",
                 str(root / "bad.png")]) == 2
    err = capsys.readouterr().err
    assert "does not fit this decoder" in err and "damaged" in err, err


def test_a_checkpoint_dir_that_cannot_be_written_is_refused_before_the_models_load(tmp_path, capsys):
    """A --checkpoint-dir in a folder that takes no file was found after the models loaded and the first steps ran
    (at the first log line or checkpoint), with a traceback."""
    (tmp_path / "runs").write_text("a file, not a folder")
    (tmp_path / "images").mkdir()
    save_image(load_photo("chelsea", 64)[0], tmp_path / "images" / "chelsea.png")
    assert main(["train-universal", "--device", "cpu", "--vae", str(tmp_path / "no-vae"), "--text-model",
                 str(tmp_path / "no-model"), "--images", str(tmp_path / "images"), "--out",
                 str(tmp_path / "u.safetensors"), "--checkpoint-dir", str(tmp_path / "runs" / "ck")]) == 2
    err = capsys.readouterr().err
    assert f"--checkpoint-dir {tmp_path / 'runs' / 'ck' / 'log.jsonl'} cannot be written" in err, err
    assert "is a file, not a folder" in err and "no-vae" not in err


def test_sigterm_stops_train_universal_after_its_step_with_the_shells_code(setup, capsys):
    """A service manager's SIGTERM stops the run as Ctrl-C does (a checkpoint, a partial model), and the command says
    which signal it was by its exit code, 143 as a shell reports it: it returned 130 (Ctrl-C's) for any signal."""
    import os
    import signal
    import threading
    import time

    from stylemamba.style_file import load_universal
    from stylemamba.universal import LOG_FILE

    root, common, text = setup
    log_file = root / "ck_term" / LOG_FILE
    sent, returned = threading.Event(), threading.Event()

    def terminate_after_the_first_logged_step():  # never after main returned: the signal would end pytest itself
        while not returned.is_set():
            if log_file.is_file() and log_file.stat().st_size:
                sent.set()
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=terminate_after_the_first_logged_step, daemon=True)
    watcher.start()
    try:
        code = main(["train-universal", *common, *text, "--bank", str(root / "bank.txt"), "--images",
                     str(root / "images"), "--config", str(root / "recipe.json"), "--epochs", "1000", "--out",
                     str(root / "term.safetensors"), "--checkpoint-dir", str(root / "ck_term"), "--quiet",
                     "--name", "my run"])
    finally:
        returned.set()
        watcher.join()
    err = capsys.readouterr().err
    assert sent.is_set() and code == 128 + signal.SIGTERM, err
    assert "SIGTERM: stopping after this step" in err and "continue with the same command and --resume" in err, err
    partial = load_universal(root / "term-partial.safetensors")
    assert partial.metadata["cancelled"] and not (root / "term.safetensors").exists()
    assert partial.name == "my run"  # --name was dropped from the partial model (train keeps it on its own)


def test_a_photo_found_damaged_in_mid_run_stops_it_as_ctrl_c_does_and_names_the_file(setup, tmp_path, monkeypatch,
                                                                                     capsys):
    """Only headers are checked before training: a truncated JPEG drawn in mid-run ended the run with exit 2,
    keeping nothing since the last checkpoint, and told to 'use PNG, JPEG or WebP'. It now stops as a Ctrl-C
    stops it (a checkpoint, the partial model) and names the file, damaged, and the fix; re-saved, it resumes."""
    from stylemamba import universal

    root, common, text = setup
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        (folder / f"{name}.png").write_bytes((root / "images" / f"{name}.png").read_bytes())
    save_image(load_photo("rocket", 64)[0], tmp_path / "rocket.jpg")
    whole = (tmp_path / "rocket.jpg").read_bytes()
    (folder / "zz_trunc.jpg").write_bytes(whole[:len(whole) * 4 // 5])  # a download cut short: its header is fine
    monkeypatch.setattr(universal, "SOURCE_PHOTOS", 2)  # read before training: the first 2 (of 256 in real runs)
    args = ["train-universal", *common, *text, "--bank", str(root / "bank.txt"), "--images", str(folder), "--config",
            str(root / "recipe.json"), "--out", str(tmp_path / "u.safetensors"), "--checkpoint-dir",
            str(tmp_path / "ck"), "--name", "my run", "--quiet"]
    assert main(args) == 2  # the seed's step 0 draws photos 1 and 0, step 1 photos 3 and 2: zz_trunc.jpg is 3
    err = capsys.readouterr().err
    assert f"training photo {folder / 'zz_trunc.jpg'} cannot be read (image file is truncated" in err, err
    assert "the file is damaged or truncated; re-save it under the same name" in err and "use PNG" not in err, err
    checkpoint = tmp_path / "ck" / "step-00000001"
    assert (f"Training stopped before step 2 of 2: checkpoint {checkpoint} keeps the run; continue it with the same "
            "command and --resume") in err, err
    assert f"stopped after step 1: partial model {tmp_path / 'u-partial.safetensors'}" in err, err
    partial = load_universal(tmp_path / "u-partial.safetensors")
    assert partial.metadata["steps"] == 1 and partial.metadata["cancelled"] and partial.name == "my run"
    (folder / "zz_trunc.jpg").write_bytes(whole)  # re-saved: the same name, another size
    assert main(args + ["--resume"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["steps"] == 2
