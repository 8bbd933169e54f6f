"""Freeze a style file written by version 0.1.0 (commit c9d4e33) and its stylised pixels as test data.

Run ONCE at that commit (``python tools/make_v010_fixture.py tests/data/v0_1_0``); later versions must load
the file and reproduce the pixels (tests/test_released_contracts.py). Re-running it with newer code would
defeat its purpose: the files are the contract, not this script.
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import load_photo  # noqa: E402
from small import small_config  # noqa: E402

from stylemamba.encoders import load_text_image_encoder  # noqa: E402
from stylemamba.style_file import load_style, save_style  # noqa: E402
from stylemamba.stylize import stylize_images  # noqa: E402
from stylemamba.tiny_models import build_tiny_models  # noqa: E402
from stylemamba.train import train_style  # noqa: E402
from stylemamba.vae import load_vae  # noqa: E402


def main(out: Path) -> None:
    torch.set_num_threads(2)
    out.mkdir(parents=True, exist_ok=True)
    models = build_tiny_models(out / "_models", seed=0)
    vae_file = out / "vae_ldm.safetensors"
    vae_file.write_bytes(Path(models["vae_ldm"]).read_bytes())
    vae = load_vae(vae_file, device="cpu")
    text = load_text_image_encoder(models["siglip"], device="cpu")
    content = torch.cat([load_photo("astronaut", 64), load_photo("chelsea", 64)])
    result = train_style(vae, text, content, ["Van Gogh's starry night", "a pencil sketch"],
                         small_config(epochs=3), prompt_weights=[0.7, 0.3])
    save_style(result.style, out / "style_v0_1_0.safetensors")
    style = load_style(out / "style_v0_1_0.safetensors")
    x = load_photo("coffee", (40, 56))
    mask = torch.zeros(1, 40, 56)
    mask[:, :, :28] = 1
    expected = {
        "input": x.contiguous(),
        "mask": mask.contiguous(),
        "strength_1": stylize_images(x, vae, style).contiguous(),
        "strength_0_6": stylize_images(x, vae, style, strength=0.6).contiguous(),
        "masked": stylize_images(x, vae, style, mask=mask).contiguous(),
    }
    save_file(expected, str(out / "expected_pixels.safetensors"), metadata={"made_by": "stylemamba 0.1.0 (c9d4e33)"})
    for p in (out / "_models").rglob("*"):
        if p.is_file():
            p.unlink()
    for p in sorted((out / "_models").rglob("*"), reverse=True):
        p.rmdir()
    (out / "_models").rmdir()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
