#!/usr/bin/env python3
"""Models dir, input photos and the patched workflow for running train_and_stylize.json in a real ComfyUI server.

    python comfy_gpu_models.py MODELS_DIR INPUT_DIR WORKFLOW_OUT [--tiny]

Random weights, real architectures (no weights exist on the GPU machine, see ENVIRONMENT.md), each file read back
by the loader a user's install uses:
* vae/sd-vae-ft-mse-random.safetensors: the full-size SD VAE in the LDM layout ComfyUI's VAELoader accepts
  (full size in --tiny too: ComfyUI refuses smaller VAEs);
* siglip/siglip-base-patch16-224/: a SigLIP folder as a hub snapshot holds it (config.json, model.safetensors,
  SiglipTokenizer with a sentencepiece model trained offline on our style corpus, preprocessor_config.json);
  base-patch16-224 sizes, or a tiny SigLIP under the same name with --tiny. The shipped workflow's hf_id
  (google/siglip-base-patch16-224) then finds it already "downloaded" and never goes online;
* perceptual/vgg19_features.safetensors, vgg16_features.safetensors: torchvision VGG19/VGG16 features (VGG loss,
  LPIPS backbone);
* INPUT_DIR/astronaut.png (512 px, 128 px with --tiny) and cat.png (a second photo to re-stylise).
WORKFLOW_OUT: workflows/train_and_stylize.json (UI format) with its recipe kept (paper defaults) and only the VAE
and photo names pointed at these files (comfy_gpu_run.py --tiny shrinks the recipe by input name).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

VAE_FILE = "sd-vae-ft-mse-random.safetensors"
SIGLIP_DIR = "siglip-base-patch16-224"
PHOTO, PHOTO2 = "astronaut.png", "cat.png"


def say(msg: str) -> None:
    print(f"[models] {msg}", flush=True)


def build_siglip(folder: Path, tiny: bool) -> None:
    import sentencepiece as spm
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTokenizer

    from stylemamba.testing.tiny_models import style_corpus

    folder.mkdir(parents=True, exist_ok=True)
    max_len = 64
    with tempfile.TemporaryDirectory() as tmp:  # SigLIP's special ids: pad 0, eos 1, unk 2, no bos
        spm.SentencePieceTrainer.train(sentence_iterator=iter([s.lower() for s in style_corpus()]),
                                       model_prefix=f"{tmp}/spiece", vocab_size=320, model_type="unigram",
                                       character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                       pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", num_threads=1,
                                       minloglevel=2)
        tok = SiglipTokenizer(vocab_file=f"{tmp}/spiece.model", model_max_length=max_len)
        tok.save_pretrained(str(folder))
    if tiny:
        tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
        size, patch = 32, 8
    else:  # google/siglip-base-patch16-224
        tower = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
        size, patch = 224, 16
    text = {**tower, "vocab_size": 32000, "max_position_embeddings": max_len, "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id, "bos_token_id": None}
    torch.manual_seed(1)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config={**tower, "image_size": size,
                                                                       "patch_size": patch})).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    SiglipImageProcessor(size={"height": size, "width": size}).save_pretrained(str(folder))
    del model


def build_vgg(folder: Path) -> None:
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    for arch, name in (("vgg19", "vgg19_features.safetensors"), ("vgg16", "vgg16_features.safetensors")):
        net = getattr(torchvision.models, arch)(weights=None)
        save_file({f"features.{k}": v.contiguous() for k, v in net.features.state_dict().items()}, str(folder / name))


def build_photos(folder: Path, side: int, tiny: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import skimage.data
        astro, cat = skimage.data.astronaut(), skimage.data.chelsea()  # 512x512, 451x300
    except ImportError:
        if not tiny:
            raise
        say("scikit-image missing (rehearsal venv): synthetic photos instead of astronaut/chelsea")
        y, x = np.mgrid[0:300, 0:451] / 300.0
        cat = (np.stack([np.sin(9 * x) * 0.5 + 0.5, y, np.cos(7 * y * x) * 0.5 + 0.5], -1) * 255).astype(np.uint8)
        astro = cat[:, :300]
    Image.fromarray(astro).resize((side, side), Image.LANCZOS).save(folder / PHOTO)
    cat = Image.fromarray(cat)
    cat.resize((side * cat.width // cat.height, side), Image.LANCZOS).save(folder / PHOTO2)


def check_loaders(models: Path) -> None:
    """Read every file back through the pack's own loaders (as the nodes will), so a bad build fails here."""
    from stylemamba.encoders import load_text_image_encoder
    from stylemamba.perceptual import VGGFeatures

    enc = load_text_image_encoder(models / "siglip" / SIGLIP_DIR)
    ids = enc.tokenizer(["van gogh's starry night"], return_tensors="pt")["input_ids"]
    VGGFeatures.from_safetensors(models / "perceptual" / "vgg19_features.safetensors")
    say(f"loaders OK: {type(enc.model).__name__} ({sum(p.numel() for p in enc.model.parameters()) / 1e6:.1f} M "
        f"parameters), {type(enc.tokenizer).__name__} ids {ids[0].tolist()[:8]}..., VGG19 features")


def patch_workflow(src: Path, dst: Path) -> None:
    wf = json.loads(src.read_text())
    by_type = {}
    for node in wf["nodes"]:
        by_type.setdefault(node["type"], []).append(node)

    def only(kind):
        nodes = by_type.get(kind, [])
        if len(nodes) != 1:
            raise SystemExit(f"{src}: expected one {kind} node, found {len(nodes)}; update comfy_gpu_models.py")
        return nodes[0]

    only("VAELoader")["widgets_values"][0] = VAE_FILE
    only("LoadImage")["widgets_values"][0] = PHOTO
    text = only("StyleMambaLoadTextModel")["widgets_values"]
    if text[0] != SIGLIP_DIR:
        raise SystemExit(f"{src}: the text model is '{text[0]}', this script builds '{SIGLIP_DIR}'")
    train = only("StyleMambaTrain")
    dst.write_text(json.dumps(wf, indent=1))
    say(f"workflow {dst}: VAE {VAE_FILE}, photo {PHOTO}, text model {text}, Train {train['widgets_values']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", type=Path)
    ap.add_argument("inputs", type=Path)
    ap.add_argument("workflow_out", type=Path)
    ap.add_argument("--tiny", action="store_true", help="tiny SigLIP and 128 px photos (CPU rehearsal)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    for sub in ("vae", "siglip", "perceptual", "stylemamba"):
        (args.models / sub).mkdir(parents=True, exist_ok=True)
    from stylemamba.testing.tiny_models import build_sd_vae_ldm_file

    build_sd_vae_ldm_file(args.models / "vae" / VAE_FILE, seed=0)
    say(f"SD VAE (full size, random, fp16, LDM layout) {time.perf_counter() - t0:.1f} s")
    build_siglip(args.models / "siglip" / SIGLIP_DIR, args.tiny)
    say(f"SigLIP {'tiny' if args.tiny else 'base-patch16-224'} {time.perf_counter() - t0:.1f} s")
    build_vgg(args.models / "perceptual")
    build_photos(args.inputs, 128 if args.tiny else 512, args.tiny)
    check_loaders(args.models)
    patch_workflow(REPO / "workflows" / "train_and_stylize.json", args.workflow_out)
    for p in sorted(args.models.rglob("*")):
        if p.is_file():
            say(f"  {p.relative_to(args.models)}  {p.stat().st_size / 2**20:.1f} MiB")
    say(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
