"""``python -m stylemamba eval``: the paper's Table 1 (and its ablations, Tables 3, 4, 6) on your images and prompts.

For every (content image, prompt) pair and every method (our StyleMamba styles, the CLIPstyler
baseline) it stylises the image and measures: the text-image style score with every evaluation
model given (SigLIP and/or CLIP, raw cosine; Table 4 asks for the one NOT used in training too),
SSIM between content and result (luminance and RGB), the VGG content loss, LPIPS, the LAION
aesthetic score, the training time per style, the inference time per image and the parameter
counts (Table 2). Results go to ``results.jsonl`` as each pair finishes (so an interrupted run
resumes where it stopped), then to ``results.csv``, ``results.json`` (with the configuration,
models, scales and what was skipped and why), a table on screen and ``contact_sheet.png``.

The core is :func:`run_evaluation` (a Python function, used by the tests); :func:`add_parser` adds
the ``eval`` sub-command to the CLI.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import logging
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from . import metrics as M

log = logging.getLogger("stylemamba")

METHODS = ("stylemamba", "clipstyler")
RESULTS_JSONL = "results.jsonl"
MAX_THUMB = 1024  # a contact sheet tile; --thumb 100000 ran out of memory (or for ever) after every pair was done

# What each number means (written into results.json and EVAL.md).
SCALES = {
    "ssim_lum": "SSIM (Wang et al. 2004; Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03, data range 1, valid region) "
                "between content and result on BT.601 luminance Y; in [-1, 1], 1 = same structure, higher = more "
                "content kept",
    "ssim_rgb": "same SSIM, mean of the R, G and B channels",
    "vgg": "VGG19 content loss: mean over conv4_2 and conv5_2 (ReLU outputs, ImageNet-normalised input) of the MSE "
           "between the features of result and content; >= 0, lower = more content kept (CLIPstyler's own number "
           "is the sum over the two layers, i.e. 2x this)",
    "lpips": "LPIPS distance (v0.1 linear heads) between result and content; >= 0 (about 0..1), lower = closer",
    "aesthetic": "LAION aesthetic predictor (linear head on L2-normalised CLIP ViT-L/14 image embeddings); "
                 "about 1..10, higher = more aesthetic",
    "train_s": "StyleMamba: seconds to train the style (once per prompt, shared by all images); CLIPstyler: seconds "
               "of the per-image optimisation",
    "infer_s": "seconds to produce one stylised image: StyleMamba one forward pass (VAE encoder, fusion, decoder); "
               "CLIPstyler the whole optimisation (it has no separate inference)",
    "params": "parameters of what is trained: StyleMamba fusion module + decoder, CLIPstyler its U-Net",
}
STYLE_SCALE = ("raw cosine in [-1, 1] between the {kind} image embedding of the result and the {kind} text "
               "embedding of the prompt (model {name}); higher = closer to the prompt; not comparable across models")


# ---------------------------------------------------------------------------------------------- small helpers
def slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return (s[:limit].rstrip("-") or "prompt")


def prompt_stem(prompt: str) -> str:
    """A prompt's part of its files' names: its slug and a short hash of it, because prompts differing only in case,
    punctuation or after 40 characters share a slug and one would read (or write over) the other's style and images."""
    return f"{slug(prompt)}-{_hash(prompt)[:6]}"


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are ignored; duplicates refused."""
    path = Path(path)
    if path.is_dir():  # "not found" misled for a folder
        from ..image_io import not_a_file

        raise not_a_file(path, "prompts file")
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path} (a text file with one style prompt per line)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"prompts file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                         "UTF-8") from None
    prompts = [ln.strip() for ln in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise ValueError(f"{path} holds no prompts: write one style prompt per line")
    return prompts


def _content_files(sources: Sequence[str | Path]) -> list[Path]:
    from ..image_io import list_images

    files = [f for src in sources for f in list_images(src)]
    names = [f.name for f in files]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"content images with the same file name {dupes}: rename them (names identify rows)")
    stems: dict[str, Path] = {}
    for f in files:  # results are named by the stem (a case-blind disk ignores its case)
        other = stems.setdefault(f.stem.lower(), f)
        if other is not f:
            raise ValueError(f"content images {other.name} and {f.name} would share their results' file names: "
                             "rename one of them")
    return files


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def format_table(rows: list[dict[str, Any]], columns: list[str], widths: dict[str, int] | None = None) -> str:
    """A plain fixed-width text table (no extra dependency)."""
    widths = widths or {}
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    for i, c in enumerate(columns):
        limit = widths.get(c)
        if limit:
            for row in cells:
                if len(row[i]) > limit:
                    row[i] = row[i][:limit - 1] + "~"
    w = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(columns)), "  ".join("-" * x for x in w)]
    lines += ["  ".join(cell.rjust(w[i]) if i >= 3 else cell.ljust(w[i]) for i, cell in enumerate(row)) for row in cells]
    return "\n".join(lines)


def contact_sheet(content: list[tuple[str, Path]], prompts: list[str], methods: list[str],
                  outputs: dict[tuple[str, str, str], Path], path: Path, thumb: int = 192) -> Path:
    """One row per (content image, method), one column per prompt; the first column is the content.

    Missing results are left gray. Column titles are the prompts, row titles the method.
    """
    from PIL import Image, ImageDraw

    pad, top, left = 4, 28, 0
    cols = 1 + len(prompts)
    rows = [(name, src, m) for name, src in content for m in methods]
    sheet = Image.new("RGB", (left + cols * (thumb + pad) + pad, top + len(rows) * (thumb + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)

    def tile(p: Path | None) -> Image.Image:
        if p is None or not Path(p).is_file():
            return Image.new("RGB", (thumb, thumb), (128, 128, 128))
        with Image.open(p) as im:
            im = im.convert("RGB")
            s = min(im.size)
            im = im.crop(((im.width - s) // 2, (im.height - s) // 2, (im.width + s) // 2, (im.height + s) // 2))
            return im.resize((thumb, thumb), Image.LANCZOS)

    chars = max(4, thumb // 6)

    def label(xy: tuple[int, int], text: str) -> None:  # white on a dark box: readable on any image
        box = draw.textbbox(xy, text)
        draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
        draw.text(xy, text, fill="white")

    for j, title in enumerate(["content"] + list(prompts)):
        x = left + pad + j * (thumb + pad)
        draw.text((x, 2), title[:chars], fill="black")
        if len(title) > chars:
            draw.text((x, 14), title[chars:2 * chars], fill="black")
    for i, (name, src, method) in enumerate(rows):
        y = top + pad + i * (thumb + pad)
        sheet.paste(tile(src), (left + pad, y))
        label((left + pad + 3, y + 3), name[:chars - 2])
        for j, prompt in enumerate(prompts):
            x = left + pad + (j + 1) * (thumb + pad)
            sheet.paste(tile(outputs.get((method, name, prompt))), (x, y))
            label((x + 3, y + 3), method)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


# ---------------------------------------------------------------------------------------------- metrics
class MetricSuite:
    """The frozen measuring networks, loaded once; ``measure(x, y, prompt)`` -> a dict of numbers."""

    def __init__(self, device: torch.device, eval_models: list[tuple[str, Any]], vgg=None, lpips=None,
                 aesthetic: M.AestheticScorer | None = None):
        self.device = device
        self.eval_models = eval_models  # [(column, encoder)]
        self.vgg, self.lpips, self.aesthetic = vgg, lpips, aesthetic

    @property
    def columns(self) -> list[str]:
        cols = [c for c, _ in self.eval_models] + ["ssim_lum", "ssim_rgb"]
        cols += ["vgg"] if self.vgg is not None else []
        cols += ["lpips"] if self.lpips is not None else []
        cols += ["aesthetic"] if self.aesthetic is not None and self.aesthetic.available else []
        return cols

    @torch.no_grad()
    def measure(self, x: torch.Tensor, y: torch.Tensor, prompt: str) -> dict[str, float]:
        x = x.to(self.device, torch.float32)
        y = y.to(self.device, torch.float32).clamp(0, 1)
        out: dict[str, float] = {}
        for column, enc in self.eval_models:
            out[column] = float(M.style_score(enc, y, [prompt])[0])
        out["ssim_lum"] = float(M.ssim(x, y, "luminance")[0])
        out["ssim_rgb"] = float(M.ssim(x, y, "rgb")[0])
        if self.vgg is not None:
            out["vgg"] = float(M.vgg_content_loss(self.vgg, x, y)[0])
        if self.lpips is not None:
            out["lpips"] = float(M.lpips_distance(self.lpips, x, y)[0])
        if self.aesthetic is not None and self.aesthetic.available:
            out["aesthetic"] = float(self.aesthetic.score(y)[0])
        return out


def _eval_columns(encoders: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Column names ``style_<kind>``, made unique with the model name when two models share a kind."""
    kinds = [enc.kind for _, enc in encoders]
    out = []
    for (path, enc), kind in zip(encoders, kinds):
        col = f"style_{kind}" if kinds.count(kind) == 1 else f"style_{kind}_{slug(enc.name or Path(path).name, 24)}"
        out.append((col, enc))
    return out


