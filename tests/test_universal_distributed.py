"""Universal training as real processes: DDP (gloo, 2 CPU processes under torchrun) takes the same steps as one
process with the same global batch; a run killed with SIGKILL resumes to the same result; Ctrl-C on a torchrun job
stops every rank after the same step with a checkpoint, which resumes on ONE process to the same result (within the
DDP tolerance below).

Tolerances (the tiny models of this suite, 4 steps of 4 pairs, Adam at UniversalConfig's lr): the per-step losses
agree to 1e-5 relative (measured 3e-7); every parameter with a real gradient agrees to 1e-4 absolute (measured 9e-7 at
lr 2e-3; 9e-6 in an earlier run at lr 5e-4: the order of the float32 sums in the all-reduce); the stylised pixels agree to 1e-4
(measured 5e-6). Parameters whose gradient is numerically zero (the key bias of the VAE decoder's attention, to which
softmax is invariant: 1e-9 of noise that Adam scales up to +-lr per step) may differ by a few lr and change no output;
they are excluded by their Adam second moment (sqrt(v) < 1e-4). A SIGKILLed single-process run resumed in one
process is bit-identical (0 difference).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import load_photo
from safetensors.torch import load_file

from stylemamba.checkpoint import latest_checkpoint, list_checkpoints
from stylemamba.encoders import load_text_image_encoder
from stylemamba.image_io import save_image
from stylemamba.prompt_bank import load_prompt_bank
from stylemamba.universal import UniversalConfig, UniversalTrainer, train_universal
from stylemamba.vae import load_vae

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RECIPE = {"epochs": 2, "steps_per_epoch": 2, "batch_size": 4, "resolution": 64, "lr_decay_epoch": 1, "log_every": 1,
          "checkpoint_every": 1, "loss": {"n_crops": 2, "crop_fraction": 0.5, "so_interval": 1, "so_theta": 2.0},
          "fusion": {"width": 16, "depth": 1, "d_state": 4}}


@pytest.fixture(scope="module")
def job(tiny_models, tmp_path_factory):
    """Files as a user has them (bank, image folder, recipe) and the reference: one in-process run of 4 steps."""
    root = tmp_path_factory.mktemp("universal_job")
    (root / "images").mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        save_image(load_photo(name, 64)[0], root / "images" / f"{name}.png")
    (root / "bank.txt").write_text("[test]\noil painting\nwatercolor | weight=2\npencil sketch\n")
    (root / "recipe.json").write_text(json.dumps(RECIPE))
    vae, text = load_vae(tiny_models["vae"]), load_text_image_encoder(tiny_models["siglip"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses run (OMP_NUM_THREADS=1): the same kernels, the same sums
    try:
        reference = train_universal(vae, text, sorted((root / "images").iterdir()), load_prompt_bank(root / "bank.txt"),
                                    UniversalConfig.from_dict(RECIPE), checkpoint_dir=root / "reference")
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "vae": vae, "text": text, "reference": reference, "models": tiny_models}


def _command(job, name: str, processes: int = 1, epochs: int | None = None) -> list[str]:
    root, models = job["root"], job["models"]
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
                     str(_free_port()), "-m"]
    else:
        launcher += ["-m"]
    args = ["stylemamba", "train-universal", "--device", "cpu", "--vae", str(models["vae"]), "--text-model",
            str(models["siglip"]), "--bank", str(root / "bank.txt"), "--images", str(root / "images"), "--config",
            str(root / "recipe.json"), "--out", str(root / f"{name}.safetensors"), "--checkpoint-dir", str(root / name)]
    return launcher + args + (["--epochs", str(epochs)] if epochs else [])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def _start(cmd) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(folder: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not list_checkpoints(folder):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before its first checkpoint:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("no checkpoint within the timeout")
        time.sleep(0.05)


def _compare(job, checkpoint: Path) -> dict:
    """Largest differences to the reference run: parameters (with a real gradient), losses, stylised pixels."""
    ref_dir = latest_checkpoint(job["root"] / "reference")
    ref, other = load_file(str(ref_dir / "model.safetensors")), load_file(str(checkpoint / "model.safetensors"))
    moments = load_file(str(ref_dir / "optimizer.safetensors"))
    live = {k for k in ref if f"{k}/exp_avg_sq" in moments and float(moments[f"{k}/exp_avg_sq"].sqrt().max()) > 1e-4}
    assert len(live) > 0.8 * len([k for k in ref if f"{k}/exp_avg_sq" in moments])
    params = max(float((ref[k] - other[k]).abs().max()) for k in live)
    ref_log = json.loads((ref_dir / "trainer.json").read_text())["history"]
    log = json.loads((checkpoint / "trainer.json").read_text())["history"]
    assert [h["step"] for h in log] == [h["step"] for h in ref_log]
    losses = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for a, b in zip(ref_log, log) for k in a if k != "step")
    trainer = UniversalTrainer(job["vae"], job["text"], sorted((job["root"] / "images").iterdir()),
                               load_prompt_bank(job["root"] / "bank.txt"), UniversalConfig.from_dict(RECIPE))
    photo = load_photo("chelsea", 64)
    cond = job["text"].encode_text(["watercolor"])
    outs = []
    for state in (ref, other):
        trainer.net.load_state_dict({k: v for k, v in state.items() if not k.startswith("so_")})
        with torch.no_grad():
            outs.append(trainer.net(job["vae"].encode(photo), cond).clamp(0, 1))
    return {"params": params, "losses": losses, "pixels": float((outs[0] - outs[1]).abs().max())}


def test_two_ddp_processes_take_the_same_steps_as_one(job):
    proc = _start(_command(job, "ddp", processes=2))
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert "rank 1/2" in err and json.loads(out)["processes"] == 2
    assert err.count("step 4/4") == 1  # only rank 0 logs
    diff = _compare(job, latest_checkpoint(job["root"] / "ddp"))
    print("DDP 2 processes vs 1:", diff)
    assert diff["losses"] < 1e-5 and diff["params"] < 1e-4 and diff["pixels"] < 1e-4, diff


def test_a_killed_run_resumes_to_the_same_result(job):
    proc = _start(_command(job, "killed", epochs=50))  # far more steps than the kill leaves it
    _wait_for_checkpoint(job["root"] / "killed", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    resumed_from = int(json.loads((latest_checkpoint(job["root"] / "killed") / "trainer.json").read_text())["step"])
    assert 1 <= resumed_from < 4
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train_universal(job["vae"], job["text"], sorted((job["root"] / "images").iterdir()),
                                 load_prompt_bank(job["root"] / "bank.txt"), UniversalConfig.from_dict(RECIPE),
                                 checkpoint_dir=job["root"] / "killed", resume=True)
    finally:
        torch.set_num_threads(threads)
    assert result.steps == 4 and not result.cancelled
    diff = _compare(job, result.checkpoint)
    print(f"killed at step {resumed_from}, resumed:", diff)
    assert diff["params"] == 0.0 and diff["losses"] == 0.0 and diff["pixels"] == 0.0, diff


def test_ctrl_c_stops_every_rank_with_a_checkpoint_that_resumes_on_one_process(job):
    proc = _start(_command(job, "interrupted", processes=2, epochs=50))
    _wait_for_checkpoint(job["root"] / "interrupted", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "stopping after this step" in err and "continue with the same command and --resume" in err, err[-3000:]
    stopped = latest_checkpoint(job["root"] / "interrupted")
    step = int(json.loads((stopped / "trainer.json").read_text())["step"])
    assert 1 <= step < 100 and not list((job["root"] / "interrupted").glob("*.partial"))
    assert (job["root"] / "interrupted-partial.safetensors").is_file()
    if step >= 4:
        pytest.skip(f"the job ran to step {step} before the signal arrived; nothing left to resume to step 4")
    result = train_universal(job["vae"], job["text"], sorted((job["root"] / "images").iterdir()),
                             load_prompt_bank(job["root"] / "bank.txt"), UniversalConfig.from_dict(RECIPE),
                             checkpoint_dir=job["root"] / "interrupted", resume=True)
    diff = _compare(job, result.checkpoint)
    print(f"2 processes stopped at step {step}, resumed on 1:", diff)
    assert diff["losses"] < 1e-5 and diff["params"] < 1e-4 and diff["pixels"] < 1e-4, diff


SPLIT_STORAGE = """
import json, sys
from pathlib import Path
from stylemamba import distributed
from stylemamba.encoders import load_text_image_encoder
from stylemamba.prompt_bank import load_prompt_bank
from stylemamba.universal import UniversalConfig, train_universal
from stylemamba.vae import load_vae

