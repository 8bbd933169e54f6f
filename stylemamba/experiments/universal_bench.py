"""``python -m stylemamba bench-universal``: how fast the universal model trains, and how it should scale.

Full-size architectures with RANDOM weights, built as ``bench`` builds them (SD VAE, SigLIP base-patch16-224,
VGG19, LPIPS-VGG: time and memory do not depend on the weights' values), the shipped prompt bank, smooth random
content images at 512 px, the per-style loss suite. ``--tiny`` runs the same code on the tiny models (the CPU
test of this module). For each batch size (GLOBAL pairs per step, one process here):

* ``pairs_per_s``: (image, prompt) pairs per second over timed steps (device-synchronised wall clock);
* ``step_ms`` and its breakdown: device time of each phase of a step (inputs, forward, views+tower, losses,
  backward, optimizer), CUDA events at the phase boundaries of the same steps (one stream: they add up);
* ``peak_gb``: peak allocated device memory of the training steps;
* ``allreduce``: the gradient size and the time of one all-reduce of it in a process group of ONE (NCCL on
  CUDA, gloo on the CPU): a floor (a copy, no network); the expected scaling to N GPUs is then estimated with
  ring all-reduce, ``t(N) = 2 (N-1)/N x bytes / bus bandwidth`` (``--bus-gbps``, an assumption printed with
  the figures), fully exposed (DDP overlaps it with the backward pass, so this is a lower bound on efficiency):
  per process at a fixed per-process batch (``scaling_estimate``), and for the same GLOBAL batch split over N
  processes from the measured step times at B and B/N (``strong_scaling``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .bench import build_full_models, build_tiny_bench_models, content_images, environment, sync


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def allreduce_alone(numel: int, device: torch.device, repeat: int = 20) -> dict[str, Any]:
    """Milliseconds of one all-reduce of ``numel`` fp32 values in a process group of one (opened and closed here)."""
    import torch.distributed as tdist

    opened = False
    if not tdist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(_free_port())
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
        opened = True
    try:
        buf = torch.ones(numel, device=device)
        for _ in range(3):
            tdist.all_reduce(buf)
        sync(device)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            tdist.all_reduce(buf)
            sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
        return {"backend": tdist.get_backend(), "bytes": numel * 4, "ms_median": round(statistics.median(times), 4),
                "ms_min": round(min(times), 4)}
    finally:
        if opened:
            tdist.destroy_process_group()


def scaling_estimate(step_ms: float, grad_bytes: int, bus_gbps: float, gpus=(1, 2, 4, 8)) -> dict[str, Any]:
    """Expected speed-up with N processes at the same per-process batch (weak scaling), ring all-reduce exposed."""
    out = {}
    for n in gpus:
        comm = 2 * (n - 1) / n * grad_bytes / (bus_gbps * 1e9) * 1e3 if n > 1 else 0.0
        eff = step_ms / (step_ms + comm)
        out[str(n)] = {"allreduce_ms": round(comm, 3), "efficiency": round(eff, 4), "speedup": round(n * eff, 3)}
    return out


def bench_batch(models, images: torch.Tensor, bank, batch_size: int, steps: int, warmup: int, resolution: int,
                tiny: bool, device: torch.device) -> dict[str, Any]:
    from ..fusion import FusionConfig
    from ..losses import LossConfig
    from ..universal import UniversalConfig, UniversalTrainer

    extra = dict(loss=LossConfig(n_crops=4, crop_fraction=0.5), fusion=FusionConfig(width=32, depth=2, d_state=4)) \
        if tiny else {}
    cfg = UniversalConfig(epochs=20, steps_per_epoch=max(1, (warmup + steps) // 5 + 1), batch_size=batch_size,
                          resolution=resolution, checkpoint_every=0, log_every=10 ** 6, **extra)
    trainer = UniversalTrainer(models.vae, models.siglip, images, bank, cfg, vgg=models.vgg, lpips=models.lpips)
    for _ in range(warmup):
        trainer.step()
    sync(device)
    phases: dict[str, list[float]] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    walls = []
    for _ in range(steps):
        marks: list[tuple[str, Any]] = []
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            marks.append(("start", start))

            def on_phase(name, marks=marks):
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                marks.append((name, ev))
        else:
            marks.append(("start", time.perf_counter()))

            def on_phase(name, marks=marks):
                marks.append((name, time.perf_counter()))
        trainer.on_phase = on_phase
        t0 = time.perf_counter()
        trainer.step()
        sync(device)
        walls.append(time.perf_counter() - t0)
        for (_, a), (name, b) in zip(marks, marks[1:]):
            ms = a.elapsed_time(b) if device.type == "cuda" else (b - a) * 1e3
            phases.setdefault(name, []).append(ms)
    numel = sum(p.numel() for p in trainer.net.parameters() if p.requires_grad)
    step_s = statistics.median(walls)
    return {"batch_size": batch_size, "resolution": resolution, "steps_timed": steps,
            "step_ms": round(step_s * 1e3, 2), "pairs_per_s": round(batch_size / step_s, 3),
            "phases_ms": {k: round(statistics.median(v), 3) for k, v in phases.items()},
            "peak_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 3) if device.type == "cuda" else None,
            "trained_parameters": numel}


def run(args) -> dict[str, Any]:
    from ..prompt_bank import load_prompt_bank

    from ..cli import pick_device

    device = pick_device(args.device)
    models = build_tiny_bench_models(device) if args.tiny else build_full_models(device, with_clip=False)
    resolution = 64 if args.tiny else args.resolution
    images = content_images(max(args.batch_size) * 2, resolution, device)
    bank = load_prompt_bank()
    report: dict[str, Any] = {"environment": environment(device), "models": models.kind, "bank_size": len(bank),
                              "bus_gbps_assumed": args.bus_gbps, "runs": []}
    for b in args.batch_size:
        try:
            row = bench_batch(models, images, bank, b, args.steps, args.warmup, resolution, args.tiny, device)
        except torch.cuda.OutOfMemoryError as exc:  # report the batch that does not fit; measure the others
            row = {"batch_size": b, "resolution": resolution, "status": "out of memory", "reason": str(exc)[:200]}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        else:
            row["allreduce_world_1"] = allreduce_alone(row["trained_parameters"], device)
            row["scaling_estimate"] = scaling_estimate(row["step_ms"], row["allreduce_world_1"]["bytes"],
                                                       args.bus_gbps)
        report["runs"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    report["strong_scaling"] = strong_scaling([r for r in report["runs"] if "step_ms" in r], args.bus_gbps)
    return report


def strong_scaling(runs: list[dict[str, Any]], bus_gbps: float, gpus=(2, 4, 8)) -> list[dict[str, Any]]:
    """The SAME global batch B on N processes (the multi-GPU runs): each computes B/N pairs, then all-reduces.

    Uses the measured step time at B and at B/N (when B/N was measured): speed-up = step(B) / (step(B/N) + t(N)).
    """
    by_batch = {r["batch_size"]: r for r in runs}
    out = []
    for b, r in sorted(by_batch.items()):
        for n in gpus:
            if b % n or (b // n) not in by_batch:
                continue
            comm = scaling_estimate(1.0, r["allreduce_world_1"]["bytes"], bus_gbps, (n,))[str(n)]["allreduce_ms"]
            per = by_batch[b // n]["step_ms"] + comm
            out.append({"global_batch": b, "processes": n, "step_ms": round(per, 2),
                        "pairs_per_s": round(b / per * 1e3, 2), "speedup": round(r["step_ms"] / per, 3),
                        "efficiency": round(r["step_ms"] / per / n, 3)})
    return out


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench-universal", help="universal-model training: throughput, memory, step breakdown, "
                                                      "all-reduce and expected multi-GPU scaling")
    p.add_argument("--device", default="auto")
    p.add_argument("--tiny", action="store_true", help="tiny models at 64 px (a CPU check of this command)")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--batch-size", type=int, nargs="+", default=[4, 8, 16], help="global pairs per step (one process)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per batch size")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--bus-gbps", type=float, default=350.0,
                   help="all-reduce bus bandwidth assumed for the scaling estimate (GB/s)")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")
    p.set_defaults(func=cmd_bench_universal)
    return p


def check_options(args) -> None:
    """Every flag, before any model is built: a mistake found after the timing would lose the whole run."""
    from ..cli import at_least, check_resolution_flag, refuse_existing, refuse_unwritable

    at_least("--steps", args.steps, 1)
    at_least("--warmup", args.warmup, 0)
    for b in args.batch_size:
        at_least("--batch-size", b, 1)
    check_resolution_flag(args.resolution, "512")  # the recipe's rule, found after the full models were built
    if not args.bus_gbps > 0:
        raise ValueError(f"--bus-gbps {args.bus_gbps} is invalid: the all-reduce bandwidth is a number of GB/s above "
                         "0 (default 350)")
    if args.out:
        refuse_unwritable(Path(args.out))  # a folder, or a file in the way of its folder
        refuse_existing(Path(args.out), args.overwrite, "report")


def cmd_bench_universal(args) -> int:
    check_options(args)
    report = run(args)
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        from ..image_io import write_text_whole
        write_text_whole(args.out, text)
    print(text)
    return 0