# ---------------------------------------------------------------------------------------------- the evaluation
class _Session:
    """What both methods share during one evaluation: the output folder, device, metrics and bookkeeping."""

    def __init__(self, out: Path, device: torch.device, files: list[Path], resolution: int, progress: bool):
        self.out, self.device, self.files, self.resolution = out, device, files, resolution
        self.names = [f.name for f in files]
        # what each content picture is, not only its name: a resumed run given another folder with the same file
        # names showed the earlier pictures' numbers under the new ones
        self.content_ids = {f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in files}
        self.jsonl = out / RESULTS_JSONL
        self.done: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.skipped: list[dict[str, Any]] = []
        self.suite: MetricSuite | None = None
        self.bar_kw = dict(disable=not progress, file=sys.stderr, dynamic_ncols=True)
        self._text: dict[str, Any] = {}
        self._content: dict[str, torch.Tensor] = {}

    def text_model(self, path) -> Any:
        """A SigLIP/CLIP model, loaded once per path."""
        from ..encoders import load_text_image_encoder

        key = str(path)
        if key not in self._text:
            self._text[key] = load_text_image_encoder(path, device=self.device)
        return self._text[key]

    def let_go(self, path) -> None:
        """Forget the model loaded for ``path`` and give its GPU memory back, once nothing else will use it."""
        if self._text.pop(str(path), None) is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()

    def content_image(self, name: str) -> torch.Tensor:
        """The content image, resized (short side) and centre-cropped to the resolution, as both methods see it."""
        from ..image_io import load_image
        from ..train import prepare_content

        if name not in self._content:
            self._content[name] = prepare_content(load_image(self.files[self.names.index(name)]), self.resolution)
        return self._content[name]

    def finish_pair(self, method: str, name: str, prompt: str, x: torch.Tensor, y: torch.Tensor,
                    **fields: Any) -> dict[str, Any]:
        """Measure, save the image, append the row to results.jsonl (flushed: an interruption loses nothing)."""
        from ..image_io import save_image

        # the configuration in the name: another one's run into this folder wrote over these images, and resuming
        # this one then showed that one's images beside this one's numbers
        rel = Path("images") / method / f"{Path(name).stem}__{prompt_stem(prompt)}-{fields['config_key'][:6]}.png"
        save_image(y, self.out / rel)
        row = {"method": method, "image": name, "prompt": prompt, **self.suite.measure(x, y, prompt), **fields,
               "content_id": self.content_ids[name], "output": rel.as_posix()}
        self.done[(method, name, prompt)] = row
        with self.jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        return row


