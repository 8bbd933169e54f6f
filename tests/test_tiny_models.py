"""The tiny models load through the real library classes, in the formats users have."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from stylemamba.testing import tiny_models as tm

EXPECTED_KEYS = {"vae", "vae_ldm", "siglip", "clip", "vgg19", "manifest"}
VGG19_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]


def _photo_uint8(photo: torch.Tensor) -> np.ndarray:
    return (photo[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def test_build_returns_every_artefact_and_a_manifest(tiny_models):
    assert set(tiny_models) == EXPECTED_KEYS
    for key in ("vae", "siglip", "clip"):
        assert tiny_models[key].is_dir(), key
    for key in ("vae_ldm", "vgg19", "manifest"):
        assert tiny_models[key].is_file(), key
    manifest = json.loads(tiny_models["manifest"].read_text())
    assert manifest["seed"] == 0
    assert manifest["paths"] == {k: tiny_models[k].name for k in EXPECTED_KEYS - {"manifest"}}
    assert manifest["configs"]["vae"]["block_out_channels"] == [8, 8, 16, 16]
    assert manifest["configs"]["vgg19"]["widths"] == [4, 8, 16, 32, 32]


# ---------------------------------------------------------------------------------- VAE

def test_vae_folder_is_a_tiny_sd_like_autoencoder(tiny_models, photo):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_models["vae"]).eval()
    assert (tiny_models["vae"] / "diffusion_pytorch_model.safetensors").is_file()
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    assert vae.config.latent_channels == 4
    assert tiny_models["vae_ldm"].stat().st_size < 512 * 1024
    with torch.no_grad():
        latent = vae.encode(photo * 2 - 1).latent_dist.mode()
        image = vae.decode(latent).sample
    assert latent.shape == (1, 4, 8, 8)  # spatial factor 8, like the SD VAE
    assert image.shape == (1, 3, 64, 64)
    assert torch.isfinite(image).all()


def test_ldm_file_has_the_compvis_layout(tiny_models):
    sd = load_file(str(tiny_models["vae_ldm"]))
    with safe_open(str(tiny_models["vae_ldm"]), framework="pt") as f:
        meta = f.metadata()
    assert meta["norm_num_groups"] == "4"  # not readable from weights; real SD files use 32
    assert float(meta["scaling_factor"]) == pytest.approx(0.18215)
    assert "encoder.down.0.block.0.norm1.weight" in sd
    assert "encoder.down.0.downsample.conv.weight" in sd
    assert "encoder.down.3.downsample.conv.weight" not in sd  # the last level keeps its size
    assert "encoder.mid.block_2.conv2.weight" in sd
    assert "encoder.norm_out.weight" in sd and "decoder.norm_out.weight" in sd
    # decoder levels are numbered by resolution: up.0 is the full-size level, without upsampler
    assert "decoder.up.0.upsample.conv.weight" not in sd
    assert "decoder.up.3.upsample.conv.weight" in sd
    assert sd["decoder.up.3.block.0.conv1.weight"].shape == (16, 16, 3, 3)
    # layers_per_block + 1 resnets per decoder level, layers_per_block per encoder level
    assert sd["decoder.up.0.block.1.conv1.weight"].shape == (8, 8, 3, 3)
    assert "decoder.up.0.block.2.conv1.weight" not in sd
    assert "encoder.down.0.block.1.conv1.weight" not in sd
    assert "quant_conv.weight" in sd and "post_quant_conv.weight" in sd
    for name in ("q", "k", "v", "proj_out"):  # LDM attention is made of 1x1 convolutions
        assert sd[f"encoder.mid.attn_1.{name}.weight"].shape == (16, 16, 1, 1)
        assert sd[f"decoder.mid.attn_1.{name}.weight"].shape == (16, 16, 1, 1)
    assert not any("up_blocks" in k or "down_blocks" in k or "to_q" in k for k in sd)


def test_ldm_file_round_trips_through_diffusers_own_converter(tiny_models):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae = AutoencoderKL.from_pretrained(tiny_models["vae"])
    original = vae.state_dict()
    ldm = load_file(str(tiny_models["vae_ldm"]))
    converted = convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    assert set(converted) == set(original)
    mismatched = [k for k in original if not torch.equal(converted[k], original[k])]
    assert mismatched == []
    # the decoder's first level in execution order is LDM's last level
    assert torch.equal(ldm["decoder.up.3.block.0.conv1.weight"], original["decoder.up_blocks.0.resnets.0.conv1.weight"])


def test_ldm_file_loads_with_diffusers_single_file_loader(tiny_models, photo):
    from diffusers import AutoencoderKL

    ref = AutoencoderKL.from_pretrained(tiny_models["vae"]).eval()
    single = AutoencoderKL.from_single_file(str(tiny_models["vae_ldm"]), config=str(tiny_models["vae"])).eval()
    with torch.no_grad():
        a = ref.encode(photo * 2 - 1).latent_dist.mode()
        b = single.encode(photo * 2 - 1).latent_dist.mode()
    assert torch.equal(a, b)


def test_vae_weights_depend_only_on_the_seed():
    rng_before = torch.get_rng_state()
    a = tm._make_vae(tm.tiny_vae_config(), seed=0).state_dict()
    b = tm._make_vae(tm.tiny_vae_config(), seed=0).state_dict()
    c = tm._make_vae(tm.tiny_vae_config(), seed=1).state_dict()
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.conv_in.weight"], c["encoder.conv_in.weight"])
    # norms are perturbed, so a mapping that swaps two of them would break the round trip
    assert not torch.equal(a["encoder.mid_block.resnets.0.norm1.weight"], a["encoder.mid_block.resnets.1.norm1.weight"])


def test_mapping_round_trips_with_two_resnets_per_level_and_32_groups():
    """The full SD VAE has 2 resnets per encoder level (3 per decoder level) and 32 norm groups."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    cfg = dict(tm.tiny_vae_config(), block_out_channels=(32, 32, 64, 64), layers_per_block=2, norm_num_groups=32)
    vae = tm._make_vae(cfg, seed=3)
    ldm = tm.diffusers_vae_to_ldm(vae.state_dict(), num_levels=4)
    assert "encoder.down.1.block.1.conv2.weight" in ldm and "decoder.up.2.block.2.conv2.weight" in ldm
    # where the width changes a resnet needs a 1x1 shortcut (diffusers: conv_shortcut)
    assert "encoder.down.2.block.0.nin_shortcut.weight" in ldm  # 32 -> 64
    assert "decoder.up.1.block.0.nin_shortcut.weight" in ldm  # 64 -> 32
    back = convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    original = vae.state_dict()
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_mapping_refuses_unknown_keys():
    with pytest.raises(KeyError):
        tm.diffusers_vae_to_ldm({"encoder.mystery.weight": torch.zeros(1)}, num_levels=4)


