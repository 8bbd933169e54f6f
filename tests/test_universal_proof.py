"""The zero-shot claim, functionally: a universal model trained over six hue prompts moves HELD-OUT photos along
HELD-OUT prompts ("warm" between red and yellow, "cool" between cyan and blue), in one forward pass.

The known-meaning colour model (stylemamba/testing/known_models.py), the project's small VAE, the trainer's own
recipe (UniversalConfig defaults) at the proof's sizes, 160 steps (``python -m stylemamba.testing.universal_proof``
runs 480 and compares with per-prompt styles). Measured on 2 shared CPU cores (this suite's setup): warm cos +0.90,
hue error 17 deg, SSIM 0.56; cool cos +0.92, 4 deg, SSIM 0.66; bank prompts red/blue cos +0.95/+0.93. A model that
ignored the prompt would give cos near 0 and a hue anywhere.
"""
import logging

import pytest
import torch

from stylemamba.stylize import stylize
from stylemamba.testing import universal_proof as up
from stylemamba.testing.known_models import colour_model
from stylemamba.testing.proof import content_networks
from stylemamba.testing.small_vae import load_small_vae
from stylemamba.universal import style_from_universal, train_universal, universal_direction

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained():
    logging.getLogger("stylemamba").setLevel(logging.ERROR)
    cfg = up.UniversalProofConfig(universal_steps_per_epoch=8)  # 20 epochs x 8 steps of 6 pairs
    vae, model = load_small_vae(), colour_model()
    vgg, lpips = content_networks(cfg.seed)
    content = up.photos(up.TRAIN_PHOTOS, cfg.resolution)
    held = up.photos(up.HELD_OUT_PHOTOS, cfg.resolution)
    with torch.no_grad():
        base = vae.reconstruct(held)
    result = train_universal(vae, model, content, list(up.BANK), cfg.universal_recipe(), vgg=vgg, lpips=lpips)
    return vae, model, result.model, held, base


@pytest.mark.parametrize("prompt", up.HELD_OUT_PROMPTS + ("red", "blue"))
def test_universal_model_moves_held_out_photos_along_prompts_it_never_saw(trained, prompt):
    vae, model, universal, held, base = trained
    assert prompt not in up.BANK or prompt in ("red", "blue")
    style = style_from_universal(universal, universal_direction(universal, model, prompt=prompt))
    f = up.figures(model, prompt, stylize(held, vae, style), base)
    assert f["cos"] > 0.5, f  # along the prompt's text direction (untrained: ~0)
    assert f["hue_error"] < 45.0, f  # the colour change points at the prompt's hue (bank neighbours are 60 deg apart)
    assert f["ssim"] > 0.4, f  # content kept: above the 0.28-0.34 of two unrelated photos (tests/test_proof.py)