def run_evaluation(
    content: Sequence[str | Path],
    prompts: Sequence[str],
    out_dir: str | Path,
    method: str = "stylemamba",
    *,
    vae: str | Path | None = None,
    styles_dir: str | Path | None = None,
    train_config=None,
    train_content: Sequence[str | Path] | None = None,
    train_text_model: str | Path | None = None,
    eval_text_models: Sequence[str | Path] = (),
    clipstyler_config=None,
    clipstyler_text_model: str | Path | None = None,
    vgg: str | Path | None = None,
    lpips_net: str = "vgg",
    lpips_backbone: str | Path | None = None,
    aesthetic_head: str | Path | None = None,
    aesthetic_clip: str | Path | None = None,
    resolution: int | None = None,
    device: str | torch.device = "auto",
    resume: bool = True,
    progress: bool = True,
    thumb: int = 192,
    print_table: bool = True,
) -> dict[str, Any]:
    """Evaluate ``method`` ("stylemamba", "clipstyler" or "both") on every (content image, prompt) pair.

    ``train_config``: a :class:`stylemamba.train.TrainConfig` (the default recipe by default) used to
    train the StyleMamba styles that ``styles_dir`` does not provide (matched by the ``prompts`` in
    each style's metadata), on ``train_content`` (default: the evaluated images themselves).
    ``eval_text_models``: SigLIP/CLIP folders; each gives a style-score column (default: the training
    model). ``resolution``: images are resized (short side) and centre-cropped to this square, for
    both methods and for the metrics (default: the recipe's, 512). Returns what ``results.json`` holds.
    """
    from .baselines.clipstyler import ClipStylerConfig
    from ..cli import pick_device, refuse_unwritable
    from ..encoders import load_text_image_encoder
    from ..train import TrainConfig

    methods = list(METHODS) if method == "both" else [method]
    if any(m not in METHODS for m in methods):
        raise ValueError(f"unknown method {method!r}; choose stylemamba, clipstyler or both")
    prompts = list(prompts)
    keys = [" ".join(str(p).split()) for p in prompts]  # as the text model reads them: spacing does not count
    if not prompts or not all(keys):
        raise ValueError("give at least one prompt, no empty ones")
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"prompt {', '.join(map(repr, repeated))} is repeated: give each prompt once")
    if not 1 <= int(thumb) <= MAX_THUMB:
        raise ValueError(f"thumb {thumb}: the contact sheet's tiles are a number of pixels, at least 1 and at most "
                         f"{MAX_THUMB} (default 192)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file: eval writes a folder (results.*, contact_sheet.png, images/, styles/); "
                         "give a folder")
    if styles_dir and not Path(styles_dir).is_dir():  # before the models load, and a file is not 'not found'
        raise ValueError(f"--styles {styles_dir} is {'a file' if Path(styles_dir).exists() else 'not there'}: give "
                         "the folder of trained styles (.safetensors), or leave --styles out to train them")
    files = _content_files(content)
    train_files = _content_files(train_content) if train_content else files  # a typo: named before the models load
    sources = {Path(c).resolve() for c in [*content, *(train_content or [])] if Path(c).is_dir()}
    if out.resolve() in sources:  # its contact_sheet.png would be a content photo of the next (resumed) run
        raise ValueError(f"--out {out} is a content folder: eval writes its results (contact_sheet.png, results.*) "
                         "there, and the next run would read them as photos; give another folder")
    refuse_unwritable(out / RESULTS_JSONL, "--out")  # a file in the way of its folder: a traceback before
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(str(device)) if not isinstance(device, torch.device) else device
    train_cfg = train_config if train_config is not None else TrainConfig()
    res = int(resolution or train_cfg.resolution)
    cs_cfg = dataclasses.replace(clipstyler_config if clipstyler_config is not None else ClipStylerConfig(),
                                 resolution=res)
    names = [f.name for f in files]
    session = _Session(out, dev, files, res, progress)
    skipped, text_model = session.skipped, session.text_model
    t_start = time.perf_counter()

    # ------------------------------------------------------------------ frozen measuring networks
    from ..perceptual import LPIPSLoss, VGGFeatures

    eval_paths = list(dict.fromkeys(str(p) for p in eval_text_models))
    if not eval_paths:  # fall back on the training model(s): a biased but useful score
        trained_with = [train_text_model if "stylemamba" in methods else None,
                        clipstyler_text_model if "clipstyler" in methods else None]
        eval_paths = list(dict.fromkeys(str(p) for p in trained_with if p))
        if eval_paths:
            skipped.append({"what": "style score with a model not used for training (Table 4)",
                            "why": "no --eval-text-model given: the style score uses the training model only"})
    eval_models = _eval_columns([(p, text_model(p)) for p in eval_paths])
    if not eval_models:
        skipped.append({"what": "style score", "why": "no text-image model given (--eval-text-model)"})
    vgg_net = VGGFeatures.from_safetensors(vgg).to(dev) if vgg else None
    if vgg_net is None:
        skipped.append({"what": "vgg", "why": "no --vgg given (VGG19 features .safetensors, torchvision layout; "
                                              "stylemamba.perceptual.convert_torchvision_vgg19 writes one)"})
    lpips_mod = LPIPSLoss(net=lpips_net, backbone_path=lpips_backbone).to(dev) if lpips_backbone else None
    if lpips_mod is None:
        skipped.append({"what": "lpips", "why": "no --lpips-backbone given (ImageNet VGG16/AlexNet features "
                                                "as .safetensors); LPIPS on a random backbone would be meaningless"})
    aesthetic = M.AestheticScorer(aesthetic_head, aesthetic_clip, device=dev,
                                  clip_encoder=session._text.get(str(aesthetic_clip)) if aesthetic_head else None)
    if not aesthetic.available:
        skipped.append({"what": "aesthetic", "why": aesthetic.message})
    elif aesthetic.note:
        skipped.append({"what": "aesthetic (as LAION's)", "why": aesthetic.note})
    suite = session.suite = MetricSuite(dev, eval_models, vgg_net, lpips_mod, aesthetic)

    # ------------------------------------------------------------------ configuration and resume keys
    metric_setup = {"resolution": res, "eval": [(c, e.name, e.kind) for c, e in eval_models],
                    "vgg": str(vgg) if vgg else None, "lpips": [lpips_net, str(lpips_backbone)] if lpips_backbone else None,
                    "aesthetic": [str(aesthetic_head), str(aesthetic_clip)] if aesthetic.available else None}
    method_setup = {
        "stylemamba": {"recipe": train_cfg.to_dict(), "vae": str(vae), "styles_dir": str(styles_dir) if styles_dir else None,
                       "train_text_model": str(train_text_model), "train_content": [str(f) for f in train_files]},
        "clipstyler": {"config": cs_cfg.to_dict(), "text_model": str(clipstyler_text_model)},
    }
    keys = {m: _hash({"metrics": metric_setup, "method": method_setup[m]}) for m in methods}

    jsonl, done = session.jsonl, session.done
    if resume and jsonl.is_file():
        stale = 0
        for line in jsonl.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interruption
            if (row.get("method") in keys and row.get("config_key") == keys[row["method"]]
                    and row.get("content_id") == session.content_ids.get(row.get("image"))):
                done[(row["method"], row["image"], row["prompt"])] = row
            else:
                stale += 1
        if stale:
            skipped.append({"what": f"{stale} earlier row(s) of {RESULTS_JSONL}",
                            "why": "made with another configuration, method or content picture of that name: "
                                   "ignored and recomputed"})
    elif not resume and jsonl.exists():
        jsonl.unlink()

    wanted = [(m, n, p) for m in methods for n in names for p in prompts]
    already = [k for k in wanted if k in done and Path(out / done[k]["output"]).is_file()]
    if already:
        skipped.append({"what": f"{len(already)} pair(s)", "why": f"already in {RESULTS_JSONL} (--resume)",
                        "pairs": [list(k) for k in already]})
    todo = [k for k in wanted if k not in already]

    models_info: dict[str, Any] = {
        "eval_text_models": [{"column": c, "name": e.name, "kind": e.kind, "path": p}
                             for (c, e), p in zip(eval_models, eval_paths)],
        "vgg": str(vgg) if vgg else None, "lpips": {"net": lpips_net, "backbone": str(lpips_backbone)} if lpips_backbone else None,
        "aesthetic": {"head": str(aesthetic_head), "clip": str(aesthetic_clip), "note": aesthetic.note}
        if aesthetic.available else None,
    }
    cs_text_path, cs_text = None, None
    if "clipstyler" in methods:  # its model checked and loaded before the StyleMamba work, not found missing after it
        cs_text_path = clipstyler_text_model or next((p for (c, e), p in zip(eval_models, eval_paths)
                                                      if e.kind == "clip"), None)
        if any(k[0] == "clipstyler" for k in todo):
            if not cs_text_path:
                raise ValueError("CLIPstyler needs a CLIP model: pass --clipstyler-text-model (the paper: "
                                 "openai/clip-vit-base-patch32) or a CLIP --eval-text-model")
            # loaded now, so a bad model is named before the StyleMamba work; on the GPU only while CLIPstyler runs
            # (unless the metrics or StyleMamba use it too): an 8 GB card trains StyleMamba without it
            shared = str(cs_text_path) in (*eval_paths, str(train_text_model))
            cs_text = text_model(cs_text_path) if shared else load_text_image_encoder(cs_text_path, device="cpu")
    # ------------------------------------------------------------------ StyleMamba
    if "stylemamba" in methods:
        sm_todo = [k for k in todo if k[0] == "stylemamba"]
        models_info["stylemamba"] = {"vae": str(vae), "train_text_model": str(train_text_model),
                                     "styles": {}, "recipe": train_cfg.to_dict()}
        if sm_todo:
            models_info["stylemamba"].update(_run_stylemamba(
                session, sm_todo, prompts, keys["stylemamba"], vae, styles_dir, train_cfg, train_files,
                train_text_model, vgg_net, lpips_mod))
        if train_text_model and str(train_text_model) not in (*eval_paths, str(cs_text_path)):
            session.let_go(train_text_model)  # neither measures nor runs CLIPstyler: its memory to CLIPstyler

    # ------------------------------------------------------------------ CLIPstyler
    if "clipstyler" in methods:
        cs_todo = [k for k in todo if k[0] == "clipstyler"]
        models_info["clipstyler"] = {"text_model": str(cs_text_path), "config": cs_cfg.to_dict()}
        if cs_todo:
            if cs_text.kind != "clip":
                log.warning("CLIPstyler runs on %s (%s); the paper's baseline uses CLIP ViT-B/32", cs_text.name,
                            cs_text.kind)
            _run_clipstyler(session, cs_todo, keys["clipstyler"], cs_cfg, cs_text.to(session.device), vgg_net)
        used = str(cs_text_path) if cs_text_path else None
        models_info["clipstyler"]["used_for_training_column"] = [c for (c, _), p in zip(eval_models, eval_paths)
                                                                 if used and p == used]
    if "stylemamba" in methods:
        models_info["stylemamba"]["used_for_training_column"] = [c for (c, _), p in zip(eval_models, eval_paths)
                                                                 if train_text_model and p == str(train_text_model)]

    # ------------------------------------------------------------------ report
    rows = [done[k] for k in wanted if k in done]
    metric_cols = suite.columns
    averages = {}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        avg = {c: M.finite_mean([r.get(c) for r in mine]) for c in metric_cols + ["infer_s"]}
        per_style = {}
        for r in mine:
            per_style.setdefault(r["prompt"], r.get("train_s"))
        avg["train_s"] = M.finite_mean(list(per_style.values()) if m == "stylemamba" else [r.get("train_s") for r in mine])
        avg["params"] = next((r.get("params") for r in mine if r.get("params") is not None), None)
        avg["pairs"] = len(mine)
        averages[m] = avg
    scales = {c: STYLE_SCALE.format(kind=e.kind.upper() if e.kind == "clip" else "SigLIP", name=e.name)
              for c, e in eval_models}
    scales.update({c: SCALES[c] for c in ("ssim_lum", "ssim_rgb", "vgg", "lpips", "aesthetic", "train_s", "infer_s",
                                          "params")})
    columns = ["method", "image", "prompt"] + metric_cols + ["train_s", "infer_s", "params"]
    _write_csv(out / "results.csv", rows, averages, columns)
    sheet = contact_sheet([(n, files[names.index(n)]) for n in names], prompts, methods,
                          {k: out / done[k]["output"] for k in wanted if k in done}, out / "contact_sheet.png", thumb)
    report = {
        "command": "python -m stylemamba eval",
        "methods": methods,
        "content": [str(f) for f in files],
        "prompts": prompts,
        "resolution": res,
        "device": str(dev),
        "config": {"stylemamba": method_setup["stylemamba"] if "stylemamba" in methods else None,
                   "clipstyler": method_setup["clipstyler"] if "clipstyler" in methods else None,
                   "metrics": metric_setup, "resume": resume},
        "models": models_info,
        "columns": columns,
        "scales": scales,
        "skipped": skipped,
        "rows": rows,
        "averages": averages,
        "outputs": {"csv": "results.csv", "jsonl": RESULTS_JSONL, "contact_sheet": sheet.name, "images": "images/"},
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    from ..image_io import write_text_whole
    write_text_whole(out / "results.json", json.dumps(report, indent=2, default=str))
    text = render_report(report)
    report["table"] = text
    if print_table:
        print(text)
    return report


def _write_csv(path: Path, rows: list[dict[str, Any]], averages: dict[str, dict[str, Any]], columns: list[str]) -> None:
    from ..image_io import write_whole

    write_whole(path, lambda tmp: _write_csv_rows(tmp, rows, averages, columns))


def _write_csv_rows(path: Path, rows: list[dict[str, Any]], averages: dict[str, dict[str, Any]],
                    columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c) for c in columns})
        for m, avg in averages.items():
            w.writerow({"method": m, "image": "(mean)", "prompt": f"({avg['pairs']} pairs)",
                        **{c: avg.get(c) for c in columns[3:]}})


