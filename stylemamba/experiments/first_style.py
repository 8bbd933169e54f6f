"""What the first style of a fresh process costs, compilation included: ``python -m
stylemamba.experiments.first_style --compile default``. Run it twice in two processes: the first
fills the on-disk compile cache (:func:`stylemamba.speed.use_persistent_compile_cache`), the second
shows what a user pays once that cache is warm (the next ComfyUI start, the next CLI call).
Timed: building nothing (the networks are built first), then one ``train_style`` call."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


def cache_files(folder: str) -> int:
    """Files in the compile cache (0 when it does not exist)."""
    return sum(len(files) for _, _, files in os.walk(folder)) if folder and Path(folder).is_dir() else 0


def main(argv: list[str] | None = None) -> dict:
    from ..speed import use_persistent_compile_cache
    from ..train import train_style
    from .bench import PROMPT, Sizes, build_full_models, build_tiny_bench_models, content_images, sync

    p = argparse.ArgumentParser(prog="python -m stylemamba.experiments.first_style", description=__doc__)
    p.add_argument("--compile", default="default", choices=["off", "default", "max-autotune-no-cudagraphs"])
    p.add_argument("--device", default="auto")
    p.add_argument("--tiny", action="store_true", help="tiny models at 64 px (a CPU check of this command)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    from ..cli import pick_device

    device = pick_device(args.device)
    sizes = Sizes(args.tiny)
    models = build_tiny_bench_models(device) if args.tiny else build_full_models(device, with_clip=False)
    cache = use_persistent_compile_cache() if args.compile != "off" else ""
    before = cache_files(cache)
    x = content_images(1, sizes.train, device)
    sync(device)
    t0 = time.perf_counter()
    result = train_style(models.vae, models.siglip, x, PROMPT, sizes.train_config(compile=args.compile),
                         vgg=models.vgg, lpips=models.lpips, device=device)
    sync(device)
    seconds = time.perf_counter() - t0
    out = {"compile": args.compile, "first_style_s": round(seconds, 3), "steps": result.steps,
           "train_loop_s": result.seconds, "cache_dir": cache, "cache_files_before": before,
           "cache_files_after": cache_files(cache), "torch": torch.__version__, "device": str(device)}
    print(json.dumps(out), flush=True)
    if args.json:
        from ..image_io import write_text_whole
        write_text_whole(args.json, json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
