"""``python -m stylemamba``: train a style, stylise images or video, inspect a style file, evaluate, benchmark."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger("stylemamba")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"],
                   help="precision (autocast): auto = bf16 on CUDA (fp16 on pre-Ampere GPUs), fp32 on CPU; "
                        "for train, default: the --config recipe's, else auto")
    p.add_argument("--vae", default="stabilityai/sd-vae-ft-mse",
                   help="SD VAE: Hugging Face id, diffusers folder, or single .safetensors file")


def amp_mode(args, default: str = "auto") -> str:
    return {"auto": "auto", "fp32": "off", "bf16": "bf16", "fp16": "fp16"}[args.dtype] if args.dtype else default


def load_perceptual(args, device):
    """VGG19 features (content loss) and LPIPS, or None with a warning when no weights are given."""
    from .perceptual import LPIPSLoss, VGGFeatures

    vgg = VGGFeatures.from_safetensors(args.vgg).to(device) if args.vgg else None
    lp = None
    if args.lpips == "auto" and not args.lpips_backbone:
        log.warning("LPIPS loss off: no --lpips-backbone given (an LPIPS with a random backbone would be wrong)")
    elif args.lpips != "off":
        net = "vgg" if args.lpips == "auto" else args.lpips
        lp = LPIPSLoss(net=net, backbone_path=args.lpips_backbone).to(device)
    return vgg, lp


def cmd_train(args) -> int:
    from tqdm import tqdm

    from .encoders import load_text_image_encoder
    from .image_io import list_images, load_image
    from .style_file import save_style
    from .train import TrainConfig, TrainingCancelled, train_style
    from .vae import load_vae

    device = pick_device(args.device)
    cfg = TrainConfig.from_dict(json.loads(Path(args.config).read_text())) if args.config else TrainConfig()
    for name in ("epochs", "steps_per_epoch", "lr", "resolution", "seed"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    cfg.amp = amp_mode(args, default=cfg.amp)
    if args.compile:
        cfg.compile = args.compile
    cfg.gradient_checkpointing = cfg.gradient_checkpointing or args.gradient_checkpointing
    cfg.__post_init__()
    files = [f for src in args.content for f in list_images(src)]
    content = [load_image(f) for f in files]
    vae = load_vae(args.vae, device=device)
    text = load_text_image_encoder(args.text_model, device=device)
    vgg, lp = load_perceptual(args, device)
    total = cfg.epochs * cfg.steps_per_epoch
    bar = tqdm(total=total, desc="training style", unit="step", disable=args.quiet)

    def on_step(info):
        bar.update(1)
        bar.set_postfix({k: f"{v:.3g}" for k, v in info.losses.items() if k in ("total", "dir", "vgg")})

    stop = {"asked": False}

    def on_sigint(signum, frame):  # first Ctrl-C: stop after the current step and keep what was trained
        if stop["asked"]:
            raise KeyboardInterrupt
        stop["asked"] = True
        print("\nstopping after this step (Ctrl-C again to abort)...", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    t0 = time.perf_counter()
    try:
        result = train_style(vae, text, content, args.prompt, cfg, prompt_weights=args.weights, vgg=vgg, lpips=lp,
                             device=device, on_step=on_step, should_stop=lambda: stop["asked"])
    except TrainingCancelled as cancelled:
        bar.close()
        if cancelled.partial is None:
            print("cancelled before the first step: no style written", file=sys.stderr)
            return 130
        out = Path(args.out)
        partial_path = out.with_name(out.stem + "-partial.safetensors")
        info = save_style(cancelled.partial.style, partial_path)
        print(f"cancelled after {cancelled.partial.steps} steps: partial style saved to {info['path']}",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    bar.close()
    if args.name:
        result.style.metadata["name"] = args.name
    info = save_style(result.style, args.out)
    print(json.dumps({"style": info["path"], "bytes": info["bytes"], "train_seconds": round(result.seconds, 3),
                      "wall_seconds": round(time.perf_counter() - t0, 3), "steps": result.steps,
                      "final_losses": result.history[-1] if result.history else {}}, indent=2))
    return 0


def cmd_stylize(args) -> int:
    from tqdm import tqdm

    from .image_io import VIDEO_SUFFIXES, list_images, load_image, load_mask, read_video, save_image, write_video
    from .style_file import load_style
    from .speed import prepare_for_inference
    from .stylize import MixedStyle, stylize
    from .vae import load_vae

    device = pick_device(args.device)
    vae = load_vae(args.vae, device=device)
    styles = [load_style(p) for p in args.style]
    mixer = prepare_for_inference(vae, MixedStyle(vae, styles, args.weights, args.strength), compile=args.compile)
    mask = load_mask(args.mask) if args.mask else None
    out = Path(args.output)
    src = Path(args.input)
    kw = dict(mask=mask, tile_size=args.tile_size, batch_size=args.batch_size, amp=amp_mode(args))
    if src.suffix.lower() in VIDEO_SUFFIXES:
        frames, fps = read_video(src, args.max_frames)
        bar = tqdm(total=len(frames), desc="stylising frames", unit="frame", disable=args.quiet)
        result = stylize(frames, vae, mixer, on_batch=lambda done, total: bar.update(done - bar.n), **kw)
        bar.close()
        path = write_video(result, out if out.suffix else out / (src.stem + "_styled.mp4"), fps)
        print(json.dumps({"video": str(path), "frames": len(frames)}))
        return 0
    files = list_images(src)
    written = []
    for f in tqdm(files, desc="stylising", unit="image", disable=args.quiet or len(files) == 1):
        image = load_image(f, keep_alpha=True)
        y = stylize(image, vae, mixer, **kw)
        target = out if (out.suffix and len(files) == 1) else out / (f.stem + "_styled.png")
        written.append(str(save_image(y, target)))
    print(json.dumps({"images": written}, indent=2))
    return 0


def cmd_info(args) -> int:
    from .style_file import describe_style

    info = describe_style(args.style)
    if not args.full:
        info.pop("recipe", None)
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_tiny_models(args) -> int:
    from .tiny_models import build_tiny_models

    paths = build_tiny_models(args.out, seed=args.seed)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def cmd_demo(args) -> int:
    """Train a style on two bundled photos and stylise three HELD-OUT ones. By default offline on CPU with models
    whose meaning is known (stylemamba.testing): the project's small VAE and a known-meaning image-text model, so
    the effect is real and explainable ("red" makes held-out photos redder, content kept). --vae / --text-model
    switch to an SD VAE and SigLIP/CLIP."""
    from .image_io import save_image
    from .metrics import ssim
    from .style_file import save_style
    from .stylize import stylize
    from .testing.photos import HELD_OUT_PHOTOS, STYLE_PHOTOS, original_photo, photos
    from .train import TrainConfig, train_style
    from .vae import load_vae

    out = Path(args.out)
    device = pick_device(args.device)
    known = args.text_model is None or args.text_model.startswith("known-")
    resolution = args.resolution or (128 if known else 512)
    prompt = args.prompt or ("red" if known else "Van Gogh's starry night")
    cfg = TrainConfig(resolution=resolution, epochs=args.epochs)
    if known:
        from .testing import known_model
        from .testing.proof import content_networks, named_property

        text = known_model(args.text_model or "combined", image_size=resolution // 2).to(device)
        cfg.loss.n_crops = 16
    else:
        from .encoders import load_text_image_encoder

        text = load_text_image_encoder(args.text_model, device=device)
    if args.vae is None:
        from .testing.small_vae import load_small_vae

        vae = load_small_vae(device)
    else:
        vae = load_vae(args.vae, device=device)
    if args.vgg or args.lpips_backbone or not known:
        vgg, lpips = load_perceptual(args, device)
    else:  # no pretrained VGG/LPIPS here: random backbones, as the functional check uses them
        vgg, lpips = (m.to(device) for m in content_networks())
    if known:
        cfg.fusion.width, cfg.fusion.depth = 64, 2  # CPU-sized fusion module, as the functional check
    vae_name = "the project's small VAE (stylemamba/testing/data/small_vae.safetensors)" if args.vae is None else args.vae
    print(f"demo: prompt {prompt!r}; VAE: {vae_name}; text-image model: {text.name}"
          + (" (known meaning: stylemamba.testing, see docs/KNOWN_MODELS.md)" if known else "")
          + f"; training on {', '.join(STYLE_PHOTOS)} at {resolution} px, {cfg.epochs} epochs", flush=True)
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
            figures[name][f"{prompt} property change"] = round(float(change[0]), 4)
    print(json.dumps({"style": info["path"], "style_bytes": info["bytes"], "train_seconds": round(result.seconds, 2),
                      "steps": result.steps, "held_out": figures, "stylized": written,
                      "compare": f"{out}/compare-*.png: input | untrained style (VAE reconstruction) | strength 0.5 | "
                                 "stylised"},
                     indent=2))
    return 0


def cmd_check(args) -> int:
    """The functional proof as a health check: train styles with known-meaning models, judge held-out photos."""
    from .testing.check import run_check

    return run_check(quick=args.quick, long=args.long, seed=args.seed, json_path=args.json, threads=args.threads)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stylemamba", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a style from text prompt(s) on content image(s)")
    add_common(p)
    p.add_argument("--prompt", action="append", required=True, help="style prompt; repeat to mix several")
    p.add_argument("--weights", type=float, nargs="+", help="one weight per --prompt (multiple-style transfer)")
    p.add_argument("--content", nargs="+", required=True, help="content image file(s) or folder(s)")
    p.add_argument("--text-model", default="google/siglip-base-patch16-224",
                   help="SigLIP or CLIP: Hugging Face id or local folder")
    p.add_argument("--vgg", help="VGG19 features .safetensors for the VGG content loss (see README: Models)")
    p.add_argument("--lpips", default="auto", choices=["auto", "vgg", "alex", "off"],
                   help="LPIPS backbone; auto = vgg when --lpips-backbone is given, else off")
    p.add_argument("--lpips-backbone", help=".safetensors backbone weights for LPIPS (see README: Models)")
    p.add_argument("--out", required=True, help="where to write the style (.safetensors)")
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
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("stylize", help="stylise an image, a folder of images or a video with trained style(s)")
    add_common(p)
    p.add_argument("--style", action="append", required=True, help="style file; repeat to mix several")
    p.add_argument("--weights", type=float, nargs="+", help="one weight per --style")
    p.add_argument("--strength", type=float, default=1.0, help="0 = VAE reconstruction, 1 = full style")
    p.add_argument("--input", required=True, help="image file, folder of images, or video file")
    p.add_argument("--output", required=True, help="output file (single image) or folder")
    p.add_argument("--mask", help="grayscale mask image: white = stylise, black = keep")
    p.add_argument("--tile-size", type=int, default=1024, help="run the VAE in tiles above this size (pixels)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-frames", type=int, help="video: stop after this many frames")
    p.add_argument("--compile", default="off", choices=["off", "default", "max-autotune-no-cudagraphs"],
                   help="torch.compile the VAE encoder and the style's decoder (GPU; ~20 s per image size, "
                        "then 3x faster: worth it for videos and folders of same-size images)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_stylize)

    p = sub.add_parser("info", help="what a style file holds")
    p.add_argument("style")
    p.add_argument("--full", action="store_true", help="include the full training recipe")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="train a style on two photos and stylise three held-out ones (offline, CPU: the "
                                    "project's small VAE and a known-meaning text-image model by default)")
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--prompt", help="style prompt (default: 'red' with the known-meaning models, whose vocabulary is "
                                    "listed in docs/KNOWN_MODELS.md; \"Van Gogh's starry night\" with SigLIP/CLIP)")
    p.add_argument("--device", default="auto")
    p.add_argument("--vae", help="SD VAE: Hugging Face id, folder or .safetensors (default: the project's small VAE)")
    p.add_argument("--text-model", help="SigLIP/CLIP folder or id, or known-colour / known-texture / known-combined "
                                        "(default: known-combined)")
    p.add_argument("--vgg", help="VGG19 features .safetensors")
    p.add_argument("--lpips", default="auto", choices=["auto", "vgg", "alex", "off"],
                   help="LPIPS backbone; auto = vgg when --lpips-backbone is given, else off")
    p.add_argument("--lpips-backbone", help=".safetensors backbone weights for LPIPS")
    p.add_argument("--resolution", type=int, help="training size (default 128 with the known-meaning models, else 512)")
    p.add_argument("--epochs", type=int, default=20)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("check", help="prove the method works: styles trained with image-text models of known meaning "
                                     "must move HELD-OUT photos along their prompts and keep content (table, exit 1 on "
                                     "failure; about a minute on CPU)")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="the main rows only, no loss-term ablations (~half the time)")
    speed.add_argument("--long", action="store_true", help="larger proof: 128 px, 64 crops, 40 epochs (several minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--json", help="also write every row and figure to this JSON file")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("tiny-models", help="build tiny random-weight models (for tests and CPU demos)")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny_models)

    for module_name in ("evaluate", "bench"):
        try:
            module = __import__(f"stylemamba.{module_name}", fromlist=["add_parser"])
        except ImportError:
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:  # OutOfMemory, MemoryError and torch's OOM (a RuntimeError)
        if not isinstance(exc, MemoryError) and "out of memory" not in str(exc):
            raise
        print(f"error: {exc}. Lower --resolution, --batch-size or --tile-size, or use --device cpu", file=sys.stderr)
        return 3