def render_report(report: dict[str, Any]) -> str:
    """The on-screen table: per-pair rows, the means per method, the scales and what was skipped."""
    cols = report["columns"]
    short = {"image": 16, "prompt": 28}
    rows = [dict(r) for r in report["rows"]]
    lines = [f"StyleMamba evaluation: {len(report['content'])} image(s) x {len(report['prompts'])} prompt(s), "
             f"{report['resolution']} px, {report['device']}", "", format_table(rows, cols, short), ""]
    means = [{"method": m, "image": "(mean)", "prompt": f"({a['pairs']} pairs)", **a}
             for m, a in report["averages"].items()]
    lines += ["Means (train_s: StyleMamba per style, CLIPstyler per image):", format_table(means, cols, short), ""]
    lines.append("Scales:")
    lines += [f"  {c}: {report['scales'][c]}" for c in cols[3:] if c in report["scales"]]
    for m in report["methods"]:
        used = report["models"].get(m, {}).get("used_for_training_column") or []
        if used:
            lines.append(f"  {m} was trained with the model of {', '.join(used)}; other style columns are held-out models")
    if report["skipped"]:
        lines.append("Skipped:")
        lines += [f"  {s['what']}: {s['why']}" for s in report["skipped"]]
    return "\n".join(lines)


def _run_stylemamba(session: _Session, todo, prompts, key, vae_src, styles_dir, train_cfg, train_files,
                    train_text_model, vgg_net, lpips_mod) -> dict[str, Any]:
    """Train (or load) one style per prompt, then stylise and measure every pending pair."""
    from tqdm import tqdm

    from ..image_io import load_image
    from ..style_file import load_style, read_style_metadata, save_style
    from ..style_model import StyleModel
    from ..stylize import stylize
    from ..train import train_style
    from ..vae import load_vae

    if vae_src is None:
        raise ValueError("StyleMamba needs the SD VAE: pass --vae (HF id, diffusers folder or .safetensors)")
    dev, bar_kw = session.device, session.bar_kw
    vae = load_vae(vae_src, device=dev)
    library: dict[str, Path] = {}
    if styles_dir:
        folder = Path(styles_dir)
        for f in sorted(folder.glob("*.safetensors")):
            try:
                meta = read_style_metadata(f)
            except ValueError as exc:  # said, not silent: a damaged style's prompt is trained again instead
                session.skipped.append({"what": f"{f.name} in --styles", "why": f"not read ({exc})"})
                continue
            ps = meta.get("prompts") or []
            if len(ps) == 1 and ps[0] not in library:
                library[ps[0]] = f
    info: dict[str, Any] = {"styles": {}}
    cache_dir = session.out / "styles"
    pending_prompts = [p for p in prompts if any(k[2] == p for k in todo)]
    train_images = None
    for prompt in tqdm(pending_prompts, desc="StyleMamba styles", unit="style", **bar_kw):
        cached = cache_dir / f"{prompt_stem(prompt)}-{key}.safetensors"
        if prompt in library:
            style = load_style(library[prompt])
            source, train_s = str(library[prompt]), style.metadata.get("train_seconds")
            train_s_from = "style metadata"
        elif cached.is_file():
            style = load_style(cached)
            source, train_s = str(cached), style.metadata.get("train_seconds")
            train_s_from = "style metadata (trained earlier in this output folder)"
        else:
            if not train_text_model:
                raise ValueError(f"no style for prompt {prompt!r} in --styles and no --train-text-model to train one")
            text = session.text_model(train_text_model)
            use_lpips = lpips_mod if train_cfg.loss.lpips > 0 else None
            if train_images is None:
                train_images = [load_image(f) for f in train_files]
                if dev.type == "cuda":  # one untimed step first: CUDA/cuDNN initialisation is not training time
                    one_step = dataclasses.replace(train_cfg, epochs=1, steps_per_epoch=1)
                    train_style(vae, text, train_images, [prompt], one_step, vgg=vgg_net, lpips=use_lpips, device=dev)
            total = train_cfg.epochs * train_cfg.steps_per_epoch
            bar = tqdm(total=total, desc=f"training '{prompt[:30]}'", unit="step", leave=False, **bar_kw)
            try:  # closed on an error too (out of memory, Ctrl-C): the bar was drawn again below the message
                result = train_style(vae, text, train_images, [prompt], train_cfg, vgg=vgg_net, lpips=use_lpips,
                                     device=dev, on_step=(lambda i: bar.update(1)) if not bar.disable else None)
            finally:
                bar.close()
            style = result.style
            save_style(style, cached)
            source, train_s, train_s_from = str(cached), result.seconds, "measured"
        model = StyleModel.from_styles(vae, [style])
        params = M.count_parameters(model.fusion) + M.count_parameters(model.decoder)
        info["styles"][prompt] = {"file": source, "train_seconds_from": train_s_from,
                                  "fusion": style.fusion_config.get("kind"), "text_model": style.metadata.get("text_model"),
                                  "params_fusion": M.count_parameters(model.fusion),
                                  "params_decoder": M.count_parameters(model.decoder)}
        if dev.type == "cuda":  # warm-up (kernel selection) outside the timed calls
            stylize(session.content_image(todo[0][1]), vae, model)
        for _, name, p in [k for k in todo if k[2] == prompt]:
            x = session.content_image(name)
            _sync(dev)
            t0 = time.perf_counter()
            y = stylize(x, vae, model)
            _sync(dev)
            session.finish_pair("stylemamba", name, p, x, y, train_s=float(train_s) if train_s is not None else None,
                                infer_s=time.perf_counter() - t0, params=params, style=source, config_key=key)
        del model
    if library:
        unused = sorted(set(library) - set(prompts))
        if unused:
            session.skipped.append({"what": f"{len(unused)} style(s) in --styles", "why": "their prompts are not in --prompts",
                            "prompts": unused})
    return info