root, vae, siglip = map(Path, sys.argv[1:4])
dist = distributed.setup("cpu", timeout_s=60)
try:
    cfg = UniversalConfig.from_dict({**json.loads((root / "recipe.json").read_text()), "epochs": 4})
    result = train_universal(load_vae(vae), load_text_image_encoder(siglip), sorted((root / "images").iterdir()),
                             load_prompt_bank(root / "bank.txt"), cfg, dist=dist, resume=True,
                             checkpoint_dir=root / ("shared" if dist.rank == 0 else "this-node-only"))
    print(f"rank {dist.rank} trained to step {result.steps}")
finally:
    distributed.shutdown(dist)
"""


def test_processes_that_see_other_checkpoints_are_stopped_before_a_step(job, tmp_path):
    """Two nodes without shared storage: rank 0 resumed from step 4 and rank 1 started from step 0 with its own initial
    weights; DDP averaged the gradients of different steps into both until rank 1 hung in the all-reduce rank 0 had
    left. Now every rank stops at once, naming what each saw."""
    import shutil

    shutil.copytree(job["root"] / "reference", job["root"] / "shared", dirs_exist_ok=True)
    (tmp_path / "split.py").write_text(SPLIT_STORAGE)
    models = job["models"]
    proc = _start([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                   str(_free_port()), str(tmp_path / "split.py"), str(job["root"]), str(models["vae"]),
                   str(models["siglip"])])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "trained to step" not in out, out + err[-3000:]
    assert err.count("do not see the same checkpoints") >= 2, err[-3000:]
    assert "rank 0: step-00000004, rank 1: none" in err and "storage they share" in err, err[-3000:]
    assert not (job["root"] / "this-node-only").exists()


def test_a_batch_that_does_not_split_over_the_processes_is_refused_before_the_models_load(tmp_path):
    """3 processes for a batch of 4 were refused only after every process had loaded the VAE and the text model
    (minutes with real models on 8 GPUs)."""
    (tmp_path / "images").mkdir()
    save_image(load_photo("chelsea", 64)[0], tmp_path / "images" / "chelsea.png")
    proc = _start([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "3", "--master_port",
                   str(_free_port()), "-m", "stylemamba", "train-universal", "--device", "cpu", "--vae",
                   str(tmp_path / "no-vae"), "--text-model", str(tmp_path / "no-model"), "--images",
                   str(tmp_path / "images"), "--batch-size", "4", "--out", str(tmp_path / "u.safetensors"),
                   "--checkpoint-dir", str(tmp_path / "ck")])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and err.count("batch size 4 does not split evenly over 3 processes") == 3, err[-3000:]
    assert "no-vae" not in err, err[-3000:]


def test_a_stop_request_inside_another_tells_the_outer_one_too():
    """train_universal's own StopRequest inside a caller's (a loop over runs): the one Ctrl-C stopped the inner run
    only, and the caller, not told, went on to its next run."""
    import signal

    from stylemamba.distributed import StopRequest

    with StopRequest(announce=False) as outer:
        with StopRequest(announce=False) as inner:
            signal.raise_signal(signal.SIGINT)
        assert inner.asked and outer.asked
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C aborts, as it would have in the inner one
            signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("gone", [1, 0])
def test_a_process_started_by_hand_that_stops_is_named_within_the_stated_wait(tmp_path, gone):
    """RANK / WORLD_SIZE / MASTER_ADDR set by hand (no torchrun to stop the job): one process stopped early (here a
    mistyped flag) and the other waited torch's 30 minutes, then failed with a store or socket error. It now waits
    STYLEMAMBA_DIST_TIMEOUT seconds and says that a process did not join and what to do."""
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        flags = ["--no-such-flag"] if rank == gone else []
        env = {**_env(), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, "STYLEMAMBA_DIST_TIMEOUT": "4"}
        procs.append(subprocess.Popen([sys.executable, "-m", "stylemamba", "train-universal", "--device", "cpu",
                                       "--images", str(tmp_path), "--out", str(tmp_path / "u.safetensors"),
                                       "--checkpoint-dir", str(tmp_path / "ck"), *flags],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    t0 = time.monotonic()
    try:
        _, err = procs[1 - gone].communicate(timeout=60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    waited = time.monotonic() - t0
    assert procs[gone].returncode == 2
    assert procs[1 - gone].returncode == 1 and "Traceback" not in err, err[-3000:]
    assert f"rank {1 - gone} of 2: not all 2 processes joined within 4 s" in err, err[-3000:]
    assert "STYLEMAMBA_DIST_TIMEOUT" in err and "start all of them again" in err, err[-3000:]
    assert waited < 40, f"it waited {waited:.0f} s"


ONE_RANK_DRAWS_A_BAD_PHOTO = """
import json, sys
from pathlib import Path
from stylemamba import distributed, universal
from stylemamba.encoders import load_text_image_encoder
from stylemamba.image_io import load_image
from stylemamba.prompt_bank import load_prompt_bank
from stylemamba.universal import PhotoUnreadable, UniversalConfig, train_universal
from stylemamba.vae import load_vae

