"""TextDirection: prompts encoded once into the record training consumes as it is; mixing; clear errors."""
import pytest
import torch
import torch.nn.functional as F

from small import small_config
from stylemamba.direction import TextDirection
from stylemamba.encoders import load_text_image_encoder
from stylemamba.train import train_style
from stylemamba.vae import load_vae


@pytest.fixture(scope="module")
def siglip(tiny_models):
    return load_text_image_encoder(tiny_models["siglip"])


def test_encodes_once_with_normalised_weights(siglip, monkeypatch):
    calls, real = [], siglip.encode_text
    monkeypatch.setattr(siglip, "encode_text", lambda prompts: calls.append(list(prompts)) or real(prompts))
    d = TextDirection.encode(siglip, ["fire ", "  ice"], [3, 1], source_prompt="a  plain photo")
    assert calls == [["fire", "ice", "a plain photo"]]  # one call, white space collapsed
    assert d.prompts == ("fire", "ice") and d.weights == (0.75, 0.25) and d.source_prompt == "a plain photo"
    e = real(["fire", "ice", "a plain photo"])
    torch.testing.assert_close(d.e_t, F.normalize(0.75 * e[0] + 0.25 * e[1], dim=0))
    torch.testing.assert_close(d.e_src, e[2])
    torch.testing.assert_close(d.direction, d.e_t - e[2])
    assert d.embeddings.shape == (2, siglip.embed_dim) and d.embeddings.device.type == "cpu"
    assert d.text_model == siglip.name and "0.75 x 'fire'" in d.describe()
    assert d.metadata() == {"prompts": ["fire", "ice"], "prompt_weights": [0.75, 0.25],
                            "source_prompt": "a plain photo", "text_model": siglip.name}


@pytest.mark.parametrize("prompts, weights, source, message", [
    (["  "], None, "a plain photo", "empty style prompt"), ([], None, "a plain photo", "no style prompt"),
    (["fire"], None, " ", "empty source prompt"), (["fire", "ice"], [1.0], "a photo", "prompt weights"),
    (["fire", "ice"], [1.0, -1.0], "a photo", "non-negative"), (["fire"], [0.0], "a photo", "positive sum"),
])
def test_bad_prompts_and_weights_are_refused_before_encoding(siglip, prompts, weights, source, message):
    with pytest.raises(ValueError, match=message):
        TextDirection.encode(siglip, prompts, weights, source)


@pytest.mark.parametrize("prompt", ["🎨🌊", "!!!", "... ?"])
def test_a_prompt_of_no_words_the_text_model_knows_is_refused(siglip, tiny_models, prompt):
    with pytest.raises(ValueError, match="has no words the text model knows") as caught:  # before: a style of nothing
        TextDirection.encode(siglip, ["fire", prompt])
    assert f"prompt '{prompt}'" in str(caught.value) and "describe the style in words" in str(caught.value)
    assert TextDirection.encode(siglip, "🎨 fire").prompts == ("🎨 fire",)  # one known word is enough
    clip = load_text_image_encoder(tiny_models["clip"])  # byte-level: emoji are tokens it knows, as in real CLIP
    assert clip.wordless(["🎨🌊", "fire"]) == [] and siglip.wordless(["🎨🌊", "fire", "!!!"]) == ["🎨🌊", "!!!"]


def test_mix_weights_prompts_and_refusals(siglip, tiny_models):
    a, b = TextDirection.encode(siglip, "fire"), TextDirection.encode(siglip, "ice")
    ab = TextDirection.mix(a, b, 0.25)
    assert ab.prompts == ("fire", "ice") and ab.weights == pytest.approx((0.75, 0.25))
    torch.testing.assert_close(ab.e_t, F.normalize(0.75 * a.embeddings[0] + 0.25 * b.embeddings[0], dim=0))
    assert TextDirection.mix(a, b, 0.0).prompts == ("fire",)
    abb = TextDirection.mix(ab, b, 0.5)
    assert abb.prompts == ("fire", "ice", "ice") and abb.weights == pytest.approx((0.375, 0.125, 0.5))
    with pytest.raises(ValueError, match="different source prompts"):
        TextDirection.mix(a, TextDirection.encode(siglip, "ice", source_prompt="a photo"), 0.5)
    with pytest.raises(ValueError, match="different text models"):
        TextDirection.mix(a, TextDirection.encode(load_text_image_encoder(tiny_models["clip"]), "ice"), 0.5)
    with pytest.raises(ValueError, match=r"blend 1.5 must lie in \[0, 1\]"):
        TextDirection.mix(a, b, 1.5)


def test_training_takes_the_direction_as_it_is(siglip, tiny_models, photo, monkeypatch):
    vae = load_vae(tiny_models["vae"])
    direction = TextDirection.encode(siglip, ["fire", "ice"], [0.7, 0.3], source_prompt="a photo")
    cfg = small_config(epochs=2)
    from_prompts = train_style(vae, siglip, photo, ["fire", "ice"], cfg, prompt_weights=[0.7, 0.3])

    def never(prompts):
        raise AssertionError("training encoded the prompts again")

    monkeypatch.setattr(siglip, "encode_text", never)
    from_direction = train_style(vae, siglip, photo, direction, cfg)
    meta = from_direction.style.metadata
    assert meta["prompts"] == ["fire", "ice"] and meta["prompt_weights"] == pytest.approx([0.7, 0.3])
    assert meta["source_prompt"] == "a photo" == meta["recipe"]["loss"]["source_prompt"]  # the recipe tells true
    assert cfg.loss.source_prompt == "a plain photo"  # the caller's config is not changed
    torch.testing.assert_close(from_direction.style.embedding, direction.e_t)
    # same prompts and weights, another source prompt: another direction, so other losses
    assert from_prompts.style.metadata["source_prompt"] == "a plain photo"
    assert from_direction.history[0]["dir"] != from_prompts.history[0]["dir"]
    with pytest.raises(ValueError, match="prompt_weights belong to the TextDirection"):
        train_style(vae, siglip, photo, direction, cfg, prompt_weights=[1.0, 0.0])
    clip = load_text_image_encoder(tiny_models["clip"])
    with pytest.raises(ValueError, match="encoded with .* but training uses"):
        train_style(vae, clip, photo, direction, cfg)


def test_a_reference_picture_is_checked_as_content_images_are(siglip):
    """from_reference clamped 0-255 pixels to a white picture (a style of white) and took NaN pixels (a NaN style),
    without a word; content images were refused the same values."""
    photo = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"reference images are uint8 \(0-255 integers\?\)"):
        TextDirection.from_reference(siglip, (photo * 255).to(torch.uint8), source_images=photo)
    with pytest.raises(ValueError, match="reference image 0 has pixel values up to"):
        TextDirection.from_reference(siglip, photo * 255, source_images=photo)
    nan = photo.clone()
    nan[0, 1, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="reference image 0 has 1 NaN or infinite pixel value"):
        TextDirection.from_reference(siglip, nan, source_images=photo)