def _run_clipstyler(session: _Session, todo, key, cfg, text, vgg_net) -> None:
    """One CLIPstyler optimisation per pending pair, timed, then measured."""
    from tqdm import tqdm

    from .baselines.clipstyler import ClipStylerRun

    dev, bar_kw = session.device, session.bar_kw
    if dev.type == "cuda":  # one untimed step first: CUDA/cuDNN initialisation is not optimisation time
        ClipStylerRun(session.content_image(todo[0][1]), todo[0][2], text, vgg_net, cfg, device=dev).step(0)
    for _, name, prompt in tqdm(todo, desc="CLIPstyler", unit="pair", **bar_kw):
        x = session.content_image(name)
        run = ClipStylerRun(x, prompt, text, vgg_net, cfg, device=dev)
        bar = tqdm(total=cfg.steps, desc=f"CLIPstyler '{prompt[:24]}' on {name[:16]}", unit="step", leave=False, **bar_kw)
        _sync(dev)
        t0 = time.perf_counter()
        for i in range(cfg.steps):  # no per-step host sync: the bar only counts launched steps
            run.step(i)
            bar.update(1)
        _sync(dev)
        seconds = time.perf_counter() - t0
        bar.close()
        session.finish_pair("clipstyler", name, prompt, x, run.output(), train_s=seconds, infer_s=seconds,
                            params=M.count_parameters(run.unet), config_key=key)
        del run


