"""`python -m stylemamba train` then `stylize` then `info`, end to end on the tiny models, as a user runs them."""
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from small import small_config
from stylemamba.image_io import load_image, save_image

ROOT = Path(__file__).resolve().parents[1]


def run(*args, ok=True):
    proc = subprocess.run([sys.executable, "-m", "stylemamba", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_train_stylize_info(tmp_path, tiny_models, photo):
    content = save_image(photo[0], tmp_path / "content.png")
    cfg = tmp_path / "recipe.json"
    cfg.write_text(json.dumps(small_config(epochs=2).to_dict()))
    style = tmp_path / "styles" / "starry.safetensors"
    out = run("train", "--device", "cpu", "--vae", tiny_models["vae_ldm"], "--text-model", tiny_models["siglip"],
              "--vgg", tiny_models["vgg19"], "--prompt", "Van Gogh's starry night", "--content", content,
              "--config", cfg, "--out", style, "--quiet")
    report = json.loads(out.stdout)
    assert Path(report["style"]) == style and style.stat().st_size == report["bytes"]
    assert report["steps"] == 2 and "total" in report["final_losses"]

    big = tmp_path / "odd.png"
    save_image(load_image(content)[0][:, :40, :56], big)
    run("stylize", "--device", "cpu", "--vae", tiny_models["vae_ldm"], "--style", style, "--input", big,
        "--output", tmp_path / "out.png", "--strength", "0.8", "--quiet")
    assert load_image(tmp_path / "out.png").shape == (1, 3, 40, 56)

    info = json.loads(run("info", style).stdout)
    assert info["prompts"] == ["Van Gogh's starry night"] and info["bytes"] == style.stat().st_size


def test_clear_errors_for_missing_files(tmp_path, tiny_models, photo):
    save_image(photo[0], tmp_path / "in" / "photo.png")
    proc = run("stylize", "--device", "cpu", "--vae", tiny_models["vae_ldm"], "--style", tmp_path / "none.safetensors",
               "--input", tmp_path / "in", "--output", tmp_path / "o", ok=False)
    assert proc.returncode == 2 and "none.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("info", tiny_models["vae_ldm"], ok=False)
    assert proc.returncode == 2 and "not a StyleMamba style file" in proc.stderr


@pytest.mark.slow
def test_demo_runs_offline(tmp_path):
    out = run("demo", "--out", tmp_path / "demo", "--device", "cpu", "--epochs", "2")
    report = json.loads(out.stdout[out.stdout.index("{"):])
    assert report["steps"] == 2 and len(report["stylized"]) == 3
    assert load_image(report["stylized"][0]).shape == (1, 3, 226, 300)  # held-out chelsea: any size, kept
    # it says which models it used and how to switch to real ones
    assert "small VAE" in out.stdout and "known-combined" in out.stdout and "--text-model google/siglip" in out.stdout
    assert set(report["held_out"]) == {"chelsea", "rocket", "camera"}


def test_out_of_memory_advice_names_the_cli_flags(monkeypatch, capsys):
    from stylemamba import cli
    from stylemamba.errors import training_out_of_memory

    def oom(args):
        raise training_out_of_memory(512, 64, 2)

    monkeypatch.setattr(cli, "cmd_info", oom)
    assert cli.main(["info", "x.safetensors"]) == 3
    err = capsys.readouterr().err
    assert "Lower --resolution (e.g. 384 or 256), loss.n_crops in the --config recipe" in err
    assert "--gradient-checkpointing" in err and "TrainConfig" not in err


@pytest.mark.parametrize("batch, tile, advice", [
    (4, 1024, "Lower --batch-size (now 4) or --tile-size (now 1024, e.g. 512)"),
    (1, 512, "Lower --tile-size (now 512, e.g. 256)"),
    (1, 256, "while stylising 1 image(s) of 4096x4096. Use --device cpu"),  # nothing left to lower
])
def test_stylising_out_of_memory_suggests_only_what_can_go_lower(batch, tile, advice):
    from stylemamba.cli import OOM_NAMES
    from stylemamba.errors import stylizing_out_of_memory

    message = str(stylizing_out_of_memory("1 image(s) of 4096x4096", batch, tile, OOM_NAMES))
    assert advice in message and (". Lower" in message) == (batch > 1 or tile > 256), message


@pytest.mark.parametrize("side, advice", [
    (64, "while stylising 1 image(s) of 64x64. Use --device cpu"),  # one tile whatever --tile-size says
    (300, "Lower --tile-size (now 1024, e.g. 256)"),
    (800, "Lower --tile-size (now 1024, e.g. 400)"),
])
def test_smaller_tiles_are_suggested_only_for_pictures_they_would_cut(side, advice):
    from stylemamba.cli import OOM_NAMES
    from stylemamba.errors import stylizing_out_of_memory

    message = str(stylizing_out_of_memory(f"1 image(s) of {side}x{side}", 1, 1024, OOM_NAMES, largest_side=side))
    assert advice in message, message


def test_stylize_mixes_by_pictures_unless_told_otherwise():
    from stylemamba.cli import build_parser

    base = ["stylize", "--vae", "v", "--style", "a", "--style", "b", "--input", "i", "--output", "o"]
    assert build_parser().parse_args(base).blend == "outputs"
    assert build_parser().parse_args(base + ["--blend", "weights"]).blend == "weights"
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + ["--blend", "both"])


@pytest.mark.parametrize("command", ["check", "bench", "eval", "demo", "bench-universal", "train-universal"])
def test_out_of_memory_advice_names_only_the_commands_own_flags(command):
    """check, bench, eval... ran out of memory with train's advice: '--content images', '--tile-size', flags those
    commands do not have. Each names its own knobs (or none)."""
    from stylemamba.cli import OOM_NAMES_BY_COMMAND, build_parser
    from stylemamba.errors import training_out_of_memory

    names = OOM_NAMES_BY_COMMAND[command]
    advice = training_out_of_memory(512, 8, 2).advice(names)
    flags = {a for sub in build_parser()._subparsers._group_actions[0].choices[command]._actions
             for a in sub.option_strings if a.startswith("--")}
    named = {w.rstrip(",.;)") for w in advice.split() if w.startswith("--")}
    assert named <= flags, (command, named - flags, advice)
    assert "None" not in advice and "memory while training at 512x512" in advice, advice


@pytest.mark.parametrize("command", ["stylize", "check", "bench", "eval", "demo", "bench-universal"])
def test_out_of_memory_advice_reads_as_a_sentence_when_nothing_can_be_lowered(command):
    """With nothing to lower (a batch of 1, the smallest tile, or a command without those flags) the advice said
    "while stylising 1 image, or use --device cpu", "(CUDA out of memory), or use ...": an 'or' after nothing."""
    from stylemamba.cli import OOM_NAMES, OOM_NAMES_BY_COMMAND
    from stylemamba.errors import out_of_memory, stylizing_out_of_memory

    names = OOM_NAMES_BY_COMMAND.get(command, OOM_NAMES)
    for oom in (stylizing_out_of_memory("1 image", 1, 256), out_of_memory("CUDA out of memory")):
        advice = oom.advice(names)
        assert ", or" not in advice.split(". Lower")[0], advice
        if names["device"]:
            assert "se --device cpu" in advice, advice


@pytest.mark.parametrize("command", ["train", "train-universal", "stylize", "demo", "check", "eval", "bench",
                                     "bench-universal", "tiny-models", "info"])
def test_a_full_disk_is_told_to_write_elsewhere_through_the_commands_own_flag(command):
    """The fix for a full disk, a used-up quota or a read-only mount said 'write elsewhere (--out)' for every
    command: stylize's flag is --output, check's and bench's --json, and tiny-models takes a folder, no --out."""
    import errno

    from stylemamba.cli import build_parser, disk_fix

    parser = build_parser()._subparsers._group_actions[0].choices[command]
    flags = {a for sub in parser._actions for a in sub.option_strings if a.startswith("--")}
    for code in (errno.ENOSPC, errno.EROFS, errno.EFBIG):
        fix = disk_fix(code, command)
        named = {w.strip(",.;()") for w in fix.split() if w.startswith(("--", "(--"))}
        assert named <= flags, (command, named - flags, fix)
        if command in ("stylize", "check", "bench"):
            assert named, fix  # the flag that moves the output is named
    assert disk_fix(errno.ENOENT, command) is None  # not the machine's refusal: a traceback, as before


@pytest.mark.parametrize("command", ["tiny-models", "train"])
def test_a_file_too_large_for_the_disk_is_one_line_naming_where_to_write(command, tmp_path, tiny_models, photo):
    """A full disk (here the file-size limit: EFBIG, as a FAT32 disk's 4 GB) while writing a .safetensors file (the
    trained style, the tiny models) was a SafetensorError traceback: safetensors raises no OSError. It is one line
    with what to do, in the command's own words (tiny-models takes a folder, not --out)."""
    pytest.importorskip("resource")
    prelude = ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
               "import sys\nfrom stylemamba.cli import main\nsys.exit(main(sys.argv[1:]))")
    if command == "train":
        content = save_image(photo[0], tmp_path / "content.png")  # before the limit: the child only writes the style
        args = ["train", "--device", "cpu", "--vae", tiny_models["vae_ldm"], "--text-model", tiny_models["siglip"],
                "--prompt", "pop art", "--content", content, "--epochs", "1", "--resolution", "64", "--quiet",
                "--out", tmp_path / "pop.safetensors"]
        fix = "write elsewhere (--out)"
    else:
        args, fix = ["tiny-models", tmp_path / "tiny"], "write elsewhere (another OUT folder)"
    proc = subprocess.run([sys.executable, "-c", prelude, *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "File too large" in error[0] and fix in error[0], proc.stderr


def _hangup_not_ignored():
    """The command starts as from a terminal, with SIGHUP not ignored, even when the tests run under nohup (an
    ignored SIGHUP is inherited, and a command started that way rightly goes on when the terminal closes)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP") or not hasattr(os, "openpty"), reason="no SIGHUP on Windows")
def test_a_closed_terminal_stops_train_after_its_step_and_keeps_the_style(tmp_path, tiny_models, photo):
    """Closing the terminal (or an SSH drop) sends SIGHUP, which killed the run and lost its steps; and after it
    the terminal is gone, so a message written to it fails (EIO) and must not stop the save either."""
    import fcntl
    import struct
    import termios

    from stylemamba.style_file import load_style

    content = save_image(photo[0], tmp_path / "content.png")
    cfg = tmp_path / "recipe.json"
    cfg.write_text(json.dumps(small_config(epochs=1000, loss={"n_crops": 2}, fusion={"depth": 1}).to_dict()))
    master, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size: a bar shows
    proc = subprocess.Popen([sys.executable, "-m", "stylemamba", "train", "--device", "cpu", "--vae",
                             tiny_models["vae_ldm"], "--text-model", tiny_models["siglip"], "--prompt", "starry night",
                             "--content", content, "--config", cfg, "--out", tmp_path / "starry.safetensors"],
                            cwd=ROOT, stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True,
                            preexec_fn=_hangup_not_ignored)
    os.close(terminal)
    shown, deadline = b"", time.monotonic() + 180
    try:
        while not re.search(rb"\| *[1-9][0-9]*/1000 \[", shown):  # the progress bar: a step is done
            assert proc.poll() is None and time.monotonic() < deadline, shown.decode(errors="replace")[-2000:]
            if select.select([master], [], [], 0.2)[0]:
                shown += os.read(master, 65536)
        proc.send_signal(signal.SIGHUP)
        os.close(master)  # the terminal is gone: every later write of the run fails
        master = None
        assert proc.wait(timeout=120) == 129  # 128 + SIGHUP, as a shell reports it (it said 130, Ctrl-C's)
    finally:
        if master is not None:
            os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    style = load_style(tmp_path / "starry-partial.safetensors")
    assert style.metadata["cancelled"] and 1 <= style.metadata["steps"] < 1000


def test_a_broken_vae_file_is_not_said_to_be_another_vae_than_the_styles(tmp_path):
    """--vae models/vae.safetensors, truncated, for a style trained on that file: its error said the style 'was
    trained on the VAE 'vae.safetensors', not on --vae models/vae.safetensors: give that VAE with --vae' (the one
    given), as the style notes a VAE file by its name alone."""
    from types import SimpleNamespace

    from stylemamba.cli import load_vae_for
    from stylemamba.vae import ModelFileError

    (tmp_path / "models").mkdir()
    broken = tmp_path / "models" / "vae.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    style = SimpleNamespace(name="pop", metadata={"base_vae_name": "vae.safetensors", "base_vae": {}})
    with pytest.raises(ModelFileError) as e:
        load_vae_for([style], str(broken), "cpu")
    assert "trained on" not in str(e.value), str(e.value)
    other = SimpleNamespace(name="pop", metadata={"base_vae_name": "other.safetensors", "base_vae": {}})
    with pytest.raises(ModelFileError, match="style 'pop' was trained on the VAE 'other.safetensors'"):
        load_vae_for([other], str(broken), "cpu")