# ---------------------------------------------------------------------------------- SigLIP

def test_siglip_folder_loads_like_a_hub_snapshot(tiny_models, photo):
    from transformers import AutoImageProcessor, AutoTokenizer, SiglipModel

    folder = tiny_models["siglip"]
    for name in ("config.json", "model.safetensors", "spiece.model", "tokenizer_config.json",
                 "preprocessor_config.json"):
        assert (folder / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(folder)
    model = SiglipModel.from_pretrained(folder).eval()
    assert type(tok).__name__ == "SiglipTokenizer"
    vocab = model.config.text_config.vocab_size
    assert tok.vocab_size == vocab
    assert 200 <= vocab <= 500
    for special in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id):
        assert special is not None and 0 <= special < vocab

    prompts = ["a cat in the style of Van Gogh, thick brush strokes", "zebra quantum xylophone"]
    enc = tok(prompts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    ids = enc["input_ids"]
    assert ids.shape == (2, 64)
    assert int(ids.max()) < vocab
    assert ids[0, -1] == tok.pad_token_id  # padded to the right up to 64
    assert tok.eos_token_id in ids[0].tolist()
    assert tok.decode(tok("a cat in the style of van gogh")["input_ids"], skip_special_tokens=True) \
        == "a cat in the style of van gogh"

    processor = AutoImageProcessor.from_pretrained(folder)
    pixels = processor(images=[_photo_uint8(photo)], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
    assert out.text_embeds.shape == (2, 32)
    assert out.image_embeds.shape == (1, 32)
    assert out.logits_per_image.shape == (1, 2)
    assert not torch.allclose(out.text_embeds[0], out.text_embeds[1])


# ---------------------------------------------------------------------------------- CLIP

def test_clip_folder_loads_like_a_hub_snapshot(tiny_models, photo):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    folder = tiny_models["clip"]
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json",
                 "preprocessor_config.json"):
        assert (folder / name).is_file(), name
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert "<|startoftext|>" in vocab and "<|endoftext|>" in vocab
    assert (folder / "merges.txt").read_text(encoding="utf-8").startswith("#version:")

    tok = AutoTokenizer.from_pretrained(folder)
    model = CLIPModel.from_pretrained(folder).eval()
    assert type(tok).__name__.startswith("CLIPTokenizer")
    assert len(tok) == model.config.text_config.vocab_size == len(vocab)
    assert tok.bos_token_id == vocab["<|startoftext|>"]
    assert tok.eos_token_id == vocab["<|endoftext|>"] == model.config.text_config.eos_token_id

    prompts = ["a cat in the style of Van Gogh", "zebra quantum xylophone!"]
    enc = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids = enc["input_ids"]
    assert ids.shape == (2, 77)
    assert (ids[:, 0] == tok.bos_token_id).all()
    assert tok.eos_token_id in ids[1].tolist()
    # byte-level BPE: even words never seen in training are spelled, never unknown
    n_real = int(enc["attention_mask"][1].sum())
    assert tok.unk_token_id not in ids[1, 1:n_real - 1].tolist()
    # trained merges make whole words of the corpus single tokens
    assert tok.tokenize("style") == ["style</w>"]

    processor = AutoImageProcessor.from_pretrained(folder)
    pixels = processor(images=[_photo_uint8(photo)], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=enc["attention_mask"], pixel_values=pixels)
    assert out.text_embeds.shape == (2, 32)
    assert out.image_embeds.shape == (1, 32)
    assert not torch.allclose(out.text_embeds[0], out.text_embeds[1])


def test_clip_bpe_trainer_is_deterministic_and_merges_frequent_pairs():
    lines = ["low lower lowest", "low low slow"]
    vocab_a, merges_a = tm.train_clip_bpe(lines, num_merges=5)
    vocab_b, merges_b = tm.train_clip_bpe(lines, num_merges=5)
    assert (vocab_a, merges_a) == (vocab_b, merges_b)
    assert merges_a[0] == ("l", "o")  # "lo" occurs in all six words
    assert list(vocab_a)[-2:] == ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab_a) == 512 + len(merges_a) + 2


