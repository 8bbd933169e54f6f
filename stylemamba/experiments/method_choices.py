"""Measure the method's open choices on the image-text models of known meaning (docs/METHOD_CHOICES.md).

Every figure is taken on HELD-OUT photos stylised by styles that the project's trainer trained on other
photos, against the untrained style's output B (the VAE reconstruction):

* ``cos``: cos(F_I(Y) - F_I(B), e_t - e_src), the held-out embedding change against the text direction;
* ``proj``: the length of that change projected on the unit text direction;
* ``prop``: the named property itself on the pixels (redness / blueness = chroma along the prompt's colour
  direction, log of the high-frequency share of the luminance for texture prompts), change against B;
* ``ssim``: luminance SSIM of Y against B (content kept);
* ``oor``: share of the decoder's raw output pixels outside [0, 1] (what clamping hides), held-out photos;
* ``ms``: training time per step on this machine; ``params``: trained parameters.

``python -m stylemamba.experiments.method_choices --vae VAE.safetensors [--seeds 0 1 2] [--items so patch ...]``
logs one line per row and writes all rows to JSON; ``--markdown RESULTS.json`` prints them as tables. The VAE
must reconstruct photos (the random tiny VAE does not); any SD-layout VAE file works. Each variant is given
as LossConfig / TrainConfig options over the CURRENT defaults (``PAPER`` undoes the measured changes).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..fusion import FusionConfig
from ..losses import PAPER_VGG_TERM, LossConfig
from ..style_model import StyleModel
from ..stylize import stylize
from ..testing.known_models import KnownMeaningModel, chroma, colour_model, high_frequency_share, texture_model
from ..testing.universal_proof import photos
from ..train import StyleTrainer, TrainConfig
from .metrics import ssim

log = logging.getLogger("stylemamba")

STYLE_PHOTOS = ("astronaut", "coffee")
HELD_OUT_PHOTOS = ("chelsea", "rocket", "camera", "motorcycle")
TEXTURE_PROMPTS = ("a pencil sketch", "a smooth painting")
TRAIN_OPTIONS = ("epochs",)  # options of TrainConfig; every other option is a LossConfig one


# ------------------------------------------------------------------------------------------ inputs
SKIMAGE_NAMES = {"motorcycle": "stereo_motorcycle"}  # the left view of the stereo pair


def photo_set(names: Sequence[str], size: int) -> torch.Tensor:
    """scikit-image photos by their short names as (N,3,size,size) in [0,1] (centre square, antialiased resize)."""
    return photos([SKIMAGE_NAMES.get(n, n) for n in names], size)


def content_networks(seed: int = 0):
    """VGG19 (widths / 16) and LPIPS (AlexNet) with RANDOM backbones: no pretrained weights exist here;
    random convolutional features still respond to structure, which the content terms protect."""
    from ..perceptual import LPIPSLoss, VGGFeatures

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vgg = VGGFeatures(widths=(4, 8, 16, 32, 32)).eval()
        quiet = logging.getLogger("stylemamba.perceptual")
        level, quiet.level = quiet.level, logging.ERROR
        try:
            lpips = LPIPSLoss(net="alex")
        finally:
            quiet.setLevel(level)
    return vgg, lpips


# ------------------------------------------------------------------------------------------ figures
def named_property(model: KnownMeaningModel, prompt: str, images: torch.Tensor) -> torch.Tensor:
    """The property a prompt names, on the pixels, (B,): chroma along its colour direction and/or the signed
    log high-frequency share of the luminance ("a smooth painting" counts smoothness up)."""
    direction = model.vocabulary[" ".join(prompt.lower().split())]
    value = torch.zeros(images.shape[0])
    colour = [direction.get(a, 0.0) for a in ("red", "green", "blue")]
    if any(colour):
        value = value + chroma(images.float()) @ torch.tensor(colour)
    if direction.get("texture", 0.0):
        value = value + direction["texture"] * torch.log(high_frequency_share(images.float()) + 1e-4)
    return value


def figures(model: KnownMeaningModel, prompt: str, styled: torch.Tensor, base: torch.Tensor) -> Dict[str, float]:
    """cos / proj along the prompt, property change and SSIM of held-out pictures against their untrained output."""
    with torch.no_grad():
        delta = model.encode_image(styled) - model.encode_image(base)
    direction = model.direction(prompt).expand_as(delta)
    return {"cos": float(F.cosine_similarity(delta, direction, dim=-1, eps=1e-12).mean()),
            "proj": float((delta * F.normalize(direction, dim=-1)).sum(-1).mean()),
            "prop": float((named_property(model, prompt, styled) - named_property(model, prompt, base)).mean()),
            "ssim": float(ssim(base, styled).mean())}


def out_of_range(vae, style, images: torch.Tensor) -> float:
    """Share of the raw (unclamped) decoder output pixels outside [0, 1]."""
    model = StyleModel.from_styles(vae, [style])
    with torch.no_grad():
        raw = model.raw_output(vae.encode(images.to(vae.device))).float()
    return float(((raw < 0) | (raw > 1)).float().mean())


def gradient_shares(trainer: StyleTrainer, epoch: int) -> Dict[str, float]:
    """Each weighted loss term's share of the summed gradient norms over the trained parameters, at the
    trainer's current weights (:meth:`StyleTrainer.loss_terms`: training continues unchanged)."""
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    terms = trainer.loss_terms(epoch)
    weights = trainer.cfg.loss.weights(epoch)
    norms = {}
    for name, value in terms.items():
        if weights.get(name, 0.0) == 0.0 or not value.requires_grad:
            continue
        grads = torch.autograd.grad(weights[name] * value, params, retain_graph=True, allow_unused=True)
        norms[name] = math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads if g is not None))
    total = sum(norms.values()) or 1.0
    return {k: v / total for k, v in norms.items()}


