"""What a new user meets on the command line: nothing overwritten, one-line errors (exit code 2), videos.

Every case runs ``python -m stylemamba`` in a subprocess, as a user types it.
"""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from small import small_config
from stylemamba.encoders import load_text_image_encoder
from stylemamba.image_io import load_image, save_image
from stylemamba.style_file import save_style
from stylemamba.train import train_style
from stylemamba.vae import load_vae

ROOT = Path(__file__).resolve().parents[1]


def run(*args, python_prelude: str | None = None, **popen):
    cmd = [sys.executable, "-m", "stylemamba", *map(str, args)]
    if python_prelude:  # e.g. make `import av` fail, as on a machine without the video extra
        cmd = [sys.executable, "-c", python_prelude + "\nimport sys\nfrom stylemamba.cli import main\n"
               "sys.exit(main(sys.argv[1:]))", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, **popen)


def one_line_error(proc, *needles):
    """Exit code 2, no traceback, exactly one 'error:' line that contains every needle."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def style_file(tiny_models, tmp_path_factory, photo_loader):
    folder = tmp_path_factory.mktemp("cli_style")
    vae, text = load_vae(tiny_models["vae_ldm"]), load_text_image_encoder(tiny_models["siglip"])
    style = train_style(vae, text, photo_loader(), "pop art", small_config(epochs=1)).style
    return Path(save_style(style, folder / "pop.safetensors")["path"])


@pytest.fixture
def photos(tmp_path, photo_loader):
    folder = tmp_path / "photos"
    paths = [save_image(photo_loader(name, (40, 56))[0], folder / f"{name}.png") for name in ("astronaut", "coffee")]
    return folder, paths


def stylize_args(tiny_models, style_file, *rest):
    return ("stylize", "--device", "cpu", "--vae", tiny_models["vae_ldm"], "--style", style_file, "--quiet", *rest)


# ------------------------------------------------------------------------------------------ no data loss
def test_stylize_never_writes_over_its_input(tiny_models, style_file, photos):
    _, (photo, _) = photos
    before = photo.read_bytes()
    for extra in ((), ("--overwrite",)):
        proc = run(*stylize_args(tiny_models, style_file, "--input", photo, "--output", photo, *extra))
        one_line_error(proc, "is an input file", "never overwrites its inputs")
    assert photo.read_bytes() == before


def test_stylize_refuses_an_existing_output_unless_overwrite(tiny_models, style_file, photos, tmp_path):
    _, (photo, _) = photos
    target = tmp_path / "result.png"
    target.write_bytes(b"the user's earlier result")
    proc = run(*stylize_args(tiny_models, style_file, "--input", photo, "--output", target))
    one_line_error(proc, "already exists", "--overwrite")
    assert target.read_bytes() == b"the user's earlier result"
    proc = run(*stylize_args(tiny_models, style_file, "--input", photo, "--output", target, "--overwrite"))
    assert proc.returncode == 0, proc.stderr
    assert load_image(target).shape == (1, 3, 40, 56)
    assert f"stylemamba: wrote {target}" in proc.stderr  # says what was written where
    # one prefix, and nothing from the libraries underneath (loading chatter, progress bars)
    assert proc.stderr.splitlines() and all(line.startswith("stylemamba: ") for line in proc.stderr.splitlines())


def test_loading_models_in_a_host_process_is_quiet_and_restores_its_settings(tiny_models):
    code = ("import transformers.utils.logging as t\n"
            "from stylemamba.encoders import load_text_image_encoder\nfrom stylemamba.vae import load_vae\n"
            f"load_text_image_encoder({str(tiny_models['siglip'])!r}); load_vae({str(tiny_models['vae'])!r})\n"
            f"load_vae({str(tiny_models['vae_ldm'])!r})\n"
            "print(t.get_verbosity(), t.is_progress_bar_enabled())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # before: config warnings, "Loading weights" bars
    assert proc.stdout.split() == ["30", "True"]  # a host (ComfyUI) keeps its own verbosity and progress bars


def test_folder_input_needs_a_folder_output(tiny_models, style_file, photos, tmp_path):
    folder, _ = photos
    proc = run(*stylize_args(tiny_models, style_file, "--input", folder, "--output", tmp_path / "o.png"))
    one_line_error(proc, "names a file", "folder of 2 image(s)")
    assert not (tmp_path / "o.png").exists()  # before: a DIRECTORY named o.png
    proc = run(*stylize_args(tiny_models, style_file, "--input", folder, "--output", tmp_path / "styled"))
    assert proc.returncode == 0, proc.stderr
    written = json.loads(proc.stdout)["images"]
    assert sorted(Path(p).name for p in written) == ["astronaut_styled.png", "coffee_styled.png"]
    assert f"stylemamba: wrote 2 images in {tmp_path / 'styled'}" in proc.stderr
    proc = run(*stylize_args(tiny_models, style_file, "--input", folder, "--output", tmp_path / "styled"))
    one_line_error(proc, "2 of the 2 outputs already exist", "--overwrite")


def test_train_refuses_to_overwrite_a_style(tiny_models, style_file, photos, tmp_path):
    _, (photo, _) = photos
    existing = tmp_path / "mine.safetensors"
    existing.write_bytes(style_file.read_bytes())
    # checked before anything is loaded or trained (no models are needed to be refused)
    proc = run("train", "--device", "cpu", "--vae", tmp_path / "no-vae", "--text-model", tmp_path / "no-model",
               "--prompt", "pop art", "--content", photo, "--out", tmp_path / "mine")
    one_line_error(proc, "mine.safetensors already exists", "--overwrite")
    assert existing.read_bytes() == style_file.read_bytes()


@pytest.mark.parametrize("command", ["train", "train-universal"])
def test_an_out_that_cannot_be_written_is_refused_before_training(photos, tmp_path, command):
    """Before, a file in the way of --out's folder (or a folder not writable) was found only when the trained
    style was saved: the whole run was lost, with "[Errno 17] File exists" (or a traceback) as the only word."""
    folder, (photo, _) = photos
    (tmp_path / "styles").write_text("a file, not a folder")
    common = ("--device", "cpu", "--vae", tmp_path / "no-vae", "--text-model", tmp_path / "no-model",
              "--out", tmp_path / "styles" / "mine")
    if command == "train":
        proc = run("train", *common, "--prompt", "pop art", "--content", photo)
    else:
        proc = run("train-universal", *common, "--images", folder, "--checkpoint-dir", tmp_path / "ck")
    one_line_error(proc, f"--out {tmp_path / 'styles' / 'mine.safetensors'} cannot be written",
                   f"{tmp_path / 'styles'} is a file, not a folder", "folder you can write to")
    assert (tmp_path / "styles").read_text() == "a file, not a folder"


def test_a_content_image_too_small_is_named_by_its_file_before_the_models_load(photos, tmp_path):
    """Before: 'content image 2 is 200x4', once the VAE and the text model had loaded (which file of a folder is
    image 2?). Content images are now brought to the training size as they are read (a folder of phone photos
    no longer sits in memory at full size), so a mistake is found there, by file."""
    folder, _ = photos
    save_image(torch.rand(3, 4, 200), folder / "strip.png")
    proc = run("train", "--device", "cpu", "--vae", tmp_path / "no-vae", "--text-model", tmp_path / "no-model",
               "--prompt", "pop art", "--content", folder, "--out", tmp_path / "s")
    one_line_error(proc, "content image strip.png is 200x4", "at least 8 pixels")


def test_an_error_during_training_is_its_own_line_after_the_progress_bar(tiny_models, style_file, photos, tmp_path):
    """Before, an error raised once the bar was drawn (here: --start-from a style of another VAE) was printed on
    the bar's line ("...step/s]error: ..."), and the bar was drawn again below it when the process ended."""
    _, (photo, _) = photos
    small_vae = ROOT / "stylemamba" / "testing" / "data" / "small_vae.safetensors"
    proc = run("train", "--device", "cpu", "--vae", small_vae, "--text-model", tiny_models["siglip"],
               "--prompt", "pop art", "--content", photo, "--start-from", style_file, "--out", tmp_path / "s",
               "--epochs", "1", "--resolution", "64")
    one_line_error(proc, "was trained on the VAE", "Use the VAE the style was trained with (--vae on the command line")
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error:"), proc.stderr[-1000:]


