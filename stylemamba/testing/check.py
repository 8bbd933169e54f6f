"""``python -m stylemamba check``: run the functional proof and print its table (exit 1 on failure).

``--break NAME`` runs the same proof with the method deliberately broken (``proof.BREAKAGES``): the check
must then fail, and it says whether the rows that breakage must fail (``proof.BREAKAGE_ROWS``) did.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from .photos import HELD_OUT_PHOTOS, STYLE_PHOTOS
from .proof import (BREAKAGE_ROWS, BREAKAGES, ProofConfig, Row, breakage, describe_perceptual,
                    format_table, resolve_perceptual, run_proof)


def config_for(quick: bool = False, long: bool = False, seed: int = 0, perceptual: str = "random") -> ProofConfig:
    """--quick: the main rows only; --long: 128 px, the default 64 crops, 40 epochs; perceptual: see ProofConfig."""
    perceptual = resolve_perceptual(perceptual)
    if long:
        return ProofConfig(resolution=128, image_size=64, n_crops=64, epochs=40, seed=seed, perceptual=perceptual)
    return ProofConfig(quick=quick, seed=seed, perceptual=perceptual)


def run_check(quick: bool = False, long: bool = False, seed: int = 0, json_path: str | None = None,
              threads: int = 0, broken: str | None = None, out=sys.stdout, perceptual: str = "random") -> int:
    if threads:
        torch.set_num_threads(threads)
    if broken is not None and broken not in BREAKAGES:
        raise ValueError(f"unknown breakage {broken!r}; choose one of {', '.join(BREAKAGES)}")
    cfg = config_for(quick, long, seed, perceptual)
    cfg.recipe()  # its checks (a --seed torch cannot take) before anything is printed or trained
    t0 = time.perf_counter()
    print(f"StyleMamba functional check: styles trained on {', '.join(STYLE_PHOTOS)}, judged on held-out "
          f"{', '.join(HELD_OUT_PHOTOS)} at {cfg.resolution} px ({cfg.epochs} epochs, the trainer's default losses "
          f"and weights, {cfg.n_crops} crops, fusion width {cfg.fusion_width} depth {cfg.fusion_depth}); models: the "
          "project's small VAE, known-meaning colour / texture image-text models (stylemamba.testing), "
          f"{describe_perceptual(cfg.perceptual)}", file=out, flush=True)
    if broken:
        print(f"BROKEN ON PURPOSE ({broken}): {BREAKAGES[broken]}; the check must fail", file=out, flush=True)
    quiet = logging.getLogger("stylemamba")
    level = quiet.level
    if not quiet.isEnabledFor(logging.DEBUG):  # one "memory plan" line per style is noise here (-v shows it)
        quiet.setLevel(logging.WARNING)
    try:
        with breakage(broken) if broken else contextlib.nullcontext():
            rows = run_proof(cfg, on_train=lambda name, s: print(f"  trained '{name}' in {s:.1f} s", file=out,
                                                                 flush=True))
    finally:
        quiet.setLevel(level)
    code = report(rows, time.perf_counter() - t0, out, json_path, perceptual=cfg.perceptual)
    if broken:
        expected = [r.name for r in rows if r.name in BREAKAGE_ROWS[broken]]
        missed = [r.name for r in rows if r.name in expected and not r.failed]
        failing = [r.name for r in rows if r.failed]
        verdict = "DETECTED" if code and not missed else "NOT DETECTED"
        print(f"breakage {broken}: {verdict}; failing rows: {failing or 'none'}"
              + (f"; expected to fail but passed: {missed}" if missed else ""), file=out)
    return code


def report(rows: Sequence[Row], seconds: float, out=sys.stdout, json_path: str | None = None,
           perceptual: str | None = None) -> int:
    """Print the table and the verdict; 1 if any row FAILs (or a known problem unexpectedly passes), else 0."""
    print(format_table(rows), file=out)
    failed = [r for r in rows if r.failed]
    xfail = [r for r in rows if r.status == "XFAIL"]
    print(f"{len(rows) - len(failed) - len(xfail)} passed, {len(xfail)} known problems (XFAIL: the current defaults lack them), "
          f"{len(failed)} failed in {seconds:.0f} s", file=out)
    for r in xfail:
        print(f"  XFAIL {r.name}: {r.known_problem}", file=out)
    for r in failed:
        why = ("passes now: remove it from stylemamba.testing.proof.KNOWN_PROBLEMS" if r.status == "XPASS"
               else f"expected: {r.proves}")
        print(f"  {r.status} {r.name}: {why}", file=out)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        from ..image_io import write_text_whole
        write_text_whole(json_path, json.dumps([{"name": r.name, "status": r.status, "measured": r.value,
                                                 "bound": r.bound, "proves": r.proves,
                                                 **({"perceptual": perceptual} if perceptual else {}), **r.numbers}
                                                for r in rows], indent=2))
    return 1 if failed else 0
