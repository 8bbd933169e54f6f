"""`python -m stylemamba eval` end to end on the tiny models: outputs, resume, styles by metadata, skips."""
import csv
import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from small import small_config
from stylemamba import cli
from stylemamba.experiments.baselines.clipstyler import StyleUNet
from stylemamba.experiments.evaluate import read_prompts, run_evaluation
from stylemamba.experiments.metrics import count_parameters
from stylemamba.image_io import save_image
from stylemamba.style_file import load_style
from stylemamba.perceptual import LPIPSLoss

PROMPTS = ["an oil painting by Van Gogh", "ukiyo-e woodblock print"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models):
    """Two real photos (not square: the centre crop is exercised), a prompts file, small recipes, metric weights."""
    from conftest import load_photo

    root = tmp_path_factory.mktemp("eval")
    for name in ("astronaut", "chelsea"):
        save_image(load_photo(name, (64, 80))[0], root / "content" / f"{name}.png")
    (root / "prompts.txt").write_text("# style prompts\n" + "\n".join(PROMPTS) + "\n\n")
    (root / "recipe.json").write_text(json.dumps(small_config(epochs=2).to_dict()))
    (root / "clipstyler.json").write_text(json.dumps({"steps": 2, "n_crops": 2, "base_channels": 4}))
    lp = LPIPSLoss(net="alex")  # a random backbone written as a user's backbone file would be
    save_file({k: v.contiguous() for k, v in lp.model.state_dict().items() if k.startswith("net.")},
              str(root / "lpips_alex.safetensors"))
    gen = torch.Generator().manual_seed(0)
    save_file({"weight": torch.randn(1, 32, generator=gen), "bias": torch.zeros(1)}, str(root / "head.safetensors"))
    return root