def test_train_refuses_a_prompt_of_only_emoji_or_punctuation(tiny_models, photos, tmp_path):
    _, (photo, _) = photos
    for prompt in ("🎨🌊", "!!!"):
        proc = run("train", "--device", "cpu", "--vae", tiny_models["vae_ldm"], "--text-model", tiny_models["siglip"],
                   "--prompt", prompt, "--content", photo, "--preset", "cpu", "--epochs", "1", "--out",
                   tmp_path / "s.safetensors", "--quiet")
        one_line_error(proc, f"prompt '{prompt}' has no words the text model knows", "describe the style in words")
        assert not (tmp_path / "s.safetensors").exists()  # before: a style of one unknown token


def test_train_without_an_lpips_backbone_warns_once_naming_the_flag(tiny_models, photos, tmp_path):
    _, (photo, _) = photos
    proc = run("train", "--device", "cpu", "--vae", tiny_models["vae_ldm"], "--text-model", tiny_models["siglip"],
               "--prompt", "pop art", "--content", photo, "--preset", "cpu", "--epochs", "1", "--steps-per-epoch", "1",
               "--resolution", "64", "--out", tmp_path / "s.safetensors", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lpips = [line for line in proc.stderr.splitlines() if "LPIPS" in line]
    assert len(lpips) == 1 and "--lpips-backbone" in lpips[0], lpips  # before: the library's warning too


@pytest.mark.slow
def test_train_cpu_preset_and_overwrite(tiny_models, photos, tmp_path):
    _, (photo, _) = photos
    out = tmp_path / "cpu.safetensors"
    out.write_bytes(b"old")
    proc = run("train", "--device", "cpu", "--vae", tiny_models["vae_ldm"], "--text-model", tiny_models["siglip"],
               "--prompt", "pop art", "--content", photo, "--out", out, "--preset", "cpu", "--epochs", "1",
               "--overwrite", "--quiet", "--memory-plan", "micro_batch=1,view_chunk=4,checkpointing=on")
    assert proc.returncode == 0, proc.stderr
    assert f"stylemamba: style written to {out}" in proc.stderr
    recipe = json.loads(run("info", out, "--full").stdout)["recipe"]
    assert recipe["memory_plan"] == {"micro_batch": 1, "view_chunk": 4, "checkpointing": True}
    assert (recipe["resolution"], recipe["loss"]["n_crops"], recipe["fusion"]["width"], recipe["fusion"]["depth"]) == \
        (256, 16, 128, 2)
    assert recipe["epochs"] == 1  # flags given with the preset still apply


def test_train_names_a_bad_memory_plan_by_its_flag(tiny_models, photos, tmp_path):
    _, (photo, _) = photos
    proc = run("train", "--device", "cpu", "--vae", tiny_models["vae_ldm"], "--text-model", tiny_models["siglip"],
               "--prompt", "pop art", "--content", photo, "--out", tmp_path / "s.safetensors",
               "--memory-plan", "micro_batch=one")
    one_line_error(proc, "--memory-plan", "micro_batch=N,view_chunk=N,checkpointing=on|off")
    assert not (tmp_path / "s.safetensors").exists()


def test_micro_batches_the_recipe_cannot_split_are_refused_before_any_model_loads(photos, tmp_path):
    """Found by the trainer after the VAE and text model had loaded, in the library's words (LossConfig.tv_form)."""
    import json

    _, (photo, other) = photos
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"loss": {"tv": 1.0, "tv_form": "clipstyler"}}))
    proc = run("train", "--device", "cpu", "--vae", tmp_path / "no-vae", "--text-model", tmp_path / "no-model",
               "--prompt", "pop art", "--content", photo, other, "--config", recipe, "--out", tmp_path / "s",
               "--memory-plan", "micro_batch=1")
    one_line_error(proc, "--memory-plan micro_batch=1 splits the 2 content images into micro-batches",
                   '"loss": {"tv_form": "l1"} in the --config recipe')


# ------------------------------------------------------------------------------------------ one-line errors
def test_rgba_result_to_jpeg_is_refused_before_work(tiny_models, style_file, tmp_path, photo_loader):
    rgba = torch.cat([photo_loader()[0], torch.rand(1, 64, 64)])
    src = save_image(rgba, tmp_path / "logo.png")
    proc = run(*stylize_args(tiny_models, style_file, "--input", src, "--output", tmp_path / "logo.jpg"))
    one_line_error(proc, "alpha channel", ".png or .webp")
    assert not (tmp_path / "logo.jpg").exists()


@pytest.mark.parametrize("flags, needles", [
    (("--batch-size", "0"), ("--batch-size 0", "at least 1")),
    (("--tile-size", "0"), ("--tile-size 0", "at least 256")),
    (("--tile-size", "100"), ("--tile-size 100", "multiple of 8")),
    (("--device", "cuda"), ("no CUDA GPU", "--device cpu")),
    (("--device", "mps"), ("--device 'mps' is not available here", "use auto, cpu, cuda")),  # before: a traceback
    (("--device", "meta"), ("--device 'meta' holds no data", "use auto, cpu, cuda")),  # before: a traceback later
])
def test_bad_numbers_and_devices(tiny_models, style_file, photos, tmp_path, flags, needles):
    there = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}.get(flags[1])
    if there is not None and there():
        pytest.skip(f"this machine has {flags[1]}")
    _, (photo, _) = photos
    proc = run(*stylize_args(tiny_models, style_file, "--input", photo, "--output", tmp_path / "x.png", *flags))
    one_line_error(proc, *needles)


def test_stylize_names_its_weights_flag_before_the_vae_loads(style_file, photos, tmp_path):
    """Before: 'style weights [1.0] must be 2 ...' once the VAE had loaded, without the flag train names."""
    _, (photo, _) = photos
    proc = run("stylize", "--device", "cpu", "--vae", tmp_path / "no-vae", "--style", style_file, "--style",
               style_file, "--weights", "1", "--input", photo, "--output", tmp_path / "x.png")
    one_line_error(proc, "--weights: style weights [1.0] must be 2", "one per style")