# ---------------------------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> None:
    """Add the ``eval`` sub-command to ``python -m stylemamba``."""
    from ..encoders import DEFAULT_SIGLIP
    from ..vae import DEFAULT_VAE

    p = subparsers.add_parser(
        "eval", help="the paper's metrics (style score, SSIM, VGG, LPIPS, aesthetic, timing) for StyleMamba and CLIPstyler",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    g = p.add_argument_group("what to evaluate")
    g.add_argument("--content", nargs="+", required=True, help="content image file(s) or folder(s)")
    g.add_argument("--prompts", required=True, help="text file: one style prompt per line ('#' lines ignored)")
    g.add_argument("--method", default="stylemamba", choices=["stylemamba", "clipstyler", "both"])
    g.add_argument("--resolution", type=int, help="evaluate at this square size (default: the recipe's, 512)")
    g = p.add_argument_group("StyleMamba styles")
    g.add_argument("--styles", help="folder of trained styles (.safetensors), matched to prompts by their metadata; "
                                    "prompts without one are trained with the recipe")
    g.add_argument("--config", help="JSON file with TrainConfig fields (the recipe; default: the paper's)")
    g.add_argument("--train-content", nargs="+", help="images to train the styles on (default: the --content images)")
    g.add_argument("--train-text-model", default=DEFAULT_SIGLIP, help="SigLIP or CLIP for training (Table 4)")
    g.add_argument("--epochs", type=int, help="override the recipe's epochs")
    g.add_argument("--seed", type=int, help="override the recipe's seed")
    g.add_argument("--fusion", choices=["mamba", "cross_attention"], help="fusion module (Table 3)")
    g.add_argument("--no-md", action="store_true", help="train without the masked directional loss (Table 6)")
    g.add_argument("--no-so", action="store_true", help="train without the second-order loss (Table 6)")
    g.add_argument("--no-lpips", action="store_true", help="train without the LPIPS loss (Table 6)")
    g.add_argument("--no-patch", action="store_true", help="train without the patch directional loss (Table 6)")
    g.add_argument("--vae", default=DEFAULT_VAE, help="SD VAE: HF id, diffusers folder or .safetensors file")
    g = p.add_argument_group("CLIPstyler baseline")
    g.add_argument("--clipstyler-text-model",
                   help="CLIP for CLIPstyler (paper: openai/clip-vit-base-patch32; default: the first CLIP --eval-text-model)")
    g.add_argument("--clipstyler-config", help="JSON file with ClipStylerConfig fields")
    g.add_argument("--clipstyler-steps", type=int, help="override CLIPstyler's 200 iterations")
    g = p.add_argument_group("metrics")
    g.add_argument("--eval-text-model", action="append", default=[],
                   help="SigLIP/CLIP model for the style score; repeat for several (Table 4: give both)")
    g.add_argument("--vgg", help="VGG19 features .safetensors (VGG content loss; also used in training)")
    g.add_argument("--lpips-net", default="vgg", choices=["vgg", "alex"])
    g.add_argument("--lpips-backbone", help="ImageNet backbone .safetensors for LPIPS (metric and training loss)")
    g.add_argument("--aesthetic-head", help="LAION aesthetic head converted to .safetensors (see docs/EVAL.md)")
    g.add_argument("--aesthetic-clip", help="folder of openai/clip-vit-large-patch14 for the aesthetic score")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output folder (results.*, contact_sheet.png, images/, styles/)")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="skip pairs already in OUT/results.jsonl with the same configuration (default on; "
                        "--no-resume starts over)")
    g.add_argument("--thumb", type=int, default=192, help="contact sheet tile size in pixels")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval_cli)


