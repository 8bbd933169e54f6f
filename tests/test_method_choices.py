"""The measurement harness of the method's choices (stylemamba.experiments.method_choices) measures what it says.

Kept fast: the figures on hand-made pictures, and one tiny run of the bench on the tiny random VAE (its numbers
mean nothing; that it trains, measures and leaves training untouched is what is checked).
"""
import json

import pytest
import torch
import torch.nn.functional as F

from stylemamba.experiments.method_choices import (PAPER, Bench, Setup, compare, figures, main, markdown,
                                                   named_property)
from stylemamba.testing import colour_model, texture_model
from stylemamba.vae import load_vae


def test_figures_see_a_redder_picture_as_red(photo_batch):
    model = colour_model()
    redder = photo_batch.clone()
    redder[:, 0] = (redder[:, 0] + 0.1).clamp(0, 1)
    f = figures(model, "red", redder, photo_batch)
    assert f["prop"] > 0.03 and f["cos"] > 0.5 and f["proj"] > 0 and 0.8 < f["ssim"] <= 1.0
    assert figures(model, "cyan", redder, photo_batch)["prop"] < 0  # the opposite prompt sees it as a loss
    assert figures(model, "red", photo_batch, photo_batch)["prop"] == 0.0


def test_named_property_of_texture_prompts_is_signed(photo_batch):
    model = texture_model()
    blurred = F.avg_pool2d(F.pad(photo_batch, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    smooth = named_property(model, "a smooth painting", blurred) - named_property(model, "a smooth painting", photo_batch)
    sketch = named_property(model, "a pencil sketch", blurred) - named_property(model, "a pencil sketch", photo_batch)
    assert bool((smooth > 0).all()) and torch.allclose(sketch, -smooth)


def test_variants_are_options_over_todays_defaults():
    setup = Setup(resolution=64, epochs=3)
    paper = setup.recipe(0, **PAPER)
    assert (paper.loss.patch, paper.loss.so_form, paper.loss.so_interval, paper.loss.clamp_output,
            paper.loss.range_weight) == (9000.0, "eq4", 5, False, 0.0)
    assert (paper.loss.vgg_reduction, paper.loss.vgg_weight(0), paper.loss.vgg_weight(5)) == ("mean", 9000.0, 150.0)
    assert not setup.recipe(0).loss.uses_vgg  # item 5: today's default has no VGG term
    today = setup.recipe(1, epochs=2, crop_reference="same-crop")
    assert (today.epochs, today.seed, today.loss.so_form, today.loss.crop_reference) == (2, 1, "directional", "same-crop")
    with pytest.raises(ValueError, match="unknown LossConfig option"):
        setup.recipe(0, patch_wieght=1.0)


def test_a_tiny_bench_run_measures_and_leaves_training_alone(tiny_models, tmp_path, caplog):
    vae = load_vae(tiny_models["vae"])
    bench = Bench(vae, Setup(resolution=64, epochs=2, n_crops=2, fusion_width=16, fusion_depth=1, snapshots=(1,)),
                  style_photos=("astronaut",), held_out_photos=("chelsea",))
    rows = compare(bench, [0], {"paper": PAPER, "defaults": {}}, prompts=("red",))
    assert [r["variant"] for r in rows] == ["paper", "defaults"]
    for row in rows:
        assert {"prop", "prop@1", "cos", "proj", "ssim", "oor", "ms", "params"} <= set(row)
        assert 0.0 <= row["oor"] <= 1.0 and row["params"] > 0 and -1.0 <= row["cos"] <= 1.0
    # the gradient shares are taken without changing the run: same style with and without them
    plain = bench.train("red", 0)["style"]
    watched = bench.train("red", 0, grad_shares=(1, 2))
    assert set(watched["shares"]) == {1, 2}
    shares = watched["shares"][1]
    assert {"dir", "patch", "md"} <= set(shares) and sum(shares.values()) == pytest.approx(1.0)
    for k, v in plain.decoder_delta.items():
        assert torch.equal(v, watched["style"].decoder_delta[k]), k
    # results files print as tables
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"setup": {"seeds": [0]}, "rows": {"defaults": rows}}))
    text = markdown([str(path)])
    assert "| paper | red |" in text and "| defaults | red |" in text


def test_the_command_needs_a_vae_to_measure(capsys):
    with pytest.raises(SystemExit):
        main(["--items", "so"])
    assert "--vae is required" in capsys.readouterr().err