def test_stylize_without_vae_names_the_vae_the_style_was_trained_on(style_file, photos, tmp_path):
    """The README's `stylize --style ... --input ... --output ...` without --vae, for a style trained on a VAE file:
    the default hub VAE failed (offline) with only 'Download https://huggingface.co/stabilityai/sd-vae-ft-mse',
    a VAE the style would then refuse."""
    _, (photo, _) = photos
    proc = run("stylize", "--device", "cpu", "--style", style_file, "--input", photo, "--output", tmp_path / "x.png")
    one_line_error(proc, "'stabilityai/sd-vae-ft-mse'", "style 'pop art' was trained on the VAE 'vae_ldm.safetensors'",
                   "give that VAE with --vae")


def test_a_pickle_passed_as_style_is_named_as_such(tiny_models, photos, tmp_path):
    _, (photo, _) = photos
    pickled = tmp_path / "style.pt"
    torch.save({"embedding": torch.zeros(3)}, pickled)
    proc = run(*stylize_args(tiny_models, pickled, "--input", photo, "--output", tmp_path / "x.png"))
    one_line_error(proc, "pickled files are not loaded")


def test_a_picture_renamed_as_a_style_is_named_as_a_picture(tiny_models, photos, tmp_path):
    _, (photo, _) = photos
    renamed = tmp_path / "starry.safetensors"
    renamed.write_bytes(save_image(load_image(photo)[0], tmp_path / "p.jpg").read_bytes())
    for command in (("info", renamed), stylize_args(tiny_models, renamed, "--input", photo, "--output", tmp_path)):
        proc = run(*command)  # before: "not a readable .safetensors file (... header too large) ... corrupt"
        one_line_error(proc, "starry.safetensors is a JPEG image, not a style file", "input to stylise")


