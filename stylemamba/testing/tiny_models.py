"""Tiny but real models, built from configs and saved in the formats users keep on disk.

Why: no model hub is reachable from our machines (tests, CI, CPU demos), yet the product must keep
its real loading code (Hugging Face folders, ComfyUI's single-file LDM VAEs, torchvision-layout
VGG weights). So we build the *same classes* with tiny widths and seeded random weights, save them
exactly as a user's files look, and let the real loaders read them:

* ``vae/``                  diffusers ``AutoencoderKL`` folder (config.json + safetensors), 4 levels
                            so the spatial factor is 8 like the SD VAE (64x64 image -> 8x8 latent).
* ``vae_ldm.safetensors``   the same weights in the original LDM/CompVis single-file layout
                            (what ComfyUI users keep in ``models/vae``); its safetensors
                            metadata carries ``norm_num_groups`` ("4") and ``scaling_factor``.
* ``siglip/``               ``SiglipModel`` + a real sentencepiece ``SiglipTokenizer`` +
                            ``SiglipImageProcessor`` (a google/siglip-* snapshot in miniature).
* ``clip/``                 ``CLIPModel`` + a real byte-level BPE ``CLIPTokenizer`` +
                            ``CLIPImageProcessor`` (an openai/clip-* snapshot in miniature).
* ``vgg19_tiny.safetensors`` torchvision ``vgg19().features`` key layout, widths / 16, the widths
                            recorded in the safetensors metadata.
* ``manifest.json``         the paths above and the configs used.

Weights are random: these models check plumbing, shapes and formats, never visual quality.
``sd_vae_config`` / ``build_sd_vae_ldm_file`` give the full-size SD VAE architecture (random
weights) for what needs real sizes: GPU benchmarks and ComfyUI, whose VAE loader only accepts
the full SD layout (it hard-codes 128 channels and 32 norm groups).

Run ``python -m stylemamba tiny-models OUT_DIR`` (or ``python -m stylemamba.testing.tiny_models``) to build them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Sequence, Tuple, Union

import torch

from ..vae_layout import ldm_key, to_ldm

PathLike = Union[str, Path]

SD_SCALING_FACTOR = 0.18215

# VGG19 "E" configuration: convolutions per stage, and the torchvision widths of each stage.
VGG19_CONVS_PER_STAGE = (2, 2, 4, 4, 4)
VGG19_WIDTHS = (64, 128, 256, 512, 512)
TINY_VGG_DIVISOR = 16

# Text lengths of the real models: SigLIP pads to 64 tokens, CLIP to 77.
SIGLIP_MAX_LENGTH = 64
CLIP_MAX_LENGTH = 77

# A small built-in corpus in the domain of the project (style prompts), so the trained tokenizers
# split our prompts into real sub-words rather than single characters.
_STYLES = (
    "oil painting", "watercolor", "ink wash", "pencil sketch", "charcoal drawing", "pastel",
    "ukiyo-e woodblock print", "pop art", "cubism", "impressionism", "expressionism",
    "pointillism", "art nouveau", "baroque", "renaissance fresco", "mosaic", "stained glass",
    "pixel art", "low poly", "cyberpunk neon", "vaporwave", "gothic", "surrealism",
    "abstract", "minimalist", "comic book", "anime", "chinese ink painting", "graffiti",
    "photorealistic", "fauvism", "art deco", "sepia photograph", "linocut", "gouache",
)
_ARTISTS = (
    "Van Gogh", "Monet", "Picasso", "Hokusai", "Klimt", "Munch", "Matisse", "Kandinsky",
    "Rembrandt", "Vermeer", "Turner", "Dali", "Magritte", "Mondrian", "Seurat", "Cezanne",
    "Warhol", "Basquiat", "Hopper", "Frida Kahlo",
)
_SUBJECTS = (
    "a portrait", "a landscape", "a city street at night", "a cat", "a bowl of fruit",
    "the sea", "a mountain lake", "a forest in autumn", "a starry night", "a garden with flowers",
    "an astronaut", "a harbour with boats", "a snowy village", "a desert at sunset",
)
_TEXTURES = (
    "thick brush strokes", "swirling patterns", "vivid colors", "muted earth tones",
    "golden light", "soft pastel colors", "bold black outlines", "flat shapes", "heavy texture",
    "dreamy atmosphere", "high contrast", "geometric forms", "delicate lines", "glowing neon",
)

_DESCRIPTIONS = (
    "Impressionist painters captured fleeting light with quick, broken touches of pure color.",
    "Cubist works break objects into facets and show several viewpoints at once.",
    "Japanese woodblock prints use flat areas of color, crisp contours and elegant waves.",
    "Expressionist canvases distort figures to convey anxiety, emotion and inner turmoil.",
    "Watercolor washes bleed softly into damp paper, leaving luminous transparent layers.",
    "Pointillist artists placed tiny dots side by side so the eye mixes the hues optically.",
    "Baroque paintings favour dramatic chiaroscuro, rich drapery and theatrical movement.",
    "Stained glass windows glow with saturated jewel tones framed by dark lead lines.",
    "Pop artists borrowed advertising imagery, halftone dots and bright primary colors.",
    "Charcoal sketches rely on smudged shadows, expressive hatching and paper grain.",
    "Mosaic pictures are assembled from small tiles of stone, glass or ceramic.",
    "Surrealist scenes combine unexpected objects in calm, dreamlike, uncanny spaces.",
    "Art nouveau ornaments follow organic curves, whiplash lines and floral motifs.",
    "Pixel art builds images from a coarse grid of squares and a limited palette.",
    "Chinese ink painting values empty space, rhythmic brushwork and misty mountains.",
    "Gothic illuminations shimmer with gold leaf, deep blue pigment and intricate borders.",
    "Fauvist painters used wild, unnatural colors straight from the tube.",
    "Renaissance frescoes show balanced compositions, linear perspective and serene faces.",
    "Graffiti murals mix spray paint drips, bubble letters and vibrant gradients.",
    "Minimalist design keeps only essential shapes, generous margins and quiet tones.",
    "Cyberpunk illustrations feature rainy streets, holograms, chrome and magenta reflections.",
    "Linocut prints carve bold negative shapes that print as heavy black silhouettes.",
    "Gouache paintings have velvety opaque colors and matte, even surfaces.",
    "Sepia photographs fade into warm brown tones with soft grain and vignetting.",
    "Anime frames use clean cel shading, big expressive eyes and dynamic poses.",
    "Romantic landscapes celebrate storms, ruins, sublime cliffs and glowing skies.",
    "Abstract expressionism values gesture: drips, splashes, scrapes and large fields.",
    "Medieval tapestries weave heraldic animals, hunting scenes and millefleur backgrounds.",
    "Botanical engravings describe leaves, petals and roots with precise cross hatching.",
    "Bauhaus posters combine sans serif typography, circles, triangles and primary hues.",
)


def style_corpus() -> List[str]:
    """Deterministic art-style sentences used to train the tiny tokenizers (about 800 lines)."""
    lines: List[str] = []
    for i, style in enumerate(_STYLES):
        for j, subject in enumerate(_SUBJECTS):
            texture = _TEXTURES[(i + j) % len(_TEXTURES)]
            lines.append(f"{subject} as {style}, {texture}")
            if (i + j) % 2 == 0:
                artist = _ARTISTS[(i * 3 + j) % len(_ARTISTS)]
                lines.append(f"{subject} in the style of {artist}, {style} with {texture}.")
    for artist in _ARTISTS:
        lines.append(f"a painting by {artist}")
        lines.append(f"{artist} style")
    lines.extend(_DESCRIPTIONS)
    return lines


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for a build step without disturbing the caller's global RNG state. The steps take seed + 1..3:
    modulo 2**64 (torch's own reading of a negative seed), a top seed the CLI accepts did not overflow."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed % 2**64)
        yield


# --------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------

def tiny_vae_config() -> dict:
    """diffusers ``AutoencoderKL`` kwargs of the tiny VAE: 4 levels (factor 8, like SD), 4 latents."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=SD_SCALING_FACTOR,
    )