root, vae, siglip, out = map(Path, sys.argv[1:5])
dist = distributed.setup("cpu", timeout_s=60)
try:
    photos = [load_image(p) for p in sorted((root / "images").iterdir())] * 2
    photos[4] = photos[4].clone()
    photos[4][0, 0, 0, 0] = float("nan")
    universal.SOURCE_PHOTOS = 1  # read before training: photo 0 only (256 in real runs)
    cfg = UniversalConfig.from_dict({**json.loads((root / "recipe.json").read_text()), "epochs": 4})
    try:
        train_universal(load_vae(vae), load_text_image_encoder(siglip), photos, load_prompt_bank(root / "bank.txt"),
                        cfg, dist=dist, checkpoint_dir=out)
    except PhotoUnreadable as exc:
        print(f"rank {dist.rank} stopped after step {exc.partial.steps}: {exc}")
finally:
    distributed.shutdown(dist)
"""


def test_a_bad_photo_that_one_rank_draws_stops_every_rank_at_the_same_step_and_rank_0_names_it(job, tmp_path):
    """The seed's step 1 draws photo 4 into rows 2-3 of its batch of 4: rank 1's alone. Rank 1 alone raising would
    leave rank 0 waiting in DDP's all-reduce; every rank stops before that step, the checkpoint of step 1 is
    written and rank 0, which never read the photo, names it."""
    (tmp_path / "one_rank.py").write_text(ONE_RANK_DRAWS_A_BAD_PHOTO)
    models = job["models"]
    proc = _start([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                   str(_free_port()), str(tmp_path / "one_rank.py"), str(job["root"]), str(models["vae"]),
                   str(models["siglip"]), str(tmp_path / "ck")])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} stopped after step 1: content image 4 has 1 NaN" in out, out + err[-3000:]
    assert "Training stopped before step 2 of 8: checkpoint" in out, out
    assert [p.name for p in list_checkpoints(tmp_path / "ck")] == ["step-00000001"]