@pytest.mark.parametrize("name, head, what", [
    ("clip_styled.mp4", b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "an MP4 / QuickTime video"),
    ("clip_styled.mkv", b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01", "a Matroska / WebM video")])
def test_info_on_a_video_says_it_is_a_video(tmp_path, name, head, what):
    """`info out.png` shows what made a stylised PNG; `info` on the stylised video said 'not a readable .safetensors
    file (header too large); it may be truncated or corrupt: copy or download it again'."""
    video = tmp_path / (name + ".safetensors")  # renamed, or given as a style
    video.write_bytes(head + b"\x00" * 500)
    one_line_error(run("info", video), f"{video.name} is {what}, not a style file", "shows which style made it")


def test_video_without_the_video_extra(tiny_models, style_file, tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 64)
    proc = run(*stylize_args(tiny_models, style_file, "--input", clip, "--output", tmp_path / "out.mp4"),
               python_prelude="import sys; sys.modules['av'] = None  # PyAV not installed")
    one_line_error(proc, "video needs PyAV", "pip install 'stylemamba[video]'")


def test_info_into_a_closed_pipe_has_no_traceback(style_file):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written (`... | head -0`)
    try:
        proc = subprocess.run([sys.executable, "-m", "stylemamba", "info", str(style_file), "--full"], cwd=ROOT,
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_info_shows_the_base_vae_by_name_and_weight_id(style_file, tiny_models):
    info = json.loads(run("info", style_file).stdout)
    vae = load_vae(tiny_models["vae_ldm"])
    from stylemamba.vae import weights_id
    assert info["base_vae"] == f"'vae_ldm.safetensors' (weights {weights_id(vae.identity)})"


# ------------------------------------------------------------------------------------------ video
@pytest.mark.slow
def test_video_is_streamed_to_h264_with_its_audio(tiny_models, style_file, tmp_path):
    av = pytest.importorskip("av")
    from video_clip import make_clip

    clip = make_clip(tmp_path / "clip.mp4", frames=20, audio="aac")
    proc = run(*stylize_args(tiny_models, style_file, "--input", clip, "--output", tmp_path / "out.mp4",
                             "--batch-size", "3"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report == {"video": str(tmp_path / "out.mp4"), "frames": 20, "audio": "aac (copied)"}
    with av.open(str(tmp_path / "out.mp4")) as out:
        video, audio = out.streams.video[0], out.streams.audio[0]
        assert video.codec_context.name == "h264" and (video.width, video.height) == (64, 48)
        assert audio.codec_context.name == "aac"
        seconds = float(audio.duration * audio.time_base)  # read while open: PyAV 19 refuses a closed container's
        frames = [f.to_ndarray(format="rgb24") for f in out.decode(video=0)]
    assert len(frames) == 20
    assert seconds == pytest.approx(20 / 24, abs=0.1)
    proc = run(*stylize_args(tiny_models, style_file, "--input", clip, "--output", clip))
    one_line_error(proc, "is an input file")
    # the video says what made it, as a stylised PNG does (`info` on it was an error)
    info = run("info", tmp_path / "out.mp4")
    assert info.returncode == 0, info.stderr[-2000:]
    note = json.loads(info.stdout)
    assert note["input"] == "clip.mp4" and note["strength"] == 1.0 and note["made_by"].startswith("stylemamba ")
    assert note["styles"][0]["prompts"] == json.loads(run("info", style_file).stdout)["prompts"]
    one_line_error(run("info", clip), "clip.mp4 is a video without StyleMamba's note")


# ------------------------------------------------------------------------------------------ Ctrl-C
def interrupted(args, progress: bytes, signum: int | None = None) -> tuple[int, str]:
    """``python -m stylemamba ARGS`` sent one SIGINT (a user's Ctrl-C; or ``signum``) once its stderr matches
    ``progress`` (a regular expression: a step done, after the models loaded); its exit code and stderr."""
    import re
    import signal
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "stylemamba", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = bytearray()
    reader = threading.Thread(target=lambda: [seen.extend(chunk) for chunk in iter(lambda: proc.stderr.read1(4096),
                                                                                   b"")], daemon=True)
    reader.start()
    try:
        for _ in range(2400):  # at most 240 s
            if re.search(progress, bytes(seen)) or proc.poll() is not None:
                break
            threading.Event().wait(0.1)
        assert proc.poll() is None, bytes(seen).decode(errors="replace")[-2000:]
        proc.send_signal(signum or signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    return proc.returncode, bytes(seen).decode(errors="replace")


def test_ctrl_c_during_training_keeps_the_partial_style_beside_an_earlier_one(tiny_models, photos, tmp_path):
    """The first Ctrl-C stops after the current step and saves what was trained as ``<out>-partial``; an
    earlier partial style of that name is kept and the new one takes the next free name."""
    import re

    _, (photo, _) = photos
    out = tmp_path / "mine.safetensors"
    earlier = tmp_path / "mine-partial.safetensors"
    earlier.write_bytes(b"an earlier partial style")
    code, err = interrupted(("train", "--device", "cpu", "--vae", tiny_models["vae_ldm"], "--text-model",
                             tiny_models["siglip"], "--prompt", "pop art", "--content", photo, "--out", out,
                             "--name", "Pop v2", "--resolution", "64", "--epochs", "2000"), rb"\| *[1-9]\d*/2000")
    assert code == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert "stopping after this step and keeping the style of the finished steps" in err, err[-2000:]
    saved = tmp_path / "mine-partial-2.safetensors"
    match = re.search(r"cancelled after (\d+) steps: partial style saved to (.+)", err)
    assert match and Path(match.group(2).strip()) == saved, err[-2000:]
    assert 1 <= int(match.group(1)) < 2000
    assert earlier.read_bytes() == b"an earlier partial style" and not out.exists()
    info = json.loads(run("info", saved, "--full").stdout)
    assert info["recipe"]["epochs"] == 2000 and info["recipe"]["resolution"] == 64
    assert info["name"] == "Pop v2"  # --name holds for the partial style too


def test_ctrl_c_during_universal_training_keeps_an_earlier_partial_model(tiny_models, photos, tmp_path):
    folder, _ = photos
    bank = tmp_path / "bank.txt"
    bank.write_text("oil painting\nwatercolor\n")
    out = tmp_path / "uni.safetensors"
    earlier = tmp_path / "uni-partial.safetensors"
    earlier.write_bytes(b"an earlier partial model")
    code, err = interrupted(("train-universal", "--device", "cpu", "--vae", tiny_models["vae"], "--text-model",
                             tiny_models["siglip"], "--bank", bank, "--images", folder, "--out", out,
                             "--checkpoint-dir", tmp_path / "ck", "--resolution", "64", "--batch-size", "2",
                             "--epochs", "1", "--steps-per-epoch", "2000", "--log-every", "1"), rb"step [1-9]\d*/2000")
    assert code == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    saved = tmp_path / "uni-partial-2.safetensors"
    assert f"partial model {saved}" in err and saved.is_file(), err[-2000:]
    assert earlier.read_bytes() == b"an earlier partial model" and not out.exists()
    assert json.loads(run("info", saved).stdout)


@pytest.mark.slow
def test_kill_during_a_video_leaves_no_partial_file(tiny_models, style_file, tmp_path):
    """`kill` (SIGTERM) of stylize killed it outright: a hidden .clip_styled.mp4.partial.mp4 was left in the output
    folder (Ctrl-C removed it). Now it ends as Ctrl-C does, exit code 143 (128 + SIGTERM)."""
    import signal

    pytest.importorskip("av")
    from video_clip import make_clip

    clip = make_clip(tmp_path / "clip.mp4", frames=2000, audio=None)
    out = tmp_path / "out"
    code, err = interrupted(("stylize", "--device", "cpu", "--vae", tiny_models["vae_ldm"], "--style", style_file,
                             "--input", clip, "--output", out), rb"\| *[1-9]\d*/2000", signal.SIGTERM)
    assert code == 143, err[-2000:]
    assert "Traceback" not in err and "stopped (SIGTERM)" in err, err[-2000:]
    assert "clip_styled.mp4 was not written" in err, err[-2000:]  # before: 'results written so far are kept'
    assert not out.exists() or not list(out.iterdir()), list(out.iterdir())


def test_a_stopped_folder_run_says_what_it_kept_and_skip_existing_finishes_it(tiny_models, style_file, tmp_path):
    """Ctrl-C in a folder of images said only 'results written so far are kept', and running the command again was
    refused ('N of the M outputs already exist'), leaving --overwrite (all redone) as the only way on."""
    import re

    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(300):
        Image.new("RGB", (64, 64), (i % 256, 90, 200 - i % 200)).save(photos / f"p{i:03d}.png")
    out = tmp_path / "out"
    args = ("stylize", "--device", "cpu", "--vae", tiny_models["vae_ldm"], "--style", style_file, "--input", photos,
            "--output", out)
    code, err = interrupted(args, rb"\| *[1-9]\d*/300")
    assert code == 130 and "Traceback" not in err, err[-2000:]
    said = re.search(r"cancelled \(Ctrl-C\); (\d+) of the 300 images were written to (.+) and are kept; run the same "
                     r"command with --skip-existing to stylise the rest", err)
    assert said and Path(said.group(2)) == out, err[-2000:]
    kept = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert len(kept) == int(said.group(1)) and 1 <= len(kept) < 300, len(kept)  # no half-written file among them
    one_line_error(run(*args), f"{len(kept)} of the 300 outputs already exist", "pass --skip-existing")
    proc = run(*args, "--skip-existing", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(json.loads(proc.stdout)["images"]) == 300 - len(kept)
    assert sorted(p.name for p in out.iterdir()) == [f"p{i:03d}_styled.png" for i in range(300)]
    assert all(out.joinpath(name).stat().st_mtime_ns == t for name, t in kept.items())  # the kept ones untouched
    again = run(*args, "--skip-existing")
    assert again.returncode == 0 and json.loads(again.stdout) == {"images": []} and "nothing to do" in again.stderr
    both = run(*args, "--skip-existing", "--overwrite")
    assert both.returncode == 2 and "argument --overwrite: not allowed with argument --skip-existing" in both.stderr


def test_skip_existing_leaves_a_finished_video_alone(style_file, tmp_path):
    pytest.importorskip("av")
    from video_clip import make_clip

    clip = make_clip(tmp_path / "clip.mp4", frames=4, audio=None)
    done = tmp_path / "out" / "clip_styled.mp4"
    done.parent.mkdir()
    done.write_bytes(b"an earlier result")
    args = ("stylize", "--device", "cpu", "--vae", tmp_path / "no-vae", "--style", style_file, "--input", clip,
            "--output", tmp_path / "out")
    one_line_error(run(*args), "clip_styled.mp4 already exists; pass --overwrite")
    proc = run(*args, "--skip-existing")  # before any model loads: --vae names nothing
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"video": None}, proc.stderr[-2000:]
    assert "clip.mp4 already has its result" in proc.stderr and done.read_bytes() == b"an earlier result"


def test_skip_existing_with_one_image_whose_result_exists_says_so_once(tmp_path):
    """One image: its own line (not 'every image of photo.png ... in out.png' after 'skipping 1 of the 1 images')."""
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (10, 20, 30)).save(photo)
    done = tmp_path / "photo_styled.png"
    done.write_bytes(b"an earlier result")
    style = tmp_path / "s.safetensors"
    style.write_bytes(b"never read: nothing to do")
    proc = run("stylize", "--vae", tmp_path / "no-vae", "--style", style, "--input", photo, "--output", tmp_path,
               "--skip-existing")
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"images": []}, proc.stderr[-2000:]
    said = [line for line in proc.stderr.splitlines() if line.strip()]
    assert said == [f"stylemamba: photo.png already has its result {done}: nothing to do"], proc.stderr
    assert done.read_bytes() == b"an earlier result"


def test_a_stopped_overwrite_run_does_not_advise_skip_existing_over_earlier_results(tmp_path):
    """After --overwrite, the images not reached still hold the earlier run's results: --skip-existing would keep
    them (and argparse refuses it beside --overwrite), yet the line said to run with --skip-existing."""
    from stylemamba.cli import stopped_images_kept

    targets = [tmp_path / f"p{i}_styled.png" for i in range(4)]
    for t in targets[:2]:
        t.write_bytes(b"x")
    plain = stopped_images_kept([str(t) for t in targets[:2]], targets)
    assert plain.endswith("run the same command with --skip-existing to stylise the rest"), plain
    fresh = stopped_images_kept([str(t) for t in targets[:2]], targets, overwrite=True)
    assert "--skip-existing instead of --overwrite" in fresh, fresh
    for t in targets:
        t.write_bytes(b"x")
    stale = stopped_images_kept([str(t) for t in targets[:2]], targets, overwrite=True)
    assert stale.startswith(f"2 of the 4 images were written to {tmp_path} and are kept; 2 of the others still "
                            "hold an earlier run's result"), stale
    assert "run the same command again to replace them all" in stale, stale
    none = stopped_images_kept([], targets)
    assert none.startswith("none of the 4 images was written"), none
    one = stopped_images_kept([], targets[:1], folder=False)
    assert one == "p0_styled.png was not written (nothing half-written is left)", one


# ------------------------------------------------------------------------------------------ found in a review
@pytest.mark.parametrize("make, needles", [
    (lambda p: p.write_text("not an image"), ("mask bank.txt is not a readable image", "grayscale PNG")),
    (lambda p: p.mkdir(), ("mask image", "bank.txt is a folder, not a file")),
])
def test_a_bad_mask_is_named_before_any_model_loads(tiny_models, style_file, photos, tmp_path, make, needles):
    _, (photo, _) = photos
    mask = tmp_path / "bank.txt"
    make(mask)
    proc = run("stylize", "--device", "cpu", "--vae", tmp_path / "no-vae", "--style", style_file, "--input", photo,
               "--output", tmp_path / "x.png", "--mask", mask)
    one_line_error(proc, *needles)


def test_a_folder_where_one_file_is_wanted_is_called_a_folder(tiny_models, style_file, photos, tmp_path):
    """A folder given as the reference picture, the style file or to info was said to be 'not found', though
    the user could see it there."""
    folder, (photo, _) = photos
    one_line_error(run("info", folder), "style file", "is a folder, not a file")
    one_line_error(run("stylize", "--device", "cpu", "--style", folder, "--input", photo, "--output",
                       tmp_path / "x.png"), "style file", "is a folder, not a file")
    from stylemamba.image_io import load_image  # what --reference reads

    with pytest.raises(FileNotFoundError, match="image .* is a folder, not a file"):
        load_image(folder)


def test_an_existing_folder_with_a_dot_in_its_name_takes_the_result(tiny_models, style_file, photos, tmp_path):
    _, (photo, _) = photos
    folder = tmp_path / "results.v2"
    folder.mkdir()
    proc = run(*stylize_args(tiny_models, style_file, "--input", photo, "--output", folder))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (folder / f"{photo.stem}_styled.png").is_file()


def test_train_universal_checks_its_device_flag_first(tmp_path):
    proc = run("train-universal", "--device", "gpu", "--vae", tmp_path / "no-vae", "--text-model", tmp_path / "no",
               "--bank", tmp_path / "bank.txt", "--images", tmp_path, "--out", tmp_path / "u",
               "--checkpoint-dir", tmp_path / "ck")
    one_line_error(proc, "--device 'gpu' is not a device", "cuda:N")


def test_the_demo_says_when_its_recipe_leaves_the_given_vgg_unused(tiny_models, tmp_path):
    proc = run("demo", "--out", tmp_path / "demo", "--vgg", tiny_models["vgg19"], "--epochs", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "VGG content loss off: --vgg was given but the demo's recipe's loss.vgg_weight_start" in proc.stderr


@pytest.mark.parametrize("recipe, needles", [
    ("{not json", ("--config", "bad.json is not a readable JSON recipe")),
    ("[1, 2]", ("--config", "bad.json: a recipe is a JSON object", "not a JSON list")),
    (None, ("--config", "bad.json: no such file")),
])
def test_train_names_a_bad_config_file(photos, tmp_path, recipe, needles):
    _, (photo, _) = photos
    if recipe is not None:
        (tmp_path / "bad.json").write_text(recipe)
    for command in ("train", "train-universal"):
        args = (("--prompt", "pop art", "--content", photo) if command == "train" else
                ("--bank", tmp_path / "bank.txt", "--images", photo, "--checkpoint-dir", tmp_path / "ck"))
        proc = run(command, "--device", "cpu", "--vae", tmp_path / "no-vae", "--text-model", tmp_path / "no", *args,
                   "--out", tmp_path / "s", "--config", tmp_path / "bad.json")
        one_line_error(proc, *needles)


def test_train_refuses_weights_with_a_reference_picture(photos, tmp_path):
    _, (photo, other) = photos
    proc = run("train", "--device", "cpu", "--vae", tmp_path / "no-vae", "--text-model", tmp_path / "no",
               "--reference", other, "--weights", "1", "--content", photo, "--out", tmp_path / "s")
    one_line_error(proc, "--weights mixes several --prompt styles", "drop --weights")


@pytest.mark.parametrize("weights, needle", [(["1"], "must be 2 non-negative"), (["1", "-1"], "[1.0, -1.0]"),
                                             (["0", "0"], "positive sum")])
def test_train_checks_its_weights_against_the_prompts_before_the_models_load(photos, tmp_path, weights, needle):
    """Before: 'prompt weights [1.0] must be 2 ...' once the VAE and the text model had loaded, without the flag."""
    _, (photo, _) = photos
    proc = run("train", "--device", "cpu", "--vae", tmp_path / "no-vae", "--text-model", tmp_path / "no-model",
               "--prompt", "fire", "--prompt", "ice", "--weights", *weights, "--content", photo,
               "--out", tmp_path / "s")
    one_line_error(proc, "--weights: prompt weights", needle, "one per --prompt")


def test_the_demo_never_replaces_an_earlier_demos_results_without_overwrite(tmp_path):
    """Before: a second demo into the same --out replaced the style and every picture without a word, and an empty
    --prompt trained 'red'."""
    from stylemamba.testing.photos import HELD_OUT_PHOTOS

    earlier = tmp_path / "demo" / f"compare-{HELD_OUT_PHOTOS[0]}.png"
    earlier.parent.mkdir()
    earlier.write_bytes(b"an earlier demo's picture")
    proc = run("demo", "--device", "cpu", "--out", tmp_path / "demo")
    one_line_error(proc, f"{tmp_path / 'demo'} already holds {earlier.name}", "pass --overwrite to replace them")
    assert earlier.read_bytes() == b"an earlier demo's picture" and "demo: prompt" not in proc.stdout
    one_line_error(run("demo", "--device", "cpu", "--out", tmp_path / "new", "--prompt", " "), "--prompt is empty")
    (tmp_path / "prompts.txt").write_text("red\n")
    for command, required in (("demo", ()), ("eval", ("--content", tmp_path, "--prompts", tmp_path / "prompts.txt"))):
        proc = run(command, *required, "--device", "cpu", "--out", tmp_path / command, "--resolution", "60")
        one_line_error(proc, "--resolution 60 is invalid: a multiple of 8, at least 64")  # not TrainConfig.resolution


def test_the_demo_checks_its_out_and_epochs_before_it_trains(tmp_path):
    """Before: a file in the way of --out was a NotADirectoryError traceback after the training; --epochs 0 was
    named 'TrainConfig.epochs'."""
    (tmp_path / "results").write_text("a file")
    proc = run("demo", "--device", "cpu", "--out", tmp_path / "results" / "demo")
    one_line_error(proc, f"--out {tmp_path / 'results' / 'demo' / 'demo-style.safetensors'} cannot be written",
                   "is a file, not a folder")
    assert "demo: prompt" not in proc.stdout
    one_line_error(run("demo", "--device", "cpu", "--out", tmp_path / "d", "--epochs", "0"), "--epochs 0 is too small")


def test_tiny_models_into_a_place_it_cannot_write_is_one_line(tmp_path):
    (tmp_path / "models").write_text("a file")  # before: a NotADirectoryError traceback
    one_line_error(run("tiny-models", tmp_path / "models" / "tiny"), f"{tmp_path / 'models'} is a file, not a folder")


def test_tiny_models_never_replace_a_users_models_without_overwrite(tmp_path):
    """Before: `tiny-models models` into a folder holding the user's own vae/ gave it random weights silently."""
    mine = tmp_path / "models" / "vae" / "config.json"
    mine.parent.mkdir(parents=True)
    mine.write_text('{"my": "real VAE"}')
    one_line_error(run("tiny-models", tmp_path / "models"), "already holds vae",
                   "would be written over them; pass --overwrite")  # before: 'replace them' twice in one line
    one_line_error(run("tiny-models", tmp_path / "new", "--seed", 2**64), f"--seed {2**64} is out of range")
    assert not (tmp_path / "new").exists()  # before: 'Overflow when unpacking long long', an empty folder left
    assert mine.read_text() == '{"my": "real VAE"}' and not (tmp_path / "models" / "manifest.json").exists()
    assert run("tiny-models", tmp_path / "models", "--overwrite").returncode == 0
    assert (tmp_path / "models" / "manifest.json").is_file() and mine.read_text() != '{"my": "real VAE"}'


def test_check_names_a_bad_threads_or_json_flag_before_it_trains(tmp_path):
    """Before: --threads -2 was a RuntimeError traceback, and a --json that could not be written failed only after
    the minutes of training; a --json in a folder not there yet failed then too (it is now made)."""
    one_line_error(run("check", "--threads", "-2"), "--threads -2 is too small", "at least 0")
    (tmp_path / "results").write_text("a file")
    proc = run("check", "--quick", "--json", tmp_path / "results" / "check.json")
    one_line_error(proc, f"--json {tmp_path / 'results' / 'check.json'} cannot be written", "is a file, not a folder")
    proc = run("check", "--quick", "--json", tmp_path)  # a folder: before, IsADirectoryError after the training
    one_line_error(proc, f"--json {tmp_path} is a folder", "the name of a file")
    assert "trained" not in proc.stdout


def test_a_seed_torch_cannot_take_is_named_before_any_work(photos, tmp_path):
    """Before: 'error: Overflow when unpacking long long', after the check's header or after train loaded its
    models, naming neither the seed nor what it may be."""
    huge = str(2**64)
    proc = run("check", "--quick", "--seed", huge)
    one_line_error(proc, f"seed={huge} is invalid", "2**64 - 1")
    assert "functional check" not in proc.stdout
    folder, _ = photos
    proc = run("train", "--device", "cpu", "--vae", tmp_path / "no-vae-needed", "--prompt", "x", "--content", folder,
               "--out", tmp_path / "s", "--seed", huge)  # refused before the (missing) VAE is looked for
    one_line_error(proc, f"seed={huge} is invalid")


def test_check_refuses_huge_threads_and_an_existing_json_before_it_trains(tmp_path):
    """Before: --threads 100000 crashed torch mid-check (a segmentation fault or a MemoryError), and an earlier
    check's --json file was written over without a word."""
    one_line_error(run("check", "--quick", "--threads", "100000"), "--threads 100000 is more than the",
                   f"at most {os.cpu_count()}")
    earlier = tmp_path / "check.json"
    earlier.write_text("the last release's figures")
    proc = run("check", "--quick", "--json", earlier)
    one_line_error(proc, f"--json {earlier} already exists", "--overwrite")
    assert "trained" not in proc.stdout and earlier.read_text() == "the last release's figures"
    assert "trained" not in proc.stdout
    from stylemamba.testing.check import report
    from stylemamba.testing.proof import Row

    report([Row("r", "1", "> 0", True, "it works")], 1.0, io.StringIO(), str(tmp_path / "new" / "check.json"))
    assert json.loads((tmp_path / "new" / "check.json").read_text())[0]["name"] == "r"


def test_an_lpips_backbone_named_without_its_weights_is_refused_before_the_models_load(photos, tmp_path):
    _, (photo, _) = photos
    (tmp_path / "bank.txt").write_text("pop art\nink wash\n")
    for command in ("train", "train-universal"):
        args = (("--prompt", "pop art", "--content", photo) if command == "train" else
                ("--bank", tmp_path / "bank.txt", "--images", photo, "--checkpoint-dir", tmp_path / "ck"))
        proc = run(command, "--device", "cpu", "--vae", tmp_path / "no-vae", "--text-model", tmp_path / "no", *args,
                   "--out", tmp_path / "s", "--lpips", "alex")
        one_line_error(proc, "--lpips alex needs --lpips-backbone", "or --lpips off")


def test_images_of_one_name_in_a_folder_each_keep_their_result(tiny_models, style_file, tmp_path, photo_loader):
    folder = tmp_path / "mixed"
    save_image(photo_loader("astronaut", (40, 56))[0], folder / "a.png")
    save_image(photo_loader("coffee", (40, 56))[0], folder / "a.jpg")
    save_image(photo_loader("coffee", (40, 56))[0], folder / "b.png")
    (folder / "sub.jpg").mkdir()  # a folder named like an image, and macOS's ._ copy of a file: not inputs
    (folder / "._b.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    proc = run(*stylize_args(tiny_models, style_file, "--input", folder, "--output", tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = sorted(Path(p).name for p in json.loads(proc.stdout)["images"])
    assert written == ["a_jpg_styled.png", "a_png_styled.png", "b_styled.png"]  # before: a_styled.png twice
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == written


def test_a_folder_stylised_into_itself_skips_its_earlier_results(tiny_models, style_file, photos):
    folder, _ = photos
    results = ["astronaut_styled.png", "coffee_styled.png"]
    inside = folder / "styled"  # a folder inside the input folder is not read: no result of a result
    for _ in range(2):
        proc = run(*stylize_args(tiny_models, style_file, "--input", folder, "--output", inside, "--overwrite"))
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in inside.iterdir()) == results
    proc = run(*stylize_args(tiny_models, style_file, "--input", folder, "--output", folder))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run(*stylize_args(tiny_models, style_file, "--input", folder, "--output", folder))
    one_line_error(proc, "2 of the 2 outputs already exist", "--overwrite")  # before: "... is an input file"
    assert "skipped 2 earlier result(s)" in proc.stderr
    before = (folder / results[0]).stat().st_mtime_ns
    proc = run(*stylize_args(tiny_models, style_file, "--input", folder, "--output", folder, "--overwrite"))
    assert proc.returncode == 0, proc.stderr[-2000:]  # before: the results were read as photos
    assert sorted(Path(p).name for p in json.loads(proc.stdout)["images"]) == results
    assert f"skipped 2 earlier result(s) of stylize in {folder}" in proc.stderr
    assert (folder / results[0]).stat().st_mtime_ns != before  # replaced, as --overwrite asks
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == sorted(["astronaut.png", "coffee.png", *results])


def test_a_result_says_what_made_it_and_is_not_stylised_again_into_another_folder(tiny_models, style_file, photos,
                                                                                   tmp_path):
    """A stylised PNG did not say which style made it; and stylising a folder that held earlier results into ANOTHER
    folder read them as photos (a_styled.png -> a_styled_styled.png). A photo of the user's that is only named
    like a result is still stylised."""
    folder, _ = photos
    proc = run(*stylize_args(tiny_models, style_file, "--input", folder, "--output", folder, "--strength", "0.7"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = run("info", folder / "coffee_styled.png")
    assert info.returncode == 0, info.stderr[-2000:]
    note = json.loads(info.stdout)
    assert note["input"] == "coffee.png" and note["strength"] == 0.7 and note["made_by"].startswith("stylemamba ")
    assert note["styles"][0]["prompts"] == json.loads(run("info", style_file).stdout)["prompts"]
    (folder / "mine.png").write_bytes((folder / "coffee.png").read_bytes())
    (folder / "mine_styled.png").write_bytes((folder / "coffee.png").read_bytes())  # the user's photo, no note
    proc = run(*stylize_args(tiny_models, style_file, "--input", folder, "--output", tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"skipped 2 earlier result(s) of stylize in {folder}" in proc.stderr
    assert sorted(Path(p).name for p in json.loads(proc.stdout)["images"]) == [
        "astronaut_styled.png", "coffee_styled.png", "mine_styled.png", "mine_styled_styled.png"]
    one_line_error(run("info", folder / "mine_styled.png"), "mine_styled.png is a picture without StyleMamba's note")


def test_a_broken_file_in_a_folder_is_named_before_any_result_is_written(tiny_models, style_file, photos, tmp_path):
    folder, _ = photos
    (folder / "b_broken.png").write_text("not a picture")
    proc = run("stylize", "--device", "cpu", "--vae", tmp_path / "no-vae", "--style", style_file, "--input", folder,
               "--output", tmp_path / "out")
    one_line_error(proc, "1 of the 3 input file(s) are not readable images: b_broken.png", "fix or move them out")
    assert not (tmp_path / "out").exists()  # before: astronaut_styled.png written, then the error


def test_an_image_too_small_in_a_folder_is_named_before_any_result_is_written(style_file, photos, tmp_path):
    folder, _ = photos
    save_image(torch.ones(3, 1, 1), folder / "b_dot.png")
    for source in (folder, folder / "b_dot.png"):
        proc = run("stylize", "--device", "cpu", "--vae", tmp_path / "no-vae", "--style", style_file, "--input",
                   source, "--output", tmp_path / "out")
        one_line_error(proc, "smaller than 8 pixels on a side: b_dot.png (1x1)", "move them out")
    assert not (tmp_path / "out").exists()  # before: astronaut_styled.png written, then "image is 1x1" (no name)


def test_an_existing_file_as_output_folder_is_refused_first(tiny_models, style_file, photos, tmp_path):
    folder, (photo, _) = photos
    notes = tmp_path / "notes"
    notes.write_text("the user's notes")
    proc = run("stylize", "--device", "cpu", "--vae", tmp_path / "no-vae", "--style", style_file, "--input", photo,
               "--output", notes)
    one_line_error(proc, f"--output {notes} is an existing file, not a folder", "astronaut_styled.png")
    proc = run("stylize", "--device", "cpu", "--vae", tmp_path / "no-vae", "--style", style_file, "--input", folder,
               "--output", notes)
    one_line_error(proc, f"e.g. --output {tmp_path / 'notes_styled'}")  # before: suggested the same path again
    pytest.importorskip("av")
    from video_clip import make_clip

    clip = make_clip(tmp_path / "clip.mp4", frames=2)
    for output, needle in ((notes, f"--output {notes} is an existing file, not a folder: give a folder, or a video"),
                           (notes / "x.mp4", f"{notes} is a file, not a folder")):
        proc = run("stylize", "--device", "cpu", "--vae", tmp_path / "no-vae", "--style", style_file, "--input",
                   clip, "--output", output, "--overwrite")
        one_line_error(proc, needle)  # before: a traceback (NotADirectoryError) after the models loaded
    assert notes.read_text() == "the user's notes"


def test_ctrl_c_while_stylising_a_folder_keeps_whole_results_and_prints_no_traceback(tiny_models, style_file,
                                                                                    tmp_path, photo_loader):
    folder = tmp_path / "many"
    for i in range(60):
        save_image(photo_loader("astronaut", (96, 128))[0], folder / f"p{i:02d}.png")
    code, err = interrupted(("stylize", "--device", "cpu", "--vae", tiny_models["vae_ldm"], "--style", style_file,
                             "--input", folder, "--output", tmp_path / "out"), rb"\| *[1-9]\d*/60")
    assert code == 130 and "Traceback" not in err, err[-2000:]
    assert "stylemamba: cancelled (Ctrl-C)" in err
    written = sorted((tmp_path / "out").iterdir())
    assert 1 <= len(written) < 60 and all(p.name.endswith("_styled.png") for p in written)  # no half-written file
    assert all(load_image(p).shape == (1, 3, 96, 128) for p in written)


def test_running_out_of_cpu_memory_gives_the_advice_not_a_traceback(tiny_models, style_file, tmp_path):
    big = tmp_path / "big.png"
    save_image(torch.full((3, 4000, 4000), 0.5), big)
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))"  # a 6 GB machine
    proc = run(*stylize_args(tiny_models, style_file, "--input", big, "--output", tmp_path / "out.png",
                             "--tile-size", "4096"), python_prelude=limit)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # one image: a lower --batch-size would change nothing, so it is not suggested
    assert "error: out of memory while stylising 1 image(s) of 4000x4000. Lower --tile-size (now 4096" in proc.stderr
    assert "close other programs" in proc.stderr and "GPU" not in proc.stderr
    assert not (tmp_path / "out.png").exists()


def test_a_style_name_with_a_dot_keeps_all_of_it_and_a_folder_is_refused(tmp_path):
    from stylemamba.style_file import style_path

    assert style_path(tmp_path / "monet_v1.5") == tmp_path / "monet_v1.5.safetensors"  # before: monet_v1.safetensors
    assert style_path(tmp_path / "van.gogh") == tmp_path / "van.gogh.safetensors"
    assert style_path(tmp_path / "mine.SafeTensors") == tmp_path / "mine.SafeTensors"
    assert style_path(tmp_path / "y.pt") == tmp_path / "y.safetensors"  # before: y.pt.safetensors
    assert style_path(tmp_path / "old.CKPT") == tmp_path / "old.safetensors"
    with pytest.raises(ValueError, match="is a folder: give the style a file name in it, e.g. .*mystyle.safetensors"):
        style_path(tmp_path)


def test_a_file_as_the_checkpoint_dir_is_named_before_the_models_load(tmp_path):
    """Before: named only once the VAE and the text model had loaded (a missing VAE here would fail first)."""
    (tmp_path / "ck").write_text("notes")
    proc = run("train-universal", "--device", "cpu", "--vae", tmp_path / "no-vae", "--images", tmp_path,
               "--out", tmp_path / "u.safetensors", "--checkpoint-dir", tmp_path / "ck")
    one_line_error(proc, f"--checkpoint-dir {tmp_path / 'ck'} is a file, not a folder")
    assert (tmp_path / "ck").read_text() == "notes"



def test_a_file_the_machine_refuses_is_one_line_with_its_fix(tmp_path):
    """An OSError from the machine (here a name over the file system's 255 bytes; a full disk, a read-only mount
    alike) was a traceback: it is the user's to fix, so it is one line naming what to do."""
    proc = run("tiny-models", tmp_path / ("x" * 300))
    one_line_error(proc, "File name too long", "shorten the file or folder name")


def test_the_console_script_names_itself_in_its_usage():
    """`stylemamba --help` said 'usage: python -m stylemamba', a command the user did not type."""
    import shutil

    script = shutil.which("stylemamba", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the stylemamba console script is not installed beside this Python")
    usage = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120).stdout
    assert usage.startswith("usage: stylemamba "), usage[:200]
    assert subprocess.run([sys.executable, "-m", "stylemamba", "--help"], capture_output=True, text=True,
                          timeout=120).stdout.startswith("usage: python -m stylemamba ")


@pytest.mark.parametrize("signum, said, code", [("SIGINT", "cancelled (Ctrl-C)", 130),
                                                 ("SIGTERM", "stopped (SIGTERM)", 143)])
def test_ctrl_c_while_a_command_trains_without_should_stop_is_a_ctrl_c_not_a_traceback(tmp_path, monkeypatch,
                                                                                       capsys, signum, said, code):
    """demo, check, eval and bench call train_style without should_stop: since train_style takes the first Ctrl-C
    itself, it raised TrainingCancelled, which the CLI printed as a traceback (exit 1) instead of 'cancelled'. A
    `kill` (SIGTERM) there was reported as a Ctrl-C (exit 130)."""
    import signal

    from stylemamba import cli, train

    step = train.StyleTrainer.step_within_memory
    calls = []

    def ctrl_c_in_the_first_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(getattr(signal, signum))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(train.StyleTrainer, "step_within_memory", ctrl_c_in_the_first_step)
    assert cli.main(["demo", "--out", str(tmp_path), "--epochs", "3", "--resolution", "64"]) == code
    err = capsys.readouterr().err
    assert f"stylemamba: {said}" in err
    # the line printed on the Ctrl-C said "keeping the style of the finished steps", which demo drops
    assert (f"{signum}: stopping after this step and keeping the results written so far, not the style in "
            "training") in err
    assert "keeping the style" not in err
    assert len(calls) == 1 and not (tmp_path / "demo-style.safetensors").exists()


def test_tiny_models_run_again_into_their_own_folder_as_in_0_1_0(tmp_path):
    """--overwrite was asked for the folder of an earlier `tiny-models` run too (0.1.0 rebuilt it): tiny models
    replaced by tiny models lose nothing; a user's own models are still refused (the test above)."""
    assert run("tiny-models", tmp_path / "tiny").returncode == 0
    proc = run("tiny-models", tmp_path / "tiny", "--seed", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "tiny" / "manifest.json").read_text())["seed"] == 1


def test_a_blank_prompt_is_named_before_the_models_load(photos, tmp_path):
    """--prompt "  " was found only once the VAE and the text model had loaded (here: a VAE that does not exist was
    named instead of the prompt)."""
    _, (photo, _) = photos
    proc = run("train", "--device", "cpu", "--vae", tmp_path / "no-vae", "--text-model", tmp_path / "no-siglip",
               "--prompt", " \n ", "--content", photo, "--out", tmp_path / "s")
    one_line_error(proc, "empty style prompt")
    assert not (tmp_path / "s.safetensors").exists()


def test_a_stopped_skip_existing_run_counts_the_images_left_and_the_earlier_ones(tmp_path):
    """After --skip-existing, the line said '2 of the 4 images were written' for a folder of 10 whose 6 earlier
    results it had left alone: the count was of this run's images only, and did not say so."""
    from stylemamba.cli import stopped_images_kept

    targets = [tmp_path / f"p{i}_styled.png" for i in range(6, 10)]
    line = stopped_images_kept([str(t) for t in targets[:2]], targets, skipped=6)
    assert line == (f"2 of the 4 images left were written to {tmp_path} and are kept (as are the 6 an earlier run "
                    "wrote); run the same command with --skip-existing to stylise the rest"), line
    none = stopped_images_kept([], targets, skipped=6)
    assert none.startswith("none of the 4 images left was written") and "(as are the 6 an earlier run wrote)" in none


@pytest.mark.parametrize("flag", ["--skip-existing", "--overwrite"])
def test_a_folder_where_a_result_goes_is_refused_before_any_model_loads(tmp_path, flag):
    """A folder named like a result (out/b_styled.png/) counted as b's result under --skip-existing (b was left
    unstylised and the run said nothing), and --overwrite failed on it only when saving, after the work."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (32, 32), (10, 20, 30)).save(photos / f"{name}.png")
    (tmp_path / "out" / "b_styled.png").mkdir(parents=True)
    style = tmp_path / "s.safetensors"
    style.write_bytes(b"never read: refused before")
    proc = run("stylize", "--vae", tmp_path / "no-vae", "--style", style, "--input", photos, "--output",
               tmp_path / "out", flag)
    one_line_error(proc, f"{tmp_path / 'out' / 'b_styled.png'} is a folder, where the result of b.png goes: rename "
                         "or move that folder, or choose another --output")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b_styled.png"]


def test_a_folder_where_a_videos_result_goes_is_not_taken_for_its_result(tmp_path):
    from stylemamba.cli import plan_video_output

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not read")
    (tmp_path / "out" / "clip_styled.mp4").mkdir(parents=True)
    for skip in (True, False):
        with pytest.raises(ValueError, match="clip_styled.mp4 is a folder, where the result of clip.mp4 goes"):
            plan_video_output(clip, tmp_path / "out", overwrite=not skip, skip_existing=skip)


def test_a_picture_too_big_for_its_output_format_is_refused_before_the_work(tmp_path):
    """A 65,536 px panorama to .jpg: Pillow's 'broken data stream' came as a traceback (exit 1), after the work."""
    from PIL import Image

    from stylemamba.image_io import save_image

    pano = tmp_path / "pano.png"
    Image.new("RGB", (65536, 8), (120, 60, 30)).save(pano)
    style = tmp_path / "s.safetensors"
    style.write_bytes(b"never read: refused before")
    for out, limit in (("pano_s.jpg", 65500), ("pano_s.webp", 16383)):
        proc = run("stylize", "--vae", tmp_path / "no-vae", "--style", style, "--input", pano, "--output",
                   tmp_path / out)
        one_line_error(proc, f"{out}: .{out.split('.')[1]} stores at most {limit} pixels on a side, this picture is "
                             "65536x8; write it as .png or .tif")
    with pytest.raises(ValueError, match="stores at most 16383 pixels on a side"):
        save_image(torch.rand(3, 8, 16384), tmp_path / "wide.webp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pano.png", "s.safetensors"]
