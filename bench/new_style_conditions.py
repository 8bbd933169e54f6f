"""A new style (default recipe, 1 content image, full-size random-weight networks, LPIPS on and VGG off as the
node's defaults) trained several times in one process, under the conditions ComfyUI adds, with where each
style's time went (TrainResult.phases).

    python bench/new_style_conditions.py --runs 5 [--cuda-graphs auto|on|off] [--preview-every 1] [--label L]

Why: a new style took 4.7-5.0 s inside ComfyUI (call L) against ~1.5-2.4 s in the library's bench. ComfyUI
differs in its allocator (run this with PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync, its default) and in
the Train node's progress, which asks for a preview image every step (--preview-every 1). Prints one JSON object;
``SMOKE=1`` runs it on the CPU with the tiny models (times mean nothing there).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time

import torch

from stylemamba.experiments.bench import build_full_models
from stylemamba.train import TrainConfig, train_style


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cuda-graphs", default="auto")
    ap.add_argument("--preview-every", type=int, default=0, help="as the Train node: 1 for a 20-step recipe")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # the graph decisions, on stderr
    smoke = os.environ.get("SMOKE") == "1"
    device = torch.device("cpu" if smoke else "cuda")
    if smoke:
        from stylemamba.experiments.bench import build_tiny_bench_models
        models = build_tiny_bench_models(device)
        cfg = TrainConfig(epochs=2, resolution=64, lr_decay_epoch=2, cuda_graphs=args.cuda_graphs,
                          preview_every=args.preview_every)
    else:
        models = build_full_models(device, with_clip=False)
        cfg = TrainConfig(cuda_graphs=args.cuda_graphs, preview_every=args.preview_every)
    photo = torch.rand(1, 3, cfg.resolution, cfg.resolution, generator=torch.Generator().manual_seed(0))
    previews = []

    def on_step(info):  # what the node's progress does with a preview: a CPU image
        if info.preview is not None:
            previews.append((info.preview.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy().sum())

    runs = []
    for i in range(args.runs):
        t = time.perf_counter()
        result = train_style(models.vae, models.siglip, photo, f"style number {i}", cfg, lpips=models.lpips,
                             device=device, on_step=on_step)
        runs.append({"seconds": round(time.perf_counter() - t, 3),
                     **{k: round(v, 4) for k, v in result.phases.items()}})
    later = [r["seconds"] for r in runs[1:]] or [runs[0]["seconds"]]
    print(json.dumps({"label": args.label, "allocator": torch.cuda.get_allocator_backend() if not smoke else "cpu",
                      "cuda_graphs": args.cuda_graphs, "preview_every": args.preview_every,
                      "median_after_first_s": round(statistics.median(later), 3), "previews": len(previews),
                      "runs": runs}))


if __name__ == "__main__":
    main()