def sd_vae_config() -> dict:
    """kwargs of the real SD 1.x/2.x VAE (stabilityai/sd-vae-ft-mse architecture)."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=32,
        sample_size=256,
        scaling_factor=SD_SCALING_FACTOR,
    )


def _make_vae(config: Mapping, seed: int):
    from diffusers import AutoencoderKL

    with _seeded(seed):
        vae = AutoencoderKL(**config)
        # GroupNorms start at (1, 0) everywhere; give every norm its own values so a key mapping
        # that swaps two norms (or two attention projections) cannot go unnoticed in round trips.
        with torch.no_grad():
            for module in vae.modules():
                if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and module.affine:
                    module.weight.add_(0.1 * torch.randn_like(module.weight))
                    module.bias.add_(0.1 * torch.randn_like(module.bias))
    return vae.eval()


def diffusers_vae_to_ldm(state_dict: Mapping[str, torch.Tensor], num_levels: int) -> Dict[str, torch.Tensor]:
    """Rename a diffusers ``AutoencoderKL`` state dict to the original LDM single-file layout with the
    library's :func:`stylemamba.vae_layout.ldm_key` (``num_levels`` = len(block_out_channels)); unknown
    keys raise KeyError."""
    renamed = {ldm_key(k, num_levels): v for k, v in state_dict.items()}
    if len(renamed) != len(state_dict):
        raise ValueError("two diffusers keys map to the same LDM key")
    return {k: v.detach().contiguous().clone() for k, v in to_ldm(renamed).items()}


def build_sd_vae_ldm_file(path: PathLike, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Write a full-size SD VAE (random weights) as an LDM single file, e.g. for ComfyUI's VAELoader."""
    from safetensors.torch import save_file

    cfg = sd_vae_config()
    vae = _make_vae(cfg, seed)
    ldm = diffusers_vae_to_ldm(vae.state_dict(), len(cfg["block_out_channels"]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype) for k, v in ldm.items()}, str(path), metadata={"format": "pt"})
    return path


