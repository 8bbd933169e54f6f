"""What each memory plan really costs: ``python -m stylemamba.experiments.plan_sweep --json out.json`` (GPU).

:mod:`stylemamba.memory_plan` chooses plans from a model of their memory and time. This runs the default
recipe under EXPLICIT plans (no choice, no retry) on 1 and 4 content images and records, per plan, the
time per style (median after a warm-up), the peak of allocated and of reserved memory (reserved - allocated
is what the caching allocator holds on top), optionally under an emulated card (``--cap GB``: the
benchmark's ``set_per_process_memory_fraction``). The allocator setting in force
(``PYTORCH_CUDA_ALLOC_CONF``) is recorded: run it twice to compare allocators. ``--tiny`` is a CPU check.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import torch

# micro_batch, view_chunk (0 = all views), decoder checkpointing [, tower layers checkpointed]
PLANS_1 = ("1,0,off", "1,0,off,on", "1,0,on", "1,0,on,on", "1,32,off", "1,32,on")
PLANS_4 = ("4,0,off", "4,0,off,on", "2,0,off,on", "1,0,off,on", "4,0,on,on", "2,0,on", "1,0,on", "1,0,on,on",
           "1,8,on")


def parse(text: str):
    from ..memory_plan import MemoryPlan

    micro, chunk, ckpt, *tower = text.split(",")
    return MemoryPlan(int(micro), int(chunk), ckpt == "on", tower == ["on"], "explicit (plan_sweep)")


def run_plan(models, sizes, device, n_images: int, plan_text: str, repeats: int, steps: int | None) -> dict:
    from ..memory_plan import Recipe, estimate_bytes, plan_to_option
    from ..train import train_style
    from .bench import PROMPT, content_images, peak_memory, sync

    plan = parse(plan_text)
    cfg = dataclasses.replace(sizes.train_config(), memory_plan=plan_to_option(plan))
    if steps:
        cfg.epochs = steps
    x = content_images(n_images, sizes.train, device, seed=n_images)
    row = {"images": n_images, "plan": plan.describe(),
           "estimate_gb": round(estimate_bytes(plan, Recipe.of(n_images, cfg)) / 1e9, 2)}
    times, boxes = [], []
    try:
        for i in range(repeats + 1):
            box: dict = {}
            with peak_memory(device, box):
                t0 = time.perf_counter()
                train_style(models.vae, models.siglip, x, PROMPT, cfg, vgg=models.vgg, lpips=models.lpips,
                            device=device)
                sync(device)
                seconds = time.perf_counter() - t0
            if i:
                times.append(seconds)
            boxes.append(box)
        on_gpu = device.type == "cuda"
        row.update(status="pass", style_s=round(statistics.median(times), 3), times=[round(t, 3) for t in times],
                   working_peak_gb=round(max(b["peak_gb"] - b["resident_gb"] for b in boxes), 3) if on_gpu else None,
                   reserved_peak_gb=max(b["reserved_peak_gb"] for b in boxes) if on_gpu else None)
    except torch.cuda.OutOfMemoryError as exc:
        row.update(status="out of memory", reason=str(exc)[:200])
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(row), flush=True)
    return row


def tower_chunks(models, device: torch.device, views: int = 66, chunk: int = 32, repeat: int = 10) -> dict:
    """The image tower alone on a step's views, forward + backward to the pixels: whole, whole with its layers
    recomputed in backward (tower_checkpointing), or split into chunks (plain, checkpointed, with cuDNN
    autotuning): GPU time (CUDA events), host time per call, and the largest kernels of the plain split. (On an H200 the patch convolution computed as a matrix product changed
    nothing: 36.9 vs 31.1 ms whole, 110 vs 83 ms split; bench/results/defaults_h200/README.md.)"""
    import torch.utils.checkpoint as ckpt

    from ..train import layers_recomputed, tower_layers
    from .bench import kernel_groups, time_device, time_wall

    size = models.siglip.image_size
    x = torch.rand(views, 3, size, size, device=device, requires_grad=True)
    enc = models.siglip.encode_image

    def run(kind: str):
        def call():
            x.grad = None
            if kind == "whole":
                emb = enc(x)
            elif kind == "layers_checkpointed":
                with layers_recomputed(tower_layers(models.siglip)):
                    emb = enc(x)
            elif kind == "checkpoint":
                emb = torch.cat([ckpt.checkpoint(enc, p, use_reentrant=False, preserve_rng_state=False)
                                 for p in x.split(chunk)])
            else:
                emb = torch.cat([enc(p) for p in x.split(chunk)])
            with torch.autocast(device.type, enabled=False):
                emb.float().square().sum().backward()
        return call

    out = {"views": views, "chunk": chunk}
    for kind in ("whole", "layers_checkpointed", "split", "split_cudnn_benchmark", "checkpoint"):
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = kind == "split_cudnn_benchmark"
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                gpu = time_device(run(kind), device, warmup=2, repeat=repeat)
                host, _ = time_wall(run(kind), device, warmup=1, repeat=repeat)
                if kind == "split" and device.type == "cuda":
                    out["split_kernels"] = kernel_groups(run(kind), device, top=8)
        finally:
            torch.backends.cudnn.benchmark = before
        out[kind] = {"gpu_ms": round(statistics.median(gpu), 3), "wall_ms": round(statistics.median(host) * 1e3, 3)}
        print(f"tower {kind:26s} events {out[kind]['gpu_ms']:8.2f} ms  wall {out[kind]['wall_ms']:8.2f} ms", flush=True)
    for k in out.get("split_kernels", []):
        print(f"  split: {k['ms']:8.3f} ms {k['calls']:4d}x  {k['kernel']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    from .bench import Sizes, build_full_models, build_tiny_bench_models

    p = argparse.ArgumentParser(prog="python -m stylemamba.experiments.plan_sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--images", type=int, nargs="*", default=[1, 4], help="content-image counts to sweep (none: only --tower)")
    p.add_argument("--plans", nargs="+", help="micro_batch,view_chunk,on|off[,on|off] (0 = all views; decoder "
                   "checkpointing[, tower layers checkpointed]); default: a sweep")
    p.add_argument("--cap", type=float, help="emulate a card of this many GB (set_per_process_memory_fraction)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, help="epochs per style (default: the recipe's)")
    p.add_argument("--tower", action="store_true", help="first time the image tower alone, whole and in chunks")
    p.add_argument("--json")
    args = p.parse_args(argv)
    from ..cli import pick_device

    device = pick_device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    sizes = Sizes(args.tiny)
    models = build_tiny_bench_models(device) if args.tiny else build_full_models(device, with_clip=False)
    out = {"alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""), "cap_gb": args.cap, "torch": torch.__version__,
           "resident_gb": round(torch.cuda.memory_allocated(device) / 1e9, 3) if device.type == "cuda" else None,
           "rows": []}
    if args.tower:
        out["tower"] = tower_chunks(models, device, repeat=2 if args.tiny else 10,
                                    chunk=4 if args.tiny else 32, views=6 if args.tiny else 66)
    if args.cap and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(args.cap * 1e9 / total, device)
    for n in args.images:
        plans = args.plans or (PLANS_1 if n == 1 else PLANS_4)
        for text in plans:
            if int(text.split(",")[0]) > n:
                continue
            out["rows"].append(run_plan(models, sizes, device, n, text, args.repeats, args.steps))
            if args.json:
                from ..image_io import write_text_whole
                write_text_whole(args.json, json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
