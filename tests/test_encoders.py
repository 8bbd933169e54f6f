"""SigLIP and CLIP behind one interface, with a differentiable image path."""
import pytest
import torch

from stylemamba.encoders import load_text_image_encoder
from stylemamba.vae import ModelFileError


@pytest.fixture(scope="module", params=["siglip", "clip"])
def encoder(request, tiny_models):
    return load_text_image_encoder(tiny_models[request.param])


def test_embeddings_are_normalised_and_distinct(encoder):
    emb = encoder.encode_text(["Van Gogh starry night", "a plain photo"])
    assert emb.shape == (2, encoder.embed_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(emb[0], emb[1])


def test_image_path_is_differentiable(encoder, photo):
    x = photo.clone().requires_grad_(True)
    emb = encoder.encode_image(x)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(1))
    emb.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_preprocess_matches_the_tower_input(encoder, photo):
    pixels = encoder.preprocess(photo)
    assert pixels.shape[-2:] == (encoder.image_size, encoder.image_size)
    # normalisation is (x - mean) / std with the processor's numbers
    flat = encoder.preprocess(torch.full((1, 3, encoder.image_size, encoder.image_size), 0.5))
    torch.testing.assert_close(flat, (0.5 - encoder.mean) / encoder.std * torch.ones_like(flat))


def test_bad_inputs(encoder, tmp_path, photo):
    with pytest.raises(ValueError, match="empty style prompt"):
        encoder.encode_text(["  "])
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        encoder.encode_image(photo[:, :2])
    with pytest.raises(ModelFileError, match="config.json"):
        load_text_image_encoder(tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelFileError, match="is a file"):
        load_text_image_encoder(f)


def test_a_mistyped_local_folder_is_not_asked_of_the_hub(tmp_path, monkeypatch):
    """'models/siglp' has the shape of a Hugging Face id: it was asked of the hub (retries offline), then the user
    was told to download https://huggingface.co/models/siglp."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "siglip").mkdir(parents=True)
    with pytest.raises(ModelFileError, match=r"model not found: models/siglp does not exist \(a typo\?.*siglip/"):
        load_text_image_encoder("models/siglp")


def test_a_vae_folder_given_as_the_text_model_says_what_to_give(tiny_models):
    """Before: transformers' 'Unrecognized model in ... Should have a `model_type` key', naming no fix."""
    with pytest.raises(ValueError, match="is not a SigLIP or CLIP model .*give a folder of one, e.g. google/siglip"):
        load_text_image_encoder(tiny_models["vae"])


@pytest.mark.parametrize("kind, remove, corrupt, message", [
    ("siglip", ("spiece.model",), None, r"has no siglip tokenizer files \(tokenizer.json or spiece.model\): download"),
    ("clip", ("vocab.json", "tokenizer.json"), None, r"has no clip tokenizer files \(tokenizer.json or vocab.json \+ merges.txt\)"),
    ("siglip", ("model.safetensors",), None, r"has no weights \(model.safetensors; only safetensors are read\)"),
    ("siglip", (), "model.safetensors", r"its weights could not be read \(.*\): the file is damaged; download"),
])
def test_an_incomplete_or_damaged_model_folder_names_the_file_and_the_fix(tiny_models, tmp_path, kind, remove,
                                                                           corrupt, message):
    """Before: sentencepiece's 'Either model_file or model_proto must be specified', a CLIP that loaded a tokenizer
    knowing no word (then blamed the prompt), a hub address made of a local path, safetensors' bare error."""
    import shutil

    folder = tmp_path / kind
    shutil.copytree(tiny_models[kind], folder)
    for name in remove:
        (folder / name).unlink()
    if corrupt:
        (folder / corrupt).write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match=message) as info:
        load_text_image_encoder(folder)
    assert "huggingface.co/" + str(folder) not in str(info.value)


class MeanColour(torch.nn.Module):
    """An image-text model that is neither SigLIP nor CLIP, written only against the ImageTextModel protocol:
    an image's embedding is its mean colour (plus a constant), a word's is the colour it names."""

    name, image_size = "mean-colour", 16
    COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "photo": (0.5, 0.5, 0.5)}

    def __init__(self):
        super().__init__()
        self.register_buffer("bias", torch.full((1, 1), 0.1))

    @property
    def embed_dim(self):
        return 4

    @property
    def device(self):
        return self.bias.device

    def encode_text(self, prompts):
        rows = [[sum(v) for v in zip(*[self.COLOURS.get(w, (0.0, 0.0, 0.0)) for w in p.split()] or [(0, 0, 0)])]
                for p in prompts]
        return torch.nn.functional.normalize(torch.cat([torch.tensor(rows), self.bias.expand(len(rows), 1)], 1), dim=-1)

    def encode_image(self, x01):
        m = torch.nn.functional.interpolate(x01, size=(self.image_size,) * 2, mode="bilinear").mean((2, 3))
        return torch.nn.functional.normalize(torch.cat([m, self.bias.expand(m.shape[0], 1)], 1), dim=-1)


def test_any_image_text_model_plugs_in_through_the_protocol(tiny_models, photo):
    from small import small_config
    from stylemamba.encoders import ImageTextModel, check_image_text_model
    from stylemamba.experiments.metrics import style_score
    from stylemamba.train import train_style
    from stylemamba.vae import load_vae

    assert isinstance(load_text_image_encoder(tiny_models["siglip"]), ImageTextModel)
    model = MeanColour()
    assert isinstance(model, ImageTextModel)
    result = train_style(load_vae(tiny_models["vae"]), model, photo, "red", small_config(epochs=2))
    assert result.style.metadata["text_model"] == "mean-colour" and result.style.embedding.shape == (4,)
    assert result.style.metadata["text_model_kind"] == ""  # only SigLIP/CLIP have a kind
    assert style_score(model, photo, "red").shape == (1,)
    with pytest.raises(TypeError, match="lacks name, image_size, embed_dim, device, encode_text, encode_image"):
        check_image_text_model(torch.nn.Linear(2, 2))
