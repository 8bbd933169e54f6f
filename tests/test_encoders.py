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
