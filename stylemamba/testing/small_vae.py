"""A small SD-style VAE the project trains itself, so the proof and the demo start from a VAE that
actually reconstructs photos (the random-weight tiny VAE of ``tiny_models`` returns noise).

It is a diffusers ``AutoencoderKL`` of the SD layout (4 levels: 8x down-sampling) with 16 latent channels
(as SD3 / Flux VAEs) and narrow widths, trained on random crops of scikit-image's colour photos with flips
and channel permutations (so every hue is seen), L1 + image-gradient L1 + chroma L1 + a tiny KL. The photos the proof judges
styles on (``photos.HELD_OUT_PHOTOS``: chelsea, rocket, camera) are NOT in its training set, so
"held-out" means held out from every trained part.

Shipped, not trained on first use: ``stylemamba/testing/data/small_vae.safetensors`` (LDM single-file
layout, fp16, 2.0 MB, its group count and latent scaling in the safetensors metadata), because
training it took 26 minutes on a shared 2-core machine (4000 steps of 4 crops of 64 px, one thread),
which CI and a newcomer's first demo should not pay. ``python -m stylemamba.testing.small_vae
OUT.safetensors`` regenerates it (deterministic on one machine, torch version and thread count;
other CPUs give a close but not bit-identical file). Needs scikit-image.

Reconstruction PSNR of the shipped file at 256 px: held-out chelsea 20.5 dB, rocket 18.4, camera 19.5;
training photos astronaut 17.0, coffee 20.2 (blurry, colours and content recognisable).

What did not work (measured on the way): SD 1.x's 4 latent channels gave grey, blocky reconstructions
after 1250 steps (PSNR 12-18 dB); 16 channels with half of the crops from grey photos stayed grey after
1000 steps; colour photos only, without the chroma term, learned a single orange-teal chroma axis in
2000 steps (blue skies came out black).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger("stylemamba")

SMALL_VAE_PATH = Path(__file__).resolve().parent / "data" / "small_vae.safetensors"
# skimage.data photos shipped inside its wheel, minus the proof's held-out photos (chelsea, rocket, camera)
# (colour photos only: with the grey ones -- brick, grass, gravel, coins, moon, page, text, clock, cell -- half the
# crops had no colour and after 1000 steps the VAE still returned grey pictures)
VAE_TRAINING_PHOTOS = ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel",
                       "logo", "stereo_motorcycle")
SCALES = (96, 128, 192, 256)  # short side of the photo pyramids the crops come from


def small_vae_config() -> dict:
    """diffusers ``AutoencoderKL`` kwargs: SD's layout (factor 8), widths 16-64 (1 M parameters), and 16 latent
    channels as SD3 / Flux VAEs: with SD 1.x's 4 channels a network this small reconstructed grey, blocky photos
    after 1250 steps (PSNR 13-18 dB, no colour at all)."""
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16, 32, 64, 64), layers_per_block=1,
                act_fn="silu", latent_channels=16, norm_num_groups=8, sample_size=64)


def _skimage_photo(name: str) -> torch.Tensor:
    import numpy as np
    import skimage.data

    arr = getattr(skimage.data, name)()
    if isinstance(arr, tuple):  # stereo pairs: both views
        arr = arr[0]
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1)[None].float() / 255.0


def training_pyramid(names: Sequence[str] = VAE_TRAINING_PHOTOS) -> list[torch.Tensor]:
    """Each training photo at each short side of ``SCALES``: a list of (3,H,W) tensors."""
    out = []
    for name in names:
        img = _skimage_photo(name)
        h, w = img.shape[-2:]
        for short in SCALES:
            s = short / min(h, w)
            out.append(F.interpolate(img, size=(max(short, round(h * s)), max(short, round(w * s))), mode="bilinear",
                                     align_corners=False, antialias=True)[0].clamp(0, 1))
    return out


def _batch(pyramid: list[torch.Tensor], n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    perms = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
    out = []
    for _ in range(n):
        img = pyramid[int(torch.randint(len(pyramid), (1,), generator=gen))]
        top = int(torch.randint(img.shape[1] - size + 1, (1,), generator=gen))
        left = int(torch.randint(img.shape[2] - size + 1, (1,), generator=gen))
        crop = img[:, top:top + size, left:left + size]
        if float(torch.rand((), generator=gen)) < 0.5:
            crop = crop.flip(-1)
        if float(torch.rand((), generator=gen)) < 0.5:  # other hues: the styles push colours anywhere
            crop = crop[perms[int(torch.randint(6, (1,), generator=gen))]]
        out.append(crop)
    return torch.stack(out)


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def train_small_vae(out: str | Path = SMALL_VAE_PATH, steps: int = 4000, batch: int = 4, size: int = 64,
                    lr: float = 2e-3, seed: int = 0, log_every: int = 100, save_every: int = 0) -> dict:
    """Train the small VAE and write it as an LDM single-file ``.safetensors`` (fp16). Returns a report."""
    from diffusers import AutoencoderKL

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    pyramid = training_pyramid()
    vae = AutoencoderKL(**small_vae_config()).train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    warmup = max(1, steps // 20)  # linear warm-up, then cosine decay to 0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min((i + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(1.0, i / steps)))))
    history = []
    for step in range(steps):
        x = _batch(pyramid, batch, size, gen) * 2 - 1
        post = vae.encode(x).latent_dist
        y = vae.decode(post.mean).sample
        gx, gy = _gradients(y)
        tx, ty = _gradients(x)
        # chroma (each channel minus the channel mean) weighed again: without it the VAE learned one chroma axis
        # (orange-teal) in 2000 steps and turned blue skies black
        chroma = ((y - y.mean(1, keepdim=True)) - (x - x.mean(1, keepdim=True))).abs().mean()
        rec = (y - x).abs().mean() + 0.5 * ((gx - tx).abs().mean() + (gy - ty).abs().mean()) + 2.0 * chroma
        kl = post.kl().mean() / x[0].numel()
        loss = rec + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(rec.detach()))
        if log_every and (step + 1) % log_every == 0:
            log.info("small VAE step %d/%d: reconstruction %.4f (%.0f s)", step + 1, steps,
                     sum(history[-log_every:]) / log_every, time.perf_counter() - t0)
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            _save(vae, Path(out).with_suffix(f".step{step + 1}.safetensors"), steps, batch, size, lr, seed)
    report = _save(vae, Path(out), steps, batch, size, lr, seed)
    report.update(seconds=round(time.perf_counter() - t0, 1), first_loss=history[0],
                  last_loss=sum(history[-50:]) / min(50, len(history)))
    return report


def _save(vae, out: Path, steps: int, batch: int, size: int, lr: float, seed: int) -> dict:
    from safetensors.torch import save_file

    from .tiny_models import diffusers_vae_to_ldm

    vae.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # SD's convention: the latent scaling makes the training latents unit-variance
        lat = torch.cat([vae.encode(_batch(training_pyramid(), 16, size, gen) * 2 - 1).latent_dist.mean
                         for _ in range(4)])
        scaling = round(1.0 / float(lat.std()), 5)
    vae.train()
    state = diffusers_vae_to_ldm(vae.state_dict(), num_levels=4)
    meta = {"norm_num_groups": "8", "scaling_factor": str(scaling), "format": "stylemamba-small-vae",
            "recipe": json.dumps({"steps": steps, "batch": batch, "size": size, "lr": lr, "seed": seed,
                                  "photos": list(VAE_TRAINING_PHOTOS), "scales": list(SCALES)}),
            "torch": torch.__version__}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in state.items()}, str(out), metadata=meta)
    return {"path": str(out), "bytes": out.stat().st_size, "scaling_factor": scaling}


def load_small_vae(device: str | torch.device = "cpu"):
    """The shipped small VAE as an :class:`stylemamba.vae.SDVAE` (fp32)."""
    from ..vae import ModelFileError, load_vae

    if not SMALL_VAE_PATH.is_file():
        raise ModelFileError(f"the small VAE {SMALL_VAE_PATH} is missing from this installation; regenerate it with "
                             f"`python -m stylemamba.testing.small_vae {SMALL_VAE_PATH}` (needs scikit-image)")
    vae = load_vae(SMALL_VAE_PATH, device=device)
    vae.name = "stylemamba-small-vae"
    return vae


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stylemamba.testing.small_vae", description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", default=str(SMALL_VAE_PATH))
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=0, help="also write OUT.stepN.safetensors every N steps")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    torch.set_num_threads(1)  # deterministic, and fastest on a shared machine (2 threads thrash when cores are busy)
    print(json.dumps(train_small_vae(args.out, steps=args.steps, seed=args.seed, save_every=args.save_every), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