# ---------------------------------------------------------------------------------- VGG

def test_tiny_vgg_has_torchvision_vgg19_layout(tiny_models, photo):
    from torchvision.models.vgg import make_layers

    path = tiny_models["vgg19"]
    sd = load_file(str(path))
    assert tm.vgg19_conv_indices() == VGG19_CONV_INDICES
    assert set(sd) == {f"features.{i}.{p}" for i in VGG19_CONV_INDICES for p in ("weight", "bias")}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["widths"] == "4,8,16,32,32"
    widths = [int(w) for w in meta["widths"].split(",")]
    assert sd["features.0.weight"].shape == (4, 3, 3, 3)
    assert sd["features.34.weight"].shape == (32, 32, 3, 3)

    # torchvision's own VGG builder, fed the recorded widths, accepts the file strictly
    cfg = []
    for n, w in zip(tm.VGG19_CONVS_PER_STAGE, widths):
        cfg += [w] * n + ["M"]
    features = make_layers(cfg)
    features.load_state_dict({k[len("features."):]: v for k, v in sd.items()}, strict=True)
    with torch.no_grad():
        out = features(photo)
    assert out.shape == (1, 32, 2, 2)


# ---------------------------------------------------------------------------------- CLI

@pytest.mark.slow
def test_cli_builds_everything_and_prints_paths(tmp_path, capsys, tiny_models):
    assert tm.main([str(tmp_path / "models"), "--seed", "1"]) == 0
    printed = dict(line.split("\t") for line in capsys.readouterr().out.strip().splitlines())
    assert set(printed) == EXPECTED_KEYS
    a = load_file(str(tiny_models["vae_ldm"]))
    b = load_file(printed["vae_ldm"])
    assert set(a) == set(b)
    assert not torch.equal(a["encoder.conv_in.weight"], b["encoder.conv_in.weight"])  # other seed


def test_the_top_seed_the_cli_accepts_builds_and_in_range_seeds_keep_their_weights(tmp_path):
    """tiny-models --seed 2**64 - 1 passed the range check, then the text models' seed + 1 overflowed ('Overflow when
    unpacking long long') with vae/ already written. Seeds that built before build the same weights."""
    top = 2**64 - 1
    paths = tm.build_tiny_models(tmp_path / "top", seed=top)
    assert json.loads(Path(paths["manifest"]).read_text())["seed"] == top
    with tm._seeded(top + 3):  # torch's reading of the seed: modulo 2**64, as for a negative one
        wrapped = torch.rand(4)
    with tm._seeded(2):
        assert torch.equal(wrapped, torch.rand(4))
    with tm._seeded(-1):
        minus_one = torch.rand(4)
    torch.manual_seed(-1)
    assert torch.equal(minus_one, torch.rand(4))