def eval_args(setup, tiny_models, out, *extra):
    return ["eval", "--device", "cpu", "--content", str(setup / "content"), "--prompts", str(setup / "prompts.txt"),
            "--config", str(setup / "recipe.json"), "--clipstyler-config", str(setup / "clipstyler.json"),
            "--vae", str(tiny_models["vae"]), "--train-text-model", str(tiny_models["siglip"]),
            "--eval-text-model", str(tiny_models["siglip"]), "--eval-text-model", str(tiny_models["clip"]),
            "--vgg", str(tiny_models["vgg19"]), "--lpips-net", "alex",
            "--lpips-backbone", str(setup / "lpips_alex.safetensors"),
            "--aesthetic-head", str(setup / "head.safetensors"), "--aesthetic-clip", str(tiny_models["clip"]),
            "--resolution", "64", "--thumb", "48", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def first_run(setup, tiny_models):
    out = setup / "out"
    # one training image and one epoch keep it fast; they also exercise --train-content and --epochs
    assert cli.main(eval_args(setup, tiny_models, out, "--method", "both", "--epochs", "1", "--train-content",
                              str(setup / "content" / "astronaut.png"))) == 0
    return out


def test_eval_writes_every_output(first_run, capsys):
    out = first_run
    report = json.loads((out / "results.json").read_text())
    cols = ["style_siglip", "style_clip", "ssim_lum", "ssim_rgb", "vgg", "lpips", "aesthetic"]
    assert report["columns"] == ["method", "image", "prompt", *cols, "train_s", "infer_s", "params"]
    rows = report["rows"]
    assert len(rows) == 8 and {(r["method"], r["image"], r["prompt"]) for r in rows} == {
        (m, i, p) for m in ("stylemamba", "clipstyler") for i in ("astronaut.png", "chelsea.png") for p in PROMPTS}
    for r in rows:
        assert all(isinstance(r[c], float) for c in cols + ["train_s", "infer_s"]), r
        assert -1 <= r["style_siglip"] <= 1 and -1 <= r["ssim_lum"] <= 1 and r["vgg"] >= 0 and r["lpips"] >= 0
        assert (out / r["output"]).is_file() and Image.open(out / r["output"]).size == (64, 64)
    sm = [r for r in rows if r["method"] == "stylemamba"]
    cs = [r for r in rows if r["method"] == "clipstyler"]
    # one style per prompt: its training time is shared by the images; CLIPstyler pays per image
    assert len({r["train_s"] for r in sm}) == 2 and all(r["train_s"] == r["infer_s"] for r in cs)
    info = report["models"]["stylemamba"]["styles"][PROMPTS[0]]
    assert sm[0]["params"] == info["params_fusion"] + info["params_decoder"] > 0
    assert cs[0]["params"] == count_parameters(StyleUNet(base_channels=4))
    # scales and models are stated; Table 4: each method's training model is named, the other is held out
    assert "raw cosine" in report["scales"]["style_clip"] and "luminance" in report["scales"]["ssim_lum"]
    assert report["models"]["stylemamba"]["used_for_training_column"] == ["style_siglip"]
    assert report["models"]["clipstyler"]["used_for_training_column"] == ["style_clip"]
    assert any(s["what"].startswith("aesthetic") and "not ViT-L/14" in s["why"] for s in report["skipped"])
    recipe = report["config"]["stylemamba"]
    assert recipe["recipe"]["epochs"] == 1 and recipe["recipe"]["resolution"] == 64
    assert [p.endswith("astronaut.png") for p in recipe["train_content"]] == [True]
    assert report["config"]["clipstyler"]["config"]["steps"] == 2
    assert set(report["averages"]) == {"stylemamba", "clipstyler"}
    assert report["averages"]["clipstyler"]["pairs"] == 4
    # CSV: the 8 rows and one mean row per method
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 10 and [t["image"] for t in table[-2:]] == ["(mean)", "(mean)"]
    assert float(table[-1]["ssim_lum"]) == pytest.approx(report["averages"]["clipstyler"]["ssim_lum"])
    # contact sheet: rows = 2 images x 2 methods, columns = content + 2 prompts
    w, h = Image.open(out / "contact_sheet.png").size
    assert w == 4 + 3 * (48 + 4) and h == 28 + 4 + 4 * (48 + 4)
    assert len(list((out / "styles").glob("*.safetensors"))) == 2
    assert len((out / "results.jsonl").read_text().splitlines()) == 8


def test_resume_skips_done_pairs_and_reuses_styles(first_run, setup, tiny_models, capsys):
    out = first_run
    lines = (out / "results.jsonl").read_text().splitlines()
    dropped = json.loads(lines[-1])  # as if the run had been interrupted before its last pair
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    styles_before = {p: p.stat().st_mtime_ns for p in (out / "styles").glob("*.safetensors")}
    capsys.readouterr()
    assert cli.main(eval_args(setup, tiny_models, out, "--method", "both", "--quiet", "--epochs", "1",
                              "--train-content", str(setup / "content" / "astronaut.png"))) == 0
    printed = capsys.readouterr().out
    after = (out / "results.jsonl").read_text().splitlines()
    assert len(after) == 8 and after[:7] == lines[:7]
    redone = json.loads(after[-1])
    assert (redone["method"], redone["image"], redone["prompt"]) == (dropped["method"], dropped["image"],
                                                                     dropped["prompt"])
    report = json.loads((out / "results.json").read_text())
    skip = next(s for s in report["skipped"] if "--resume" in s["why"])
    assert len(skip["pairs"]) == 7 and len(report["rows"]) == 8
    assert {p: p.stat().st_mtime_ns for p in (out / "styles").glob("*.safetensors")} == styles_before
    assert "Means" in printed and "style_siglip" in printed and "already in results.jsonl" in printed


def test_styles_are_matched_to_prompts_by_metadata(first_run, setup, tiny_models, tmp_path):
    library = tmp_path / "library"
    library.mkdir()
    for i, f in enumerate(sorted((first_run / "styles").glob("*.safetensors"))):
        shutil.copy(f, library / f"style_{i}.safetensors")  # names say nothing: the metadata decides
    (library / "damaged.safetensors").write_bytes(b"cut short")  # before: left out without a word
    report = run_evaluation([setup / "content" / "chelsea.png"], PROMPTS, tmp_path / "out", "stylemamba",
                            vae=tiny_models["vae"], styles_dir=library, train_config=small_config(epochs=2),
                            eval_text_models=[tiny_models["clip"]], resolution=64, device="cpu", progress=False,
                            print_table=False)
    styles = report["models"]["stylemamba"]["styles"]
    assert {s["train_seconds_from"] for s in styles.values()} == {"style metadata"}
    assert all(s["file"].startswith(str(library)) for s in styles.values())
    assert not (tmp_path / "out" / "styles").exists()  # nothing was trained
    damaged = next(s for s in report["skipped"] if s["what"] == "damaged.safetensors in --styles")
    assert "not a readable .safetensors file" in damaged["why"]
    assert len(report["rows"]) == 2 and all(r["train_s"] > 0 for r in report["rows"])
    # the same style gives the same image as in the first run
    first = json.loads((first_run / "results.json").read_text())["rows"]
    ref = next(r for r in first if r["method"] == "stylemamba" and r["image"] == "chelsea.png"
               and r["prompt"] == PROMPTS[0])
    mine = next(r for r in report["rows"] if r["prompt"] == PROMPTS[0])
    assert mine["ssim_lum"] == pytest.approx(ref["ssim_lum"], abs=1e-4)  # the file stores the delta in fp16
    assert mine["style_clip"] == pytest.approx(ref["style_clip"], abs=1e-4)


def test_missing_metric_weights_are_skipped_with_reasons(setup, tiny_models, tmp_path):
    from stylemamba.experiments.baselines.clipstyler import ClipStylerConfig

    report = run_evaluation([setup / "content" / "astronaut.png"], PROMPTS[:1], tmp_path / "out", "clipstyler",
                            clipstyler_config=ClipStylerConfig(steps=1, n_crops=2, base_channels=4),
                            clipstyler_text_model=tiny_models["clip"], resolution=32, device="cpu", progress=False,
                            print_table=False)
    # no evaluation model given: the style score falls back on the training model, and says so
    assert report["columns"] == ["method", "image", "prompt", "style_clip", "ssim_lum", "ssim_rgb", "train_s",
                                 "infer_s", "params"]
    why = {s["what"].split(" (")[0]: s["why"] for s in report["skipped"]}
    assert "--vgg" in why["vgg"] and "--lpips-backbone" in why["lpips"]
    assert "sa_0_4_vit_l_14_linear.pth" in why["aesthetic"]
    assert "training model only" in why["style score with a model not used for training"]
    assert "Skipped:" in report["table"] and "aesthetic" in report["table"]


def test_bad_inputs_are_explained(setup, tiny_models, tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(p)
    with pytest.raises(FileNotFoundError, match="prompts file"):
        read_prompts(tmp_path / "none.txt")
    with pytest.raises(FileNotFoundError, match="is a folder, not a file"):  # before: 'not found'
        read_prompts(tmp_path)
    with pytest.raises(ValueError, match="repeated"):
        run_evaluation([setup / "content"], ["a", "a"], tmp_path / "o", device="cpu")
    with pytest.raises(ValueError, match="unknown method"):
        run_evaluation([setup / "content"], ["a"], tmp_path / "o", "vangogh", device="cpu")
    code = cli.main(["eval", "--device", "cpu", "--content", str(tmp_path / "missing"), "--prompts",
                     str(setup / "prompts.txt"), "--out", str(tmp_path / "o")])
    assert code == 2


def test_prompts_or_images_alike_in_file_name_keep_their_own_files(setup, tiny_models, tmp_path):
    """'pop art' and 'Pop Art!' (or two long prompts alike in their first 40 characters) have one slug: each gets its
    own style and image, not the other's; a.png and a.jpg would share their results' names: refused up front."""
    prompts = ["pop art", "Pop Art!"]
    report = run_evaluation([setup / "content" / "chelsea.png"], prompts, tmp_path / "out", "stylemamba",
                            vae=tiny_models["vae"], train_config=small_config(epochs=1),
                            train_text_model=tiny_models["siglip"], resolution=64, device="cpu", progress=False,
                            print_table=False)
    styles = report["models"]["stylemamba"]["styles"]
    assert {s["train_seconds_from"] for s in styles.values()} == {"measured"}
    assert {p: load_style(s["file"]).metadata["prompts"] for p, s in styles.items()} == {p: [p] for p in prompts}
    outputs = {r["output"] for r in report["rows"]}
    assert len(outputs) == 2 and all((tmp_path / "out" / o).is_file() for o in outputs)
    shutil.copy(setup / "content" / "chelsea.png", tmp_path / "Chelsea.jpg")
    with pytest.raises(ValueError, match="chelsea.png and Chelsea.jpg would share"):
        run_evaluation([setup / "content" / "chelsea.png", tmp_path / "Chelsea.jpg"], prompts, tmp_path / "o2",
                       device="cpu")


def test_unreadable_prompts_and_recipe_files_are_named(setup, tmp_path, capsys):
    latin = tmp_path / "prompts.txt"
    latin.write_bytes("une aquarelle très douce\n".encode("latin-1"))
    broken = tmp_path / "recipe.json"
    broken.write_text("{epochs: 2}")
    base = ["eval", "--device", "cpu", "--content", str(setup / "content"), "--out", str(tmp_path / "o")]
    assert cli.main(base + ["--prompts", str(latin)]) == 2
    err = capsys.readouterr().err
    assert "prompts.txt" in err and "save it as UTF-8" in err, err
    for flag in ("--config", "--clipstyler-config"):
        assert cli.main(base + ["--prompts", str(setup / "prompts.txt"), flag, str(broken)]) == 2
        err = capsys.readouterr().err
        assert f"{flag} {broken} is not a readable JSON recipe" in err, err


def test_eval_names_its_own_flags_for_bad_numbers(setup, tmp_path, capsys):
    """eval --epochs 0 said 'TrainConfig.epochs=0 is invalid', a name the eval user never typed."""
    base = ["eval", "--device", "cpu", "--content", str(setup / "content"), "--prompts", str(setup / "prompts.txt"),
            "--out", str(tmp_path / "o")]
    for flag in ("--epochs", "--clipstyler-steps"):
        assert cli.main(base + [flag, "0"]) == 2
        err = capsys.readouterr().err
        assert f"{flag} 0 is too small: it must be at least 1" in err, err


def test_eval_checks_its_output_thumb_and_repeated_prompts_before_any_work(setup, tmp_path):
    """--thumb 0 failed in the contact sheet after every style was trained; a file as --out said '[Errno 17]'."""
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    with pytest.raises(ValueError, match="notes.txt is a file.*give a folder"):
        run_evaluation([setup / "content"], ["a"], taken, device="cpu")
    with pytest.raises(ValueError, match="thumb 0.*at least 1"):
        run_evaluation([setup / "content"], ["a"], tmp_path / "o", device="cpu", thumb=0)
    with pytest.raises(ValueError, match="thumb 100000.*at most 1024"):  # before: out of memory after the work
        run_evaluation([setup / "content"], ["a"], tmp_path / "o", device="cpu", thumb=100000)
    with pytest.raises(ValueError, match="cannot be written.*notes.txt is a file, not a folder"):  # a traceback
        run_evaluation([setup / "content"], ["a"], taken / "o", device="cpu")
    for styles, what in ((taken, "a file"), (tmp_path / "none", "not there")):  # both were 'styles folder not found'
        with pytest.raises(ValueError, match=f"--styles .* is {what}: give the folder of trained styles"):
            run_evaluation([setup / "content"], ["a"], tmp_path / "o", device="cpu", styles_dir=styles)
    with pytest.raises(ValueError, match="is a content folder: eval writes its results"):  # read back as photos
        run_evaluation([setup / "content"], ["a"], setup / "content", device="cpu")
    with pytest.raises(ValueError, match="'b' is repeated"):
        run_evaluation([setup / "content"], ["a", "b", "b "], tmp_path / "o", device="cpu")
    with pytest.raises(FileNotFoundError, match="no-such-photos"):  # before: after the measuring models loaded
        run_evaluation([setup / "content"], ["a"], tmp_path / "o", device="cpu",
                       train_content=[tmp_path / "no-such-photos"], eval_text_models=[tmp_path / "not loaded"])
    assert taken.read_text() == "mine" and not (tmp_path / "o").exists()


def test_another_configuration_in_the_same_folder_keeps_this_ones_images(setup, tiny_models, tmp_path):
    """Before: a run with another seed wrote over the first run's images (same names), and resuming the first
    configuration then reported its own numbers beside the other run's images (and contact sheet)."""
    def run(seed):
        return run_evaluation([setup / "content" / "chelsea.png"], ["pop art"], tmp_path / "out", "stylemamba",
                              vae=tiny_models["vae"], train_config=small_config(epochs=1, seed=seed),
                              train_text_model=tiny_models["siglip"], resolution=64, device="cpu", progress=False,
                              print_table=False)["rows"][0]

    first = run(0)
    first_image = (tmp_path / "out" / first["output"]).read_bytes()
    other = run(1)
    assert other["output"] != first["output"]
    again = run(0)  # resumed: nothing trained, the first run's row and image
    assert again == first and (tmp_path / "out" / again["output"]).read_bytes() == first_image


def test_a_resumed_run_given_another_picture_of_the_same_name_measures_it_anew(setup, tiny_models, tmp_path):
    """Rows were matched by the picture's file name: a resumed run on another folder whose picture had the same
    name showed the earlier picture's numbers under the new one."""
    from conftest import load_photo

    for folder, photo in (("A", "astronaut"), ("B", "chelsea")):
        save_image(load_photo(photo, (64, 80))[0], tmp_path / folder / "photo.png")

    def run(folder):
        return run_evaluation([tmp_path / folder / "photo.png"], ["pop art"], tmp_path / "out", "stylemamba",
                              vae=tiny_models["vae"], train_config=small_config(epochs=1),
                              train_text_model=tiny_models["siglip"], styles_dir=None, train_content=[
                                  tmp_path / "A" / "photo.png"], resolution=64, device="cpu", progress=False,
                              print_table=False)["rows"][0]

    first, other = run("A"), run("B")
    assert other["content_id"] != first["content_id"] and other["ssim_lum"] != first["ssim_lum"]
    assert run("A") == first  # the same picture again: resumed


def test_clipstyler_without_a_clip_model_is_named_before_the_stylemamba_work(setup, tiny_models, tmp_path):
    """Before: --method both trained and measured every StyleMamba pair, then stopped: 'CLIPstyler needs a CLIP
    model'."""
    with pytest.raises(ValueError, match="CLIPstyler needs a CLIP model"):
        run_evaluation([setup / "content" / "chelsea.png"], ["pop art"], tmp_path / "out", "both",
                       vae=tiny_models["vae"], train_config=small_config(epochs=1),
                       train_text_model=tiny_models["siglip"], eval_text_models=[tiny_models["siglip"]],
                       resolution=64, device="cpu", progress=False, print_table=False)
    assert not (tmp_path / "out" / "styles").exists() and not (tmp_path / "out" / "images").exists()


def test_a_results_table_cut_short_in_mid_write_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
    """results.csv was rewritten in place: a kill or a full disk in mid-write left the table of a resumed run
    truncated, the earlier rows lost with it."""
    import csv

    from stylemamba.experiments import evaluate

    path = tmp_path / "results.csv"
    path.write_text("method,image,prompt\nours,a.png,red\n", encoding="utf-8")
    rows = [{"method": "ours", "image": f"{i}.png", "prompt": "red"} for i in range(3)]
    written = []

    def a_full_disk_at_the_second_row(self, row):
        written.append(row)
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        return real(self, row)

    real = csv.DictWriter.writerow
    monkeypatch.setattr(csv.DictWriter, "writerow", a_full_disk_at_the_second_row)
    with pytest.raises(OSError, match="No space left"):
        evaluate._write_csv(path, rows, {}, ["method", "image", "prompt"])
    assert path.read_text(encoding="utf-8") == "method,image,prompt\nours,a.png,red\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]  # no half-written file beside it


def both_methods_measured_with_clip_only(setup, tiny_models, out) -> list[str]:
    """eval_args for both methods, one epoch, whose metrics use the CLIP model only (not the training SigLIP)."""
    args = eval_args(setup, tiny_models, out, "--method", "both", "--epochs", "1")
    args[args.index("--eval-text-model"):args.index("--eval-text-model") + 2] = []
    return args


def test_each_methods_own_text_model_is_on_the_device_only_while_that_method_runs(setup, tiny_models, tmp_path,
                                                                                  monkeypatch):
    """With a CLIPstyler CLIP that no metric uses, it was loaded onto the GPU before StyleMamba trained, and the
    StyleMamba training model stayed there while CLIPstyler ran: both methods' models held at once."""
    from stylemamba.experiments import evaluate as ev

    cs_clip = tmp_path / "clipstyler_clip"
    shutil.copytree(tiny_models["clip"], cs_clip)
    held = {}
    real_sm, real_cs = ev._run_stylemamba, ev._run_clipstyler

    def stylemamba_run(session, *args, **kwargs):
        held["stylemamba"] = sorted(session._text)
        return real_sm(session, *args, **kwargs)

    def clipstyler_run(session, todo, key, cfg, text, vgg_net):
        held["clipstyler"] = sorted(session._text)
        held["clipstyler_model"] = text
        return real_cs(session, todo, key, cfg, text, vgg_net)

    monkeypatch.setattr(ev, "_run_stylemamba", stylemamba_run)
    monkeypatch.setattr(ev, "_run_clipstyler", clipstyler_run)
    args = both_methods_measured_with_clip_only(setup, tiny_models, tmp_path / "out")
    assert cli.main(args + ["--clipstyler-text-model", str(cs_clip)]) == 0
    assert held["stylemamba"] == [str(tiny_models["clip"])]  # the CLIPstyler model waits off the session
    assert held["clipstyler"] == [str(tiny_models["clip"])]  # the training SigLIP was let go
    assert held["clipstyler_model"].kind == "clip" and held["clipstyler_model"].device == torch.device("cpu")
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["models"]["clipstyler"]["text_model"] == str(cs_clip)
    assert report["averages"]["stylemamba"]["pairs"] == report["averages"]["clipstyler"]["pairs"] == 4


def test_a_text_model_that_trains_both_methods_is_loaded_once(setup, tiny_models, tmp_path, monkeypatch):
    """CLIPstyler run on the StyleMamba training model (no metric uses it): it was loaded a second time, on the CPU,
    and the session's copy let go before CLIPstyler ran."""
    from stylemamba.experiments import evaluate as ev

    seen = {}
    real_cs = ev._run_clipstyler

    def clipstyler_run(session, todo, key, cfg, text, vgg_net):
        seen["held"], seen["model"] = dict(session._text), text
        return real_cs(session, todo, key, cfg, text, vgg_net)

    monkeypatch.setattr(ev, "_run_clipstyler", clipstyler_run)
    from stylemamba import encoders

    loads, real_load = [], encoders.load_text_image_encoder

    def counted(path, *args, **kwargs):
        loads.append(str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(encoders, "load_text_image_encoder", counted)
    args = both_methods_measured_with_clip_only(setup, tiny_models, tmp_path / "out")
    assert cli.main(args + ["--clipstyler-text-model", str(tiny_models["siglip"])]) == 0
    assert seen["model"] is seen["held"][str(tiny_models["siglip"])]  # the session's one copy, kept for CLIPstyler
    assert loads.count(str(tiny_models["siglip"])) == 1, loads