# ------------------------------------------------------------------------------------------ the bench
@dataclass
class Setup:
    """Sizes of the measurement: the paper's geometry scaled down (512 px / 128 px crops / 224 px tower
    become ``resolution`` / resolution/4 crops / the known models' 64 px input)."""

    resolution: int = 128
    epochs: int = 20
    n_crops: int = 16
    fusion_width: int = 64
    fusion_depth: int = 2
    snapshots: Sequence[int] = (10,)  # also measure the style after these epochs (convergence)

    def recipe(self, seed: int, **options) -> TrainConfig:
        """The recipe of one variant: today's defaults at this setup's sizes, with ``options`` over them."""
        train = {k: options.pop(k) for k in list(options) if k in TRAIN_OPTIONS}
        loss = LossConfig.from_dict({"n_crops": self.n_crops, **options})
        return TrainConfig(epochs=train.pop("epochs", self.epochs), resolution=self.resolution, seed=seed,
                           precision="fp32", loss=loss,
                           fusion=FusionConfig(width=self.fusion_width, depth=self.fusion_depth))


class Bench:
    """Trains styles (cached per prompt, seed and options) and measures them on held-out photos."""

    def __init__(self, vae, setup: Optional[Setup] = None, style_photos: Sequence[str] = STYLE_PHOTOS,
                 held_out_photos: Sequence[str] = HELD_OUT_PHOTOS):
        self.vae, self.setup = vae, setup or Setup()
        r = self.setup.resolution
        # the towers the trainer uses live on the VAE's device; the figures are taken on the CPU
        self.towers = {"colour": colour_model().to(vae.device), "texture": texture_model().to(vae.device)}
        self.models = {"colour": colour_model(), "texture": texture_model()}
        self.content = photo_set(style_photos, r)
        self.held_out = photo_set(held_out_photos, r)
        with torch.no_grad():
            self.base = vae.reconstruct(self.held_out.to(vae.device)).float().clamp(0, 1).cpu()
        self.vgg, self.lpips = (net.to(vae.device) for net in content_networks(0))
        self._cache: Dict[tuple, dict] = {}
        self.on_row: Callable[[dict], None] = lambda row: None  # called after each measured row (saving)

    def model_for(self, prompt: str, tower: bool = False) -> KnownMeaningModel:
        return (self.towers if tower else self.models)["texture" if prompt in TEXTURE_PROMPTS else "colour"]

    def train(self, prompts, seed: int, weights=None, grad_shares: Sequence[int] = (), **options) -> dict:
        """Train once; returns {'style', 'snapshots' {epoch: style}, 'ms' per step, 'params', 'shares'}."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        key = (tuple(prompts), seed, tuple(weights or ()), tuple(grad_shares), tuple(sorted(options.items())))
        if key in self._cache:
            return self._cache[key]
        cfg = self.setup.recipe(seed, **options)
        trainer = StyleTrainer(self.vae, self.model_for(prompts[0], tower=True), self.content, prompts, cfg,
                               prompt_weights=weights, vgg=self.vgg, lpips=self.lpips)
        snapshots, shares, spent = {}, {}, [0.0]

        def on_step(info):
            t0 = time.perf_counter()
            if info.step in self.setup.snapshots:
                snapshots[info.step] = trainer.result(0.0, info.step).style
            if info.step in grad_shares:
                shares[info.step] = gradient_shares(trainer, info.epoch)
            spent[0] += time.perf_counter() - t0

        params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        result = trainer.run(on_step=on_step, lag_reports=False)  # snapshots and shares read the trainer at that step
        out = {"style": result.style, "snapshots": snapshots, "shares": shares, "params": params,
               "ms": 1000 * (result.seconds - spent[0]) / result.steps}
        self._cache[key] = out
        return out

    def apply(self, styles, weights=None, blend: str = "outputs", strength: float = 1.0) -> torch.Tensor:
        styles = list(styles) if isinstance(styles, (list, tuple)) else [styles]
        return stylize(self.held_out, self.vae, styles, weights=weights, strength=strength, blend=blend,
                       precision="fp32")

    def measure(self, prompt: str, seed: int, **options) -> Dict[str, float]:
        """Train ``prompt`` with ``options`` and measure it (final and snapshot epochs) on the held-out photos."""
        run = self.train(prompt, seed, **options)
        model = self.model_for(prompt)
        row = figures(model, prompt, self.apply(run["style"]), self.base)
        row["oor"] = out_of_range(self.vae, run["style"], self.held_out)
        for epoch, style in run["snapshots"].items():
            row[f"prop@{epoch}"] = figures(model, prompt, self.apply(style), self.base)["prop"]
        row.update(ms=run["ms"], params=run["params"])
        return row


# ------------------------------------------------------------------------------------------ the items
PROMPTS = ("red", "a pencil sketch")
# a reference bias helps one prompt and hurts its opposite: the reference items also train the opposite texture
PROMPTS_BOTH_WAYS = ("red", "a pencil sketch", "a smooth painting")
# the paper's recipe (and the 0.1.0 defaults), for comparison with today's defaults
# the VGG content term as it was before item 5 (the raw MSE, the paper's weights); today's default is off
VGG_PAPER = PAPER_VGG_TERM
PAPER = dict(patch=9000.0, so_form="eq4", so_interval=5, clamp_output=False, range_weight=0.0, **VGG_PAPER)


def averaged(rows: List[Dict[str, float]]) -> Dict[str, float]:
    """Mean of each figure over seeds, with its spread (min/max) for the effect figures."""
    out = {}
    for k in rows[0]:
        vals = [r[k] for r in rows]
        out[k] = statistics.fmean(vals)
        if k in ("prop", "cos", "ssim"):
            out[k + "_min"], out[k + "_max"] = min(vals), max(vals)
    return out


def compare(bench: Bench, seeds: Sequence[int], variants: Dict[str, dict],
            prompts: Sequence[str] = PROMPTS) -> List[dict]:
    """Rows {variant, prompt, options, figures averaged over seeds} for each variant and prompt."""
    rows = []
    for name, options in variants.items():
        for prompt in prompts:
            per_seed = [bench.measure(prompt, s, **options) for s in seeds]
            rows.append({"variant": name, "prompt": prompt, "options": options, **averaged(per_seed)})
            log.info("%-36s %-18s %s", name, prompt, _fmt(rows[-1]))
            bench.on_row(rows[-1])
    return rows


def _fmt(row: dict) -> str:
    keys = [k for k in ("prop", "prop@10", "cos", "proj", "ssim", "oor", "ms", "params") if k in row]
    return "  ".join(f"{k} {row[k]:.4g}" for k in keys)


def item_second_order(bench, seeds):
    return compare(bench, seeds, {
        "paper: eq4 every 5": PAPER,
        "paper, so off": dict(PAPER, so=0.0),
        "paper, eq4 w 5000": dict(PAPER, so=5000.0),
        "paper, eq4 every epoch": dict(PAPER, so_interval=1),
        "paper, directional every 5": dict(PAPER, so_form="directional"),
        "paper, directional every epoch": dict(PAPER, so_form="directional", so_interval=1),
        # the gate L_dir < 0.9 rarely opens when the VAE's own reconstruction error is part of F(Y) - F(X)
        "paper, eq4 every epoch, gate open": dict(PAPER, so_interval=1, so_theta=2.0),
        "paper, directional every epoch, gate open": dict(PAPER, so_form="directional", so_interval=1, so_theta=2.0),
        "defaults (directional every epoch)": {},
        "defaults, so off": dict(so=0.0),
    })


def item_patch(bench, seeds):
    rows = compare(bench, seeds, {
        "paper: patch 9000 vs full X": PAPER,
        "paper, patch off": dict(PAPER, patch=0.0),
        "paper, patch off, md off": dict(PAPER, patch=0.0, md=0.0),
        "paper, md off": dict(PAPER, md=0.0),
        "paper, patch vs same crop of X": dict(PAPER, crop_reference="same-crop"),
        "paper, same crop, patch 500": dict(PAPER, crop_reference="same-crop", patch=500.0),
        "paper, full X, patch 500": dict(PAPER, patch=500.0),
        "paper, same crop, patch 2000": dict(PAPER, crop_reference="same-crop", patch=2000.0),
    }, PROMPTS_BOTH_WAYS)
    for seed in seeds[:1]:  # where the gradient goes (first seed)
        for prompt in PROMPTS:
            for name, options in (("paper", PAPER), ("paper, same crop", dict(PAPER, crop_reference="same-crop")),
                                  ("defaults", {})):
                run = bench.train(prompt, seed, grad_shares=(1, 5, 10, 20), **options)
                rows.append({"variant": f"gradient shares: {name}", "prompt": prompt, "seed": seed,
                             "shares": run["shares"]})
                log.info("gradient shares %s %s: %s", name, prompt, run["shares"])
    return rows


def item_mask(bench, seeds):
    return compare(bench, seeds, {
        "paper: md vs full X": PAPER,
        "paper, md off": dict(PAPER, md=0.0),
        "paper, md vs same mask of X": dict(PAPER, mask_reference="same-mask"),
        "paper, same mask, tower-sized patches": dict(PAPER, mask_reference="same-mask", mask_patch_units="tower"),
        "paper, patch off: md full X": dict(PAPER, patch=0.0),
        "paper, patch off: md same mask": dict(PAPER, patch=0.0, mask_reference="same-mask"),
        "paper, patch off: md off": dict(PAPER, patch=0.0, md=0.0),
    }, PROMPTS_BOTH_WAYS)


def item_range(bench, seeds):
    return compare(bench, seeds, {
        "paper: raw output": PAPER,
        "paper, losses see clamp": dict(PAPER, clamp_output=True),
        "paper, range penalty 1e4": dict(PAPER, range_weight=1e4),
        "paper, clamp + penalty 1e4": dict(PAPER, clamp_output=True, range_weight=1e4),
        "paper, range penalty 1e6": dict(PAPER, range_weight=1e6),
        "paper, clamp + penalty 1e6": dict(PAPER, clamp_output=True, range_weight=1e6),
    })


def item_content(bench, seeds):
    return compare(bench, seeds, {
        "no VGG (default)": {},
        "VGG mean, 9000/150 (before item 5)": VGG_PAPER,
        "VGG sum, 9000/150": dict(VGG_PAPER, vgg_reduction="sum"),
        "VGG sum, 9000/1500": dict(VGG_PAPER, vgg_reduction="sum", vgg_weight_end=1500.0),
        # a backbone's feature scale sets what a raw weight means: weights x 1e6 for a VGG with tiny features
        "VGG mean, weights x 1e6": dict(vgg_reduction="mean", vgg_weight_start=9e9, vgg_weight_end=1.5e8),
        # scale-free: the same weight means the same relative feature error on every VGG
        "VGG relative, 1e3/20": dict(vgg_reduction="relative", vgg_weight_start=1e3, vgg_weight_end=20.0),
        "VGG relative, 1e4/200": dict(vgg_reduction="relative", vgg_weight_start=1e4, vgg_weight_end=200.0),
        "VGG relative, 1e5/2000": dict(vgg_reduction="relative", vgg_weight_start=1e5, vgg_weight_end=2000.0),
    })


def _position(model, props, ya, yb, ym) -> Dict[str, float]:
    """Where a mix lies between the two styles' pictures, per named property (0 = style A, 1 = style B)."""
    pos = {}
    for prop in props:
        va, vb, vm = (float(named_property(model, prop, y).mean()) for y in (ya, yb, ym))
        pos["position_" + prop] = (vm - va) / (vb - va) if vb != va else float("nan")
    return pos