def build_configs(args):
    """TrainConfig and ClipStylerConfig from the CLI arguments (JSON files, then overrides and ablations)."""
    from .baselines.clipstyler import ClipStylerConfig
    from ..cli import check_resolution_flag, flags_at_least, read_recipe
    from ..train import TrainConfig

    flags_at_least(args, ("--epochs", "--clipstyler-steps"), 1)  # named by flag, not as TrainConfig.epochs
    check_resolution_flag(args.resolution, "the --config recipe's, else 512")
    cfg = TrainConfig.from_dict(read_recipe(args.config)) if args.config else TrainConfig()
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.seed is not None:
        cfg.seed = args.seed
    if args.resolution is not None:
        cfg.resolution = args.resolution
    if args.fusion:
        cfg.fusion.kind = args.fusion
    if args.no_md:
        cfg.loss.md = 0.0
    if args.no_so:
        cfg.loss.so = 0.0
    if args.no_lpips:
        cfg.loss.lpips = 0.0
    if args.no_patch:
        cfg.loss.patch = 0.0
    cfg.__post_init__()
    cfg.fusion.__post_init__()
    cfg.loss.__post_init__()
    cs = ClipStylerConfig.from_dict(read_recipe(args.clipstyler_config, "--clipstyler-config")) \
        if args.clipstyler_config else ClipStylerConfig()
    if args.clipstyler_steps is not None:
        cs.steps = args.clipstyler_steps
    if args.seed is not None:
        cs.seed = args.seed
    cs.__post_init__()
    return cfg, cs


def run_eval_cli(args) -> int:
    cfg, cs = build_configs(args)
    run_evaluation(
        args.content, read_prompts(args.prompts), args.out, args.method, vae=args.vae, styles_dir=args.styles,
        train_config=cfg, train_content=args.train_content, train_text_model=args.train_text_model,
        eval_text_models=args.eval_text_model, clipstyler_config=cs, clipstyler_text_model=args.clipstyler_text_model,
        vgg=args.vgg, lpips_net=args.lpips_net, lpips_backbone=args.lpips_backbone, aesthetic_head=args.aesthetic_head,
        aesthetic_clip=args.aesthetic_clip, resolution=args.resolution, device=args.device, resume=args.resume,
        progress=not args.quiet, thumb=args.thumb)
    return 0
