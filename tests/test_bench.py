"""The benchmark (``python -m stylemamba bench``) on the tiny models, its arithmetic, and the speed options.

The GPU numbers come from a real run (docs/BENCHMARK.md); here we check that every measurement is
produced and consistent, that the ratios and target checks are computed right, and that each
speed-up computes what the plain path computes.
"""
import json
import os

import pytest
import torch
from small import small_config

from stylemamba import speed
from stylemamba.cli import build_parser
from stylemamba.encoders import load_text_image_encoder
from stylemamba.experiments import bench
from stylemamba.perceptual import VGGFeatures
from stylemamba.style_model import StyleModel
from stylemamba.stylize import stylize
from stylemamba.train import StyleTrainer, prepare_content
from stylemamba.vae import load_vae

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models(tiny_models):
    # LPIPS is left out: its real-size VGG16 costs seconds per call on 2 cores; its timing code is the
    # same as VGG's, which is covered.
    return bench.Models(load_vae(tiny_models["vae"]), load_text_image_encoder(tiny_models["siglip"]),
                        load_text_image_encoder(tiny_models["clip"]), VGGFeatures.from_safetensors(tiny_models["vgg19"]),
                        None, "tiny")


def test_stats_and_rates():
    assert bench.stats([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}
    assert bench.stats([])["median"] is None
    assert bench.tflops(2e12, 1000.0) == 2.0  # 2 TFLOP in one second
    assert bench.tflops(None, 5.0) is None
    calls = []
    ms = bench.time_device(lambda: calls.append(1), CPU, warmup=2, repeat=3)
    assert len(ms) == 3 and len(calls) == 5 and all(m >= 0 for m in ms)


def test_flop_count_of_a_matrix_product():
    a, b = torch.randn(16, 32), torch.randn(32, 8)
    assert bench.count_flops(lambda: a @ b) == 2 * 16 * 32 * 8


def test_word_tokenizer_gives_ids_inside_the_vocabulary():
    tok = bench.word_tokenizer(64)
    ids = tok(["a watercolor painting", "zzz unknown"], padding="max_length", max_length=64, truncation=True,
              return_tensors="pt")["input_ids"]
    assert ids.shape == (2, 64) and int(ids.max()) < len(tok) < 32000
    assert int(ids[0, 0]) != int(ids[1, 0])  # words map to different ids, unknown words to <unk>


def _fake_report(step_ms, recipe_s, stylise_ms, per_image_s, chunked_ms, kernel_ms):
    res = {"recipe_first_s": recipe_s + 30.0, "recipe_s": bench.stats([recipe_s]), "step_ms": bench.stats([step_ms]),
           "step_flops": int(4e12), "train_peak_gb": 9.0,
           "stylise": {"512_ms": bench.stats([stylise_ms]), "1024_ms": bench.stats([4 * stylise_ms]), "flops_512": int(1e12)},
           "video": {"fps": 70.0},
           "parts_ms": {"scan": {"chunked": {"fwd_bwd_ms": bench.stats([chunked_ms])},
                                 "mamba_ssm": {"fwd_bwd_ms": bench.stats([kernel_ms])}}}}
    return {"env": {"matmul_bf16_tflops": 800.0}, "models": "full", "sizes": {"stylise": [512, 1024]},
            "results": {"stylemamba/off": res,
                        "clipstyler": {"step_ms": bench.stats([20.0]), "step_flops": int(1e11),
                                       "per_image_s": per_image_s, "per_image_estimate_s": 99.0}}}


def test_summary_ratios_and_target_checks():
    report = _fake_report(step_ms=40.0, recipe_s=1.0, stylise_ms=10.0, per_image_s=4.0, chunked_ms=3.0, kernel_ms=1.0)
    s = bench.summarize(report)
    # StyleMamba: 1 s + 100 x 10 ms = 2 s; CLIPstyler: 100 x 4 s = 400 s
    assert s["hundred_images"]["stylemamba_s"] == pytest.approx(2.0)
    assert s["hundred_images"]["clipstyler_s"] == pytest.approx(400.0)
    assert s["hundred_images"]["ratio"] == pytest.approx(200.0)
    assert s["hundred_images"]["stylemamba_first_style_s"] == pytest.approx(32.0)
    assert s["scan"]["chunked_over_kernel"] == pytest.approx(3.0)
    assert s["scan"]["chunked_share_of_step"] == pytest.approx(3.0 / 40.0, abs=1e-3)
    t = s["targets"]
    assert t["step_ms"]["met"] is True and t["recipe_s"]["met"] is True and t["video_fps"]["met"] is True
    assert t["scan_vs_kernel"]["met"] is False  # 3x the kernel, the target is 2x
    assert t["stylise_1024_ms"]["measured"] == 40.0 and t["stylise_1024_ms"]["met"] is True
    # TFLOP/s: 4e12 FLOP in 40 ms = 100 TFLOP/s
    assert report["results"]["stylemamba/off"]["step_tflops"] == pytest.approx(100.0)
    with_triton = _fake_report(step_ms=40.0, recipe_s=1.0, stylise_ms=10.0, per_image_s=4.0, chunked_ms=3.0,
                               kernel_ms=1.0)
    with_triton["results"]["stylemamba/off"]["parts_ms"]["scan"]["triton"] = {"fwd_bwd_ms": bench.stats([1.5])}
    s = bench.summarize(with_triton)
    assert s["scan"]["ours_over_kernel"] == pytest.approx(1.5) and s["scan"]["chunked_over_kernel"] == pytest.approx(3.0)
    assert s["targets"]["scan_vs_kernel"]["met"] is True  # the target is met by our fastest scan (Triton)
    slow = bench.summarize(_fake_report(80.0, 3.0, 30.0, 1.0, 1.0, 1.0))["targets"]
    assert slow["step_ms"]["met"] is False and slow["recipe_s"]["met"] is False
    assert slow["hundred_images_ratio"]["met"] is False  # 100 s against 3 + 3 s: 16.7x


def test_the_full_size_table_prints_the_targets_without_issue_numbers():
    report = _fake_report(step_ms=40.0, recipe_s=1.0, stylise_ms=10.0, per_image_s=4.0, chunked_ms=3.0, kernel_ms=1.0)
    report["summary"] = bench.summarize(report)
    table = bench.format_table(report)
    assert "Targets: step_ms" in table and "issue" not in table.lower()


def test_tiny_models_give_no_target_verdicts():
    report = _fake_report(40.0, 1.0, 10.0, 4.0, 3.0, 1.0)
    report["models"] = "tiny"
    assert all(v["met"] is None for v in bench.summarize(report)["targets"].values())


def test_bench_subcommand_is_registered():
    args = build_parser().parse_args(["bench", "--tiny", "--compile", "off", "default", "--variants", "mamba"])
    assert args.func is bench.cmd_bench and args.tiny and args.compile == ["off", "default"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--compile", "turbo"])


@pytest.mark.parametrize("extra, needle", [
    (["--steps", "-1"], "--steps -1 is too small"), (["--repeats", "-1"], "--repeats -1 is too small"),
    (["--video-frames", "0"], "--video-frames 0 is too small"), (["--caps-repeats", "0"], "--caps-repeats 0"),
    (["--memory-caps-only"], "--memory-caps-only needs --memory-caps"),
    (["--models-dir", "{earlier}"], "is a file: give a folder"),
    (["--models-dir", "{mine}"], "holds vae but no manifest.json of tiny models"),
    (["--json", "{folder}"], "is a folder: give the name of a file"),
    (["--json", "{earlier}/b.json"], "is a file, not a folder"),
    ([], "already exists; pass --overwrite"),
])
def test_bench_checks_its_flags_before_any_model_is_built(tmp_path, capsys, monkeypatch, extra, needle):
    """Before: --steps -1 or --repeats -1 were tracebacks mid-run, --json a folder one after the models were built,
    an earlier run's results were written over without a word, and so was a --models-dir of the user's models."""
    from stylemamba import cli

    earlier = tmp_path / "earlier.json"
    earlier.write_text('{"results": "an hour on the GPU"}')
    monkeypatch.setattr(bench, "build_tiny_bench_models", lambda *a: pytest.fail("models built before the check"))
    (tmp_path / "mine" / "vae").mkdir(parents=True)  # a user's own models: tiny ones would be built over them
    extra = [e.format(earlier=earlier, folder=tmp_path, mine=tmp_path / "mine") for e in extra]
    assert cli.main(["bench", "--tiny", "--device", "cpu", "--json", str(earlier), *extra]) == 2
    assert needle in capsys.readouterr().err
    assert earlier.read_text() == '{"results": "an hour on the GPU"}'


@pytest.mark.slow
def test_tiny_bench_measures_everything(models, tmp_path):
    sizes = bench.Sizes(tiny=True, video_frames=2, video_batch=2)
    path = tmp_path / "bench.json"
    report = bench.run_bench(models, sizes, CPU, ["off"], ["mamba", "clipstyler"], repeats=1, steps=1,
                             json_path=path)
    assert json.loads(path.read_text())["results"].keys() == report["results"].keys()
    ours, cs = report["results"]["stylemamba/off"], report["results"]["clipstyler"]
    assert ours["recipe_s"]["n"] == 1 and ours["recipe_s"]["median"] > 0 and ours["recipe_first_s"] > 0
    assert ours["recipe_steps"] == 2 and ours["step_ms"]["median"] > 0
    parts = ours["parts_ms"]
    # the VGG content loss is timed when the recipe has it (off by default since docs/METHOD_CHOICES.md item 5)
    vgg = ("vgg_fwd_bwd",) if sizes.train_config().loss.uses_vgg else ()
    for part in ("fusion_fwd_bwd", "decoder_fwd_bwd", "views_crops_fwd_bwd", "siglip_fwd_bwd", "optimizer") + vgg:
        assert parts[part]["median"] > 0, part
    assert parts["siglip_batch"] == 1 + 4 + 1  # the image, 4 crops, the masked image: one batched call
    assert parts["scan"]["chunked"]["fwd_bwd_ms"]["median"] > 0
    assert parts["scan"]["shape"] == {"batch": 2, "channels": 64, "state": 4, "length": 64}  # 2 scan directions
    # a step does the decoder's forward and backward: it counts more FLOPs than the decoder forward alone
    with torch.no_grad():
        dec_flops = bench.count_flops(lambda: models.vae.reconstruct(torch.rand(1, 3, 64, 64)))
    assert ours["step_flops"] > dec_flops > 0
    assert ours["stylise"]["64_ms"]["median"] > 0 and ours["stylise"]["128_ms"]["median"] > 0
    assert ours["stylise"]["flops_64"] > 0
    assert ours["video"]["frames"] == 2 and ours["video"]["fps"] > 0
    assert cs["recipe_steps"] == 3 and cs["per_image_s"] > 0 and cs["step_flops"] > 0
    assert cs["per_image_estimate_s"] >= cs["setup_s"]
    summary = report["summary"]
    assert summary["hundred_images"]["clipstyler_s"] == pytest.approx(100 * cs["per_image_s"], rel=1e-3)
    table = bench.format_table(report)
    assert "stylemamba/off" in table and "clipstyler" in table and "(b) one training step" in table
    assert "Targets" not in table and "issue" not in table.lower()  # 64 px figures are not compared with 512 px targets


# ---------------------------------------------------------------------------------------------- speed options
def test_compile_modes_are_checked():
    with pytest.raises(ValueError, match="compile mode"):
        speed.check_compile_mode("fastest")
    def f(t):
        return t + 1

    assert speed.compile_callable(f, "off") is f


@pytest.mark.slow
def test_compiled_kernels_are_cached_in_the_users_cache_folder_not_the_temporary_one(tmp_path, monkeypatch):
    """Inductor's default cache is in the temporary folder (empty after a reboot): compiling points it at
    ~/.cache/stylemamba/torchinductor, unless the user chose a folder."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert speed.compile_callable(len, "off") is len and "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    speed.compile_module_(torch.nn.Linear(2, 2), "default")  # compiles lazily, on the first call
    expected = tmp_path / "cache" / "stylemamba" / "torchinductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(expected) and expected.is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert speed.use_persistent_compile_cache() == str(tmp_path / "mine")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_compiled_training_steps_match_the_plain_path(tiny_models, photo, monkeypatch):
    # aot_eager traces the graphs and runs autograd through them as Inductor does, without a C++ build
    monkeypatch.setattr(speed, "COMPILE_BACKEND", "aot_eager")
    vae, text = load_vae(tiny_models["vae"]), load_text_image_encoder(tiny_models["siglip"])
    vgg = VGGFeatures.from_safetensors(tiny_models["vgg19"])
    out = {}
    for mode in ("off", "default"):
        cfg = small_config(epochs=2, compile=mode)
        trainer = StyleTrainer(vae, text, photo, "oil painting", cfg, vgg=vgg)
        terms = [trainer.step(0)[0]]
        # the first step's gradients, from identical weights (later weights differ by Adam's sign noise
        # on near-zero gradients, so comparing weights after several steps would test Adam, not compile)
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        terms.append(trainer.step(1)[0])
        out[mode] = (terms, grads, trainer.result(0.0, 2).style.decoder_delta)
        # the benchmark's per-part timing runs on the step's own (here compiled) networks
        parts = bench.step_parts(trainer, CPU, repeat=1, scan=False, warmup=0)
        assert parts["vgg_fwd_bwd"]["median"] > 0 and parts["decoder_fwd_bwd"]["median"] > 0
    for i, (plain, compiled) in enumerate(zip(out["off"][0], out["default"][0])):
        assert plain.keys() == compiled.keys() and "vgg" in plain
        for k in plain:  # step 0 from identical weights; later steps after Adam updates (sign noise, see above)
            torch.testing.assert_close(compiled[k], plain[k], rtol=1e-4 if i == 0 else 1e-2, atol=1e-5)
    assert out["off"][1].keys() == out["default"][1].keys() and len(out["off"][1]) > 10
    # per tensor, against the largest gradient (some are exactly zero in exact arithmetic, e.g. the
    # attention's key bias, and are pure rounding noise in both paths)
    scale = max(float(g.abs().max()) for g in out["off"][1].values())
    for name, g in out["off"][1].items():
        torch.testing.assert_close(out["default"][1][name], g, rtol=1e-3, atol=1e-4 * scale, msg=name)
    assert out["off"][2].keys() == out["default"][2].keys()  # no _orig_mod. prefix in the saved style


@pytest.mark.slow
def test_inference_preparation_matches_the_plain_path(tiny_models, photo, monkeypatch):
    monkeypatch.setattr(speed, "COMPILE_BACKEND", "aot_eager")
    vae, text = load_vae(tiny_models["vae"]), load_text_image_encoder(tiny_models["siglip"])
    trainer = StyleTrainer(vae, text, photo, "pencil sketch", small_config(epochs=1))
    trainer.step(0)
    style = trainer.result(0.0, 1).style
    x = prepare_content(photo, 64)
    plain = stylize(x, vae, StyleModel.from_styles(vae, [style]))
    fast_vae = load_vae(tiny_models["vae"])  # a second copy: compiling in place must not touch the first
    model = speed.prepare_for_inference(fast_vae, StyleModel.from_styles(fast_vae, [style]), compile="default")
    torch.testing.assert_close(stylize(x, fast_vae, model), plain, rtol=1e-4, atol=1e-5)
    assert set(model.decoder.state_dict()) == set(StyleModel.from_styles(vae, [style]).decoder.state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Inductor + Triton)")
def test_inductor_compiled_step_matches_eager_on_gpu(tiny_models, photo):
    vae = load_vae(tiny_models["vae"], device="cuda")
    text = load_text_image_encoder(tiny_models["siglip"], device="cuda")
    losses = {}
    for mode in ("off", "default"):
        trainer = StyleTrainer(vae, text, photo, "oil painting", small_config(epochs=2, compile=mode, precision="fp32"))
        losses[mode] = [trainer.step(e)[0]["total"] for e in range(2)]
    # the total holds the 1e6-weighted range penalty and L_so, which amplify rounding: on the H200 (2026-12-03,
    # capturable Adam) compiled and eager differed by 0.14 % after one update
    for a, b in zip(losses["off"], losses["default"]):
        torch.testing.assert_close(b, a, rtol=5e-3, atol=1e-4)


def test_memory_caps_option_runs_the_uncapped_rows_and_says_caps_need_cuda(models, tmp_path, monkeypatch):
    args = build_parser().parse_args(["bench", "--tiny", "--memory-caps", "8,12", "--memory-caps-only"])
    assert args.memory_caps == [8.0, 12.0] and args.memory_caps_only
    for bad in ("8,x", "0", ""):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["bench", "--memory-caps", bad])
    sizes = bench.Sizes(tiny=True)
    path = tmp_path / "bench.json"
    report = bench.run_bench(models, sizes, CPU, [], [], repeats=1, steps=1, json_path=path, memory_caps=[8.0],
                             caps_repeats=1)
    caps = json.loads(path.read_text())["memory_caps"]
    assert [(r["cap_gb"], r["images"]) for r in caps["rows"]] == [(None, 1), (None, 4), (8.0, 1), (8.0, 4)]
    for row in caps["rows"][:2]:
        assert row["status"] == "pass" and row["recipe_s"]["n"] == 1 and row["recipe_s"]["median"] > 0
        assert row["plan"]["micro_batch"] == row["images"] and row["plan"]["view_chunk"] == 0  # CPU: no limit known
    for row in caps["rows"][2:]:
        assert row["status"] == "not emulated" and "needs a CUDA device" in row["reason"]
    table = bench.format_memory_caps(report["memory_caps"])
    assert "| uncapped | 4 | pass |" in table and "| 8 GB | 1 | not emulated |" in table
    assert "cannot be emulated on cpu" in table and report["results"] == {}


def test_first_style_command_times_one_training_run(tmp_path):
    """``python -m stylemamba.experiments.first_style`` (run twice on a GPU for the warm compile cache)."""
    from stylemamba.experiments import first_style

    out = first_style.main(["--tiny", "--device", "cpu", "--compile", "off", "--json", str(tmp_path / "f.json")])
    assert out["steps"] > 0 and 0 < out["train_loop_s"] <= out["first_style_s"]
    assert json.loads((tmp_path / "f.json").read_text())["first_style_s"] == out["first_style_s"]


def test_decoder_speed_command_compares_variants_with_the_first(tmp_path):
    """``python -m stylemamba.experiments.decoder_speed`` (run on a GPU; here the tiny VAE on the CPU)."""
    from stylemamba.experiments import decoder_speed

    out = decoder_speed.main(["--tiny", "--device", "cpu", "--repeat", "1", "--json", str(tmp_path / "d.json")])
    rows = out["variants"]
    assert list(rows) == list(decoder_speed.VARIANTS)
    assert all(r["fwd_bwd_ms"] > 0 and r["fwd_ms"] > 0 for r in rows.values())
    # on the CPU in fp32 the layout and the GroupNorm dtype change nothing (the GPU-wide GroupNorm only runs on
    # CUDA); the attention as matrix products and x * sigmoid(x) round differently
    for name in ("fp32_groupnorm_nchw", "native_gn", "sdpa_attention"):
        assert rows[name]["out_rel_err"] == 0.0 and rows[name]["grad_rel_err"] == 0.0, name
    for name in ("nchw", "channels_last", "silu_inplace", "swish_mul"):
        assert 0.0 < rows[name]["out_rel_err"] < 1e-4 and 0.0 < rows[name]["grad_rel_err"] < 1e-4, name
    assert rows["channels_last"]["out_rel_err"] == rows["nchw"]["out_rel_err"]
    assert json.loads((tmp_path / "d.json").read_text())["variants"]["nchw"]["fwd_ms"] == rows["nchw"]["fwd_ms"]


def test_plan_sweep_command_runs_explicit_plans_and_the_tower_split(tmp_path):
    """``python -m stylemamba.experiments.plan_sweep`` (the memory model's calibration; GPU figures there)."""
    from stylemamba.experiments import plan_sweep

    out = plan_sweep.main(["--tiny", "--device", "cpu", "--tower", "--images", "1", "2", "--plans", "2,0,off",
                           "1,8,on", "--repeats", "1", "--json", str(tmp_path / "p.json")])
    rows = out["rows"]
    assert [(r["images"], r["plan"]) for r in rows] == [
        (1, "micro_batch=1, view_chunk=8, checkpointing=on"),  # 2 images per group cannot run on 1 image
        (2, "micro_batch=2, view_chunk=all, checkpointing=off"), (2, "micro_batch=1, view_chunk=8, checkpointing=on")]
    assert all(r["status"] == "pass" and r["style_s"] > 0 and r["estimate_gb"] > 0 for r in rows)
    assert set(out["tower"]) >= {"whole", "split", "checkpoint"} and out["tower"]["whole"]["wall_ms"] > 0
    assert json.loads((tmp_path / "p.json").read_text())["rows"] == rows


def test_copy_sources_names_the_line_that_copies():
    """The copy finder points at the Python line that converts a layout (what a GPU profile shows only as anonymous
    direct_copy kernels), with the layouts and the bytes."""
    import inspect

    from stylemamba.experiments.bench import copy_sources

    x = torch.randn(2, 16, 32, 32).contiguous(memory_format=torch.channels_last)
    line = inspect.currentframe().f_lineno + 3

    def converts():
        return x.contiguous() + 1  # the layout copy

    rows = copy_sources(converts)
    assert len(rows) == 1, rows
    assert rows[0]["layouts"] == "channels_last -> contiguous" and rows[0]["shape"] == [2, 16, 32, 32]
    assert rows[0]["mb"] == round(2 * x.numel() * 4 / 2**20, 2) and rows[0]["calls"] == 1
    assert rows[0]["stack"][0] == f"test_bench.py:{line} converts"


def test_tiny_bench_models_leave_no_temporary_folder(monkeypatch, tmp_path):
    """bench --tiny without --models-dir left a stylemamba_bench_* folder of models behind on every run."""
    import tempfile

    from stylemamba.experiments import bench

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    models = bench.build_tiny_bench_models(torch.device("cpu"))
    assert list(tmp_path.iterdir()) == []
    with torch.no_grad():  # the models still work once their files are gone
        latents = models.vae.encode(torch.rand(1, 3, 64, 64))
        assert torch.isfinite(latents).all() and models.siglip.encode_text(["red"]).shape[0] == 1