def item_mixing(bench, seeds):
    rows = []
    for a, b in (("red", "blue"), ("a pencil sketch", "a smooth painting")):
        model = bench.model_for(a)
        for blend in ("weights", "outputs"):
            per_seed = []
            for seed in seeds:
                sa, sb = bench.train(a, seed)["style"], bench.train(b, seed)["style"]
                ya, yb = bench.apply(sa), bench.apply(sb)
                t0 = time.perf_counter()
                mix = bench.apply([sa, sb], [0.5, 0.5], blend=blend)
                per_seed.append({**_position(model, (a, b), ya, yb, mix), "stylize_s": time.perf_counter() - t0})
            rows.append({"variant": f"Mix Styles 50/50, blend={blend}", "prompt": f"{a} + {b}", **averaged(per_seed)})
            log.info("mix %s %s+%s: %s", blend, a, b, rows[-1])
        for ref in ("full", "same-crop"):  # the same mix as ONE style trained on both prompts (Conditioning Mix)
            per_seed = []
            for seed in seeds:
                ya = bench.apply(bench.train(a, seed, crop_reference=ref)["style"])
                yb = bench.apply(bench.train(b, seed, crop_reference=ref)["style"])
                ym = bench.apply(bench.train([a, b], seed, weights=[0.5, 0.5], crop_reference=ref)["style"])
                per_seed.append(_position(model, (a, b), ya, yb, ym))
            rows.append({"variant": f"Conditioning Mix 50/50, crop_reference={ref}", "prompt": f"{a} + {b}",
                         **averaged(per_seed)})
            log.info("conditioning mix %s %s+%s: %s", ref, a, b, rows[-1])
    return rows