def _build_vae(out_dir: Path, seed: int) -> Tuple[Path, Path, dict]:
    from safetensors.torch import save_file

    cfg = tiny_vae_config()
    vae = _make_vae(cfg, seed)
    folder = out_dir / "vae"
    vae.save_pretrained(str(folder), safe_serialization=True)
    ldm = diffusers_vae_to_ldm(vae.state_dict(), len(cfg["block_out_channels"]))
    ldm_path = out_dir / "vae_ldm.safetensors"
    # GroupNorm's group count cannot be read from the weights (SD VAEs use 32, this one 4), so
    # the file says it; loaders default to 32 / 0.18215 when a real file carries no metadata.
    meta = {"format": "pt", "norm_num_groups": str(cfg["norm_num_groups"]),
            "scaling_factor": str(cfg["scaling_factor"])}
    save_file(ldm, str(ldm_path), metadata=meta)
    return folder, ldm_path, {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


# --------------------------------------------------------------------------------------------
# SigLIP
# --------------------------------------------------------------------------------------------

def _tiny_transformer(**extra) -> dict:
    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    base.update(extra)
    return base


def _train_sentencepiece(model_path: Path, vocab_size: int) -> None:
    """Train a unigram sentencepiece model with SigLIP's special ids (pad 0, eos 1, unk 2, no bos)."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line.lower() for line in style_corpus()]),
        model_prefix=str(model_path.with_suffix("")),
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        num_threads=1,
        minloglevel=2,
    )


def _build_siglip(out_dir: Path, seed: int, vocab_size: int = 320) -> Tuple[Path, dict]:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTokenizer

    folder = out_dir / "siglip"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spm_path = Path(tmp) / "spiece.model"
        _train_sentencepiece(spm_path, vocab_size)
        tokenizer = SiglipTokenizer(vocab_file=str(spm_path), model_max_length=SIGLIP_MAX_LENGTH)
        tokenizer.save_pretrained(str(folder))
    vocab = len(tokenizer)  # sentencepiece pieces (+ added tokens, none here)
    text = _tiny_transformer(vocab_size=vocab, max_position_embeddings=SIGLIP_MAX_LENGTH,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             bos_token_id=None)
    vision = _tiny_transformer(image_size=32, patch_size=8)
    config = SiglipConfig(text_config=text, vision_config=vision)
    with _seeded(seed + 1):
        model = SiglipModel(config).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return folder, {"text_config": text, "vision_config": vision}


# --------------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------------

def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (every byte gets a visible stand-in)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def train_clip_bpe(lines: Sequence[str], num_merges: int) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """Train CLIP-style byte-level BPE: words end in ``</w>``; ids = bytes, bytes+</w>, merges, specials.

    The word splitting follows CLIP's pre-tokenizer closely enough for a small English corpus
    (lower-case letters runs, single digits, punctuation runs).
    """
    b2u = _bytes_to_unicode()
    words: Counter = Counter()
    for line in lines:
        for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", line.lower()):
            chars = [b2u[b] for b in w.encode("utf-8")]
            words[tuple(chars[:-1] + [chars[-1] + "</w>"])] += 1

    base = [b2u[b] for b in range(256)]
    vocab_list = base + [c + "</w>" for c in base]
    merges: List[Tuple[str, str]] = []
    seen = set(vocab_list)
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for word, freq in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += freq
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]  # ties: deterministic
        merges.append(best)
        joined = best[0] + best[1]
        if joined not in seen:
            seen.add(joined)
            vocab_list.append(joined)
        new_words: Counter = Counter()
        for word, freq in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += freq
        words = new_words
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def _build_clip(out_dir: Path, seed: int, num_merges: int = 200) -> Tuple[Path, dict]:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = out_dir / "clip"
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = train_clip_bpe(style_corpus(), num_merges)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
    # Loading from the two files is what both transformers 4.x and 5.x accept.
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=CLIP_MAX_LENGTH)
    tokenizer.save_pretrained(str(folder))
    # transformers 5 records how *this* load happened (is_local, local_files_only); a hub
    # snapshot has no such keys, and local_files_only would follow the folder around.
    tok_cfg_path = folder / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only"):
        tok_cfg.pop(key, None)
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    text = _tiny_transformer(vocab_size=len(vocab), max_position_embeddings=CLIP_MAX_LENGTH,
                             bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                             pad_token_id=vocab["<|endoftext|>"])
    vision = _tiny_transformer(image_size=32, patch_size=8)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    with _seeded(seed + 2):
        model = CLIPModel(config).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return folder, {"text_config": text, "vision_config": vision, "projection_dim": 32}


# --------------------------------------------------------------------------------------------
# VGG19 layout
# --------------------------------------------------------------------------------------------

def vgg19_conv_indices() -> List[int]:
    """Indices of the 16 convolutions inside torchvision's ``vgg19().features`` (0, 2, 5, ..., 34)."""
    indices, i = [], 0
    for n in VGG19_CONVS_PER_STAGE:
        for _ in range(n):
            indices.append(i)
            i += 2  # conv, relu
        i += 1  # max-pool
    return indices


def _build_vgg(out_dir: Path, seed: int) -> Tuple[Path, dict]:
    from safetensors.torch import save_file

    widths = [w // TINY_VGG_DIVISOR for w in VGG19_WIDTHS]
    tensors: Dict[str, torch.Tensor] = {}
    indices = iter(vgg19_conv_indices())
    c_in = 3
    with _seeded(seed + 3):
        for n, width in zip(VGG19_CONVS_PER_STAGE, widths):
            for _ in range(n):
                idx = next(indices)
                w = torch.empty(width, c_in, 3, 3)
                torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
                tensors[f"features.{idx}.weight"] = w
                tensors[f"features.{idx}.bias"] = 0.01 * torch.randn(width)
                c_in = width
    path = out_dir / "vgg19_tiny.safetensors"
    meta = {
        "format": "pt",
        "layout": "torchvision.models.vgg19().features",
        "widths": ",".join(str(w) for w in widths),
        "convs_per_stage": ",".join(str(n) for n in VGG19_CONVS_PER_STAGE),
    }
    save_file(tensors, str(path), metadata=meta)
    return path, {"widths": widths, "convs_per_stage": list(VGG19_CONVS_PER_STAGE)}


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

OUTPUT_NAMES = ("vae", "vae_ldm.safetensors", "siglip", "clip", "vgg19_tiny.safetensors", "manifest.json")


def existing_outputs(out_dir: PathLike) -> List[Path]:
    """What :func:`build_tiny_models` would write over in ``out_dir`` (there, a user's own ``vae/`` folder would get
    random weights), for front ends to refuse without an explicit flag. Nothing in an earlier build's folder (its
    manifest.json): tiny models replaced by tiny models lose nothing, and `tiny-models DIR` ran again as in 0.1.0."""
    out = Path(out_dir)
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        if isinstance(manifest, dict) and {"seed", "paths", "configs"} <= set(manifest):
            return []
    except (OSError, ValueError):  # none, or not ours
        pass
    return [out / name for name in OUTPUT_NAMES if (out / name).exists()]


def build_tiny_models(out_dir: PathLike, seed: int = 0) -> Dict[str, Path]:
    """Build every tiny model into ``out_dir`` and return their paths.

    Keys: ``vae`` (diffusers folder), ``vae_ldm`` (LDM single file), ``siglip`` (folder),
    ``clip`` (folder), ``vgg19`` (safetensors file), ``manifest`` (json). Same seed, same weights.
    """
    import diffusers
    import transformers

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    vae_dir, vae_ldm, vae_cfg = _build_vae(out, seed)
    siglip_dir, siglip_cfg = _build_siglip(out, seed)
    clip_dir, clip_cfg = _build_clip(out, seed)
    vgg_path, vgg_cfg = _build_vgg(out, seed)
    paths = {"vae": vae_dir, "vae_ldm": vae_ldm, "siglip": siglip_dir, "clip": clip_dir, "vgg19": vgg_path}
    manifest = {
        "seed": seed,
        "paths": {k: p.name for k, p in paths.items()},
        "configs": {"vae": vae_cfg, "siglip": siglip_cfg, "clip": clip_cfg, "vgg19": vgg_cfg},
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
    }
    manifest_path = out / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    paths["manifest"] = manifest_path
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="folder to write the tiny models into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sd-vae", action="store_true",
                        help="also write sd_vae_random_ldm.safetensors: the full-size SD VAE, random "
                             "weights, fp16, LDM layout (about 160 MB; ComfyUI's VAELoader accepts it)")
    args = parser.parse_args(argv)
    paths = build_tiny_models(args.out_dir, seed=args.seed)
    if args.sd_vae:
        paths["sd_vae_ldm"] = build_sd_vae_ldm_file(Path(args.out_dir) / "sd_vae_random_ldm.safetensors",
                                                    seed=args.seed)
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
