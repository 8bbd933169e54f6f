"""Proof of the universal model on image-text models of KNOWN meaning (``known_models``), on the CPU.

Trained on a bank of six hue prompts (red, yellow, green, cyan, blue, magenta: 60 degrees apart on the
chroma circle), the universal model is asked for prompts it never saw that lie BETWEEN two bank
prompts ("warm" = between red and yellow, 30 degrees; "cool" = between cyan and blue, 210 degrees), on
photos no trained part has seen. It is compared with per-prompt styles trained for exactly those
prompts with the per-style recipe (20 steps on the same content photos). Measured on the stylised
pixels of the held-out photos against the untrained output B (the VAE reconstruction):

* ``cos``: cos(F_I(Y) - F_I(B), e_t - e_src) with the known-meaning embedding (+1: exactly along the prompt);
* ``hue``: the hue angle of the change of mean chroma (red 0, yellow 60, ..., warm 30, cool 210 degrees):
  interpolating between bank prompts means landing between their angles, not on the nearest one;
* ``chroma``: the size of that change along the prompt's colour direction (mean(R - L) units);
* ``ssim``: SSIM (luminance) of Y against B: the content kept.

Then: styles from a reference picture (a photo tinted with a known colour) for the universal model and for
per-style training; and fine-tuning from the universal model: how many steps reach the directional loss
that 20 steps from scratch reach. ``python -m stylemamba.testing.universal_proof OUT_DIR`` prints the
table and writes ``universal_proof.json`` and a picture grid.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..direction import TextDirection
from ..experiments.metrics import ssim
from ..fusion import FusionConfig
from ..losses import LossConfig
from ..stylize import stylize
from ..train import TrainConfig, train_style
from ..universal import (UNIVERSAL_VGG_TERM, UniversalConfig, style_from_universal, train_universal,
                         universal_direction)
from .known_models import chroma, colour_model
from .proof import content_networks  # the functional proof's random-backbone VGG / LPIPS

BANK = ("red", "yellow", "green", "cyan", "blue", "magenta")
HELD_OUT_PROMPTS = ("warm", "cool")
TRAIN_PHOTOS = ("astronaut", "coffee", "stereo_motorcycle")
HELD_OUT_PHOTOS = ("chelsea", "rocket", "camera")
_U = torch.tensor([2.0, -1.0, -1.0]) / math.sqrt(6)  # red on the chroma plane
_V = torch.tensor([0.0, 1.0, -1.0]) / math.sqrt(2)  # 90 degrees on (between yellow and green)
TARGET_HUE = {"red": 0.0, "yellow": 60.0, "green": 120.0, "cyan": 180.0, "blue": 240.0, "magenta": 300.0,
              "warm": 30.0, "cool": 210.0}


def photos(names: Sequence[str], size: int) -> torch.Tensor:
    """scikit-image's bundled photos as (N,3,size,size) in [0,1]: centre square, antialiased resize."""
    import numpy as np
    import skimage.data

    out = []
    for name in names:
        arr = getattr(skimage.data, name)()
        arr = np.asarray(arr[0] if isinstance(arr, tuple) else arr)  # stereo pairs: the left view
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        img = torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1)[None].float() / 255.0
        h, w = img.shape[-2:]
        s = min(h, w)
        img = img[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(out).clamp(0, 1)


def hue_of_change(styled: torch.Tensor, base: torch.Tensor) -> tuple[float, float]:
    """(hue angle in degrees, size) of the change of mean chroma from ``base`` to ``styled`` (means over images)."""
    d = (chroma(styled.float()) - chroma(base.float())).mean(0)
    u, v = float(d @ _U), float(d @ _V)
    return math.degrees(math.atan2(v, u)) % 360.0, math.hypot(u, v)


def angle_error(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


@dataclass
class UniversalProofConfig:
    """Sizes of the proof (CPU); losses and schedules are the recipes' defaults (per-style TrainConfig, UniversalConfig)."""

    resolution: int = 64
    n_crops: int = 8
    fusion_width: int = 64
    fusion_depth: int = 2
    universal_epochs: int = 20  # the recipe's 20 epochs ...
    universal_steps_per_epoch: int = 24  # ... of this many steps (480 steps of 6 pairs)
    batch_size: int = 6
    style_epochs: int = 20  # per-prompt styles: the paper's 20 steps
    fine_tune_prompts: tuple[str, ...] = ("warm", "cool", "yellow")
    seed: int = 0

    def loss(self) -> LossConfig:
        return LossConfig(n_crops=self.n_crops)

    def fusion(self) -> FusionConfig:
        return FusionConfig(width=self.fusion_width, depth=self.fusion_depth)

    def style_recipe(self, epochs: int | None = None) -> TrainConfig:
        return TrainConfig(epochs=epochs or self.style_epochs, resolution=self.resolution, seed=self.seed,
                           loss=self.loss(), fusion=self.fusion())

    def universal_recipe(self) -> UniversalConfig:
        return UniversalConfig(epochs=self.universal_epochs, steps_per_epoch=self.universal_steps_per_epoch,
                               batch_size=self.batch_size, resolution=self.resolution, seed=self.seed,
                               loss=dataclasses.replace(self.loss(), **UNIVERSAL_VGG_TERM), fusion=self.fusion(),
                               log_every=self.universal_steps_per_epoch)


def figures(model, prompt: str, styled: torch.Tensor, base: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        delta = model.encode_image(styled) - model.encode_image(base)
    direction = model.direction(prompt)
    cos = float(F.cosine_similarity(delta, direction.expand_as(delta), dim=-1).mean())
    hue, size = hue_of_change(styled, base)
    target = TARGET_HUE[prompt]
    along = float((chroma(styled) - chroma(base)).mean(0) @ (_U * math.cos(math.radians(target)) +
                                                             _V * math.sin(math.radians(target))))
    return {"cos": cos, "hue": hue, "hue_error": angle_error(hue, target), "chroma": along,
            "ssim": float(ssim(base, styled).mean())}


def steps_to_reach(history: Sequence[dict[str, float]], target: float, key: str = "dir") -> int | None:
    """Optimisation steps done before the loss first is <= ``target`` (history[k] is seen after k steps)."""
    return next((k for k, h in enumerate(history) if h[key] <= target), None)


def run_universal_proof(vae, cfg: UniversalProofConfig | None = None, out_dir: str | Path | None = None,
                        say: Callable[[str], None] = print) -> dict:
    """Train everything the proof needs and measure it; returns the figures (and writes them to ``out_dir``)."""
    cfg = cfg or UniversalProofConfig()
    model = colour_model()
    vgg, lpips = content_networks(cfg.seed)  # random-backbone VGG / LPIPS, as the functional proof uses
    nets = {"vgg": vgg, "lpips": lpips}
    content = photos(TRAIN_PHOTOS, cfg.resolution)
    held = photos(HELD_OUT_PHOTOS, cfg.resolution)
    with torch.no_grad():
        base = vae.reconstruct(held)
    report: dict = {"config": dataclasses.asdict(cfg), "bank": list(BANK), "held_out_prompts": list(HELD_OUT_PROMPTS),
                    "train_photos": list(TRAIN_PHOTOS), "held_out_photos": list(HELD_OUT_PHOTOS), "rows": {}}

    t0 = time.perf_counter()
    uni = train_universal(vae, model, content, list(BANK), cfg.universal_recipe(), **nets,
                          on_log=lambda line: say(f"  universal step {line.step}/{line.total_steps}: dir "
                                                  f"{line.losses['dir']:.3f}"))
    if uni.cancelled:  # a Ctrl-C (train_universal's answer to it): a cut-short model is not judged as the proof's
        raise KeyboardInterrupt
    report["universal_seconds"] = round(time.perf_counter() - t0, 1)
    report["universal_history"] = uni.history
    universal = uni.model
    say(f"universal model: {uni.steps} steps of {cfg.batch_size} pairs in {report['universal_seconds']} s")
    if out_dir is not None:
        from ..style_file import save_universal

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_universal(universal, Path(out_dir) / "universal.safetensors", delta_dtype=torch.float32)

    outputs = {"B": base}
    for prompt in HELD_OUT_PROMPTS + BANK:
        zero = style_from_universal(universal, universal_direction(universal, model, prompt=prompt))
        t1 = time.perf_counter()
        trained = train_style(vae, model, content, prompt, cfg.style_recipe(), **nets)
        seconds = time.perf_counter() - t1
        row = {"held_out_prompt": prompt in HELD_OUT_PROMPTS, "target_hue": TARGET_HUE[prompt],
               "per_prompt_seconds": round(seconds, 1)}
        for kind, style in (("universal", zero), ("per_prompt", trained.style)):
            styled = stylize(held, vae, style)
            outputs[f"{kind}:{prompt}"] = styled
            row[kind] = figures(model, prompt, styled, base)
        report["rows"][prompt] = row
        say(_row_text(prompt, row))

    # the universal model at lower strength (StyleModel's strength: fusion change and decoder delta scaled), to
    # compare with the per-prompt styles at similar content kept
    report["strength"] = {}
    for prompt in HELD_OUT_PROMPTS:
        zero = style_from_universal(universal, universal_direction(universal, model, prompt=prompt))
        report["strength"][prompt] = {str(st): figures(model, prompt, stylize(held, vae, zero, strength=st), base)
                                      for st in (0.1, 0.25, 0.5, 1.0)}
        say(f"{prompt} at strength " + ", ".join(f"{st}: cos {f['cos']:+.2f} hue {f['hue']:.0f} ssim {f['ssim']:.2f}"
                                                 for st, f in report["strength"][prompt].items()))

    # reference pictures: the training photos tinted warm (+0.12 red, -0.12 blue), so reference and source photos
    # differ by the tint only; and ONE tinted photo against both photos (content differences leak in)
    tint = torch.tensor([0.12, 0.0, -0.12]).view(1, 3, 1, 1)
    report["reference"] = {}
    for case, ref in (("tinted_set", (content + tint).clamp(0, 1)), ("one_picture", (content[:1] + tint).clamp(0, 1))):
        target = hue_of_change(ref, content[:ref.shape[0]])[0]
        uni_ref = style_from_universal(universal, universal_direction(universal, model, reference=ref, name=case))
        direction = TextDirection.from_reference(model, ref, source_images=content, name=case)
        trained_ref = train_style(vae, model, content, direction, cfg.style_recipe(), **nets)
        entry = {"target_hue": target}
        for kind, style in (("universal", uni_ref), ("per_prompt", trained_ref.style)):
            styled = stylize(held, vae, style)
            outputs[f"{kind}:reference:{case}"] = styled
            hue, size = hue_of_change(styled, base)
            entry[kind] = {"hue": hue, "hue_error": angle_error(hue, target), "chroma": size,
                           "ssim": float(ssim(base, styled).mean())}
        report["reference"][case] = entry
        say(f"reference ({case}, tint at {target:.0f} deg): universal hue {entry['universal']['hue']:.0f} deg "
            f"ssim {entry['universal']['ssim']:.2f}, per-style hue {entry['per_prompt']['hue']:.0f} deg ssim "
            f"{entry['per_prompt']['ssim']:.2f}")

    # fine-tuning on photos the universal model never saw (the held-out ones): a user's new photos and prompt
    report["fine_tune"] = {"photos": list(HELD_OUT_PHOTOS)}
    for prompt in cfg.fine_tune_prompts:
        scratch = train_style(vae, model, held, prompt, cfg.style_recipe(), **nets)
        target = scratch.history[-1]["dir"]
        tuned = train_style(vae, model, held, prompt, cfg.style_recipe(), start=universal, **nets)
        k = steps_to_reach(tuned.history, target)
        back = steps_to_reach(scratch.history, tuned.history[0]["dir"])
        report["fine_tune"][prompt] = {"scratch_dir_after_20": target, "steps_from_universal": k,
                                       "universal_dir_at_start": tuned.history[0]["dir"],
                                       "scratch_steps_to_universal_start": back,
                                       "scratch_dir": [h["dir"] for h in scratch.history],
                                       "fine_tune_dir": [h["dir"] for h in tuned.history]}
        say(f"fine-tune '{prompt}' on the held-out photos: 20 steps from scratch reach dir {target:.3f}; from the "
            f"universal model {'%d steps' % k if k is not None else 'not within 20 steps'} (dir "
            f"{tuned.history[0]['dir']:.3f} before the first step, {tuned.history[-1]['dir']:.3f} after 20; scratch "
            f"reaches that start {'after %d steps' % back if back is not None else 'not within 20 steps'})")

    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from ..image_io import write_text_whole
        write_text_whole(out / "universal_proof.json", json.dumps(report, indent=1))
        _grid(outputs, out / "universal_proof.png")
    return report


def _row_text(prompt: str, row: dict) -> str:
    u, p = row["universal"], row["per_prompt"]
    tag = "HELD-OUT" if row["held_out_prompt"] else "bank"
    return (f"{prompt:8s} {tag:8s} target {row['target_hue']:5.0f} deg | universal: cos {u['cos']:+.2f} hue "
            f"{u['hue']:5.0f} chroma {u['chroma']:+.3f} ssim {u['ssim']:.2f} | per-prompt: cos {p['cos']:+.2f} hue "
            f"{p['hue']:5.0f} chroma {p['chroma']:+.3f} ssim {p['ssim']:.2f}")


def _grid(outputs: dict[str, torch.Tensor], path: Path) -> None:
    """Rows: held-out photos; columns: B, then universal / per-prompt for each held-out prompt and the reference."""
    from ..image_io import save_image

    keys = ["B"] + [f"{k}:{p}" for p in HELD_OUT_PROMPTS + ("reference:tinted_set",) for k in ("universal", "per_prompt")]
    rows = [torch.cat([outputs[k][i] for k in keys if k in outputs], dim=-1) for i in range(outputs["B"].shape[0])]
    save_image(torch.cat(rows, dim=-2), path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stylemamba.testing.universal_proof", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder for universal_proof.json and universal_proof.png")
    p.add_argument("--vae", help="a VAE that reconstructs photos (default: the project's small VAE, "
                                 "stylemamba/testing/data/small_vae.safetensors)")
    p.add_argument("--steps-per-epoch", type=int, default=UniversalProofConfig.universal_steps_per_epoch)
    args = p.parse_args(argv)
    from ..vae import load_vae
    from .small_vae import load_small_vae

    torch.set_num_threads(1)
    cfg = UniversalProofConfig(universal_steps_per_epoch=args.steps_per_epoch)
    run_universal_proof(load_vae(args.vae) if args.vae else load_small_vae(), cfg, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