def item_defaults(bench, seeds):
    """Today's defaults against the paper's recipe, and each measured change undone in turn."""
    return compare(bench, seeds, {
        "paper recipe (0.1.0 defaults)": PAPER,
        "current defaults": {},
        "defaults, patch w 9000": dict(patch=9000.0),
        "defaults, second-order eq4 every 5": dict(so_form="eq4", so_interval=5),
        "defaults, raw output": dict(clamp_output=False, range_weight=0.0),
        "defaults, md off": dict(md=0.0),
        "defaults, same crop / same mask": dict(crop_reference="same-crop", mask_reference="same-mask"),
        "defaults, VGG mean 9000/150": VGG_PAPER,
    }, PROMPTS_BOTH_WAYS + ("blue",))


ITEMS: Dict[str, Callable] = {"so": item_second_order, "patch": item_patch, "mask": item_mask, "range": item_range,
                              "content": item_content, "mixing": item_mixing, "defaults": item_defaults}


def markdown(paths: Sequence[str]) -> str:
    """Markdown tables (one per item) of result files written by this command."""
    cols = [("prop", "property"), ("prop@10", "property @10"), ("cos", "cos"), ("ssim", "SSIM"),
            ("oor", "out of [0,1]"), ("ms", "ms/step"), ("params", "trained params")]
    out = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        for item, rows in data["rows"].items():
            out.append(f"\n#### {item} ({Path(path).name}, seeds {data['setup']['seeds']})\n")
            table = [r for r in rows if "prop" in r]
            if table:
                out.append("| variant | prompt | " + " | ".join(c[1] for c in cols) + " |")
                out.append("|---|---|" + "---|" * len(cols))
                for r in table:
                    cells = []
                    for k, _ in cols:
                        v = r.get(k)
                        cells.append("" if v is None else f"{v:.0f}" if k in ("ms", "params") else
                                     f"{v:.1%}" if k == "oor" else f"{v:.3f}")
                    if "prop_min" in r:
                        cells[0] += f" ({r['prop_min']:.3f}..{r['prop_max']:.3f})"
                    out.append(f"| {r['variant']} | {r['prompt']} | " + " | ".join(cells) + " |")
            for r in rows:
                if "prop" not in r:
                    out.append(f"* {json.dumps(r, default=lambda v: round(v, 4) if isinstance(v, float) else str(v))}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stylemamba.experiments.method_choices",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--vae", help="an SD-layout VAE .safetensors that reconstructs photos")
    p.add_argument("--items", nargs="+", default=list(ITEMS), choices=list(ITEMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--resolution", type=int, default=Setup.resolution)
    p.add_argument("--epochs", type=int, default=Setup.epochs)
    p.add_argument("--n-crops", type=int, default=Setup.n_crops)
    p.add_argument("--fusion-width", type=int, default=Setup.fusion_width)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="method_choices.json")
    p.add_argument("--markdown", nargs="+", metavar="RESULTS.json", help="print these results as tables, train nothing")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(args.markdown))
        return 0
    if not args.vae:
        p.error("--vae is required to measure")
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    from ..cli import pick_device
    from ..vae import load_vae

    t0 = time.perf_counter()
    setup = Setup(resolution=args.resolution, epochs=args.epochs, n_crops=args.n_crops, fusion_width=args.fusion_width)
    bench = Bench(load_vae(args.vae, device=pick_device(args.device)), setup)
    results = {"setup": vars(args), "defaults": LossConfig().to_dict(), "rows": {}, "partial": []}

    def save(row=None):
        if row is not None:
            results["partial"].append(row)
        results["seconds"] = round(time.perf_counter() - t0, 1)
        from ..image_io import write_text_whole
        write_text_whole(args.out, json.dumps(results, indent=1, default=str))

    bench.on_row = save
    for item in args.items:
        results["rows"][item] = ITEMS[item](bench, args.seeds)
        save()
    log.info("done in %.0f s; rows in %s", time.perf_counter() - t0, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
