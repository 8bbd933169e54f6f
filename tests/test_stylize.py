"""Stylising: any size and channel count, masks, strength, mixing, tiles, batches."""
import pytest
from conftest import load_photo
import torch

from small import small_config
from stylemamba.encoders import load_text_image_encoder
from stylemamba.style_model import StyleModel
from stylemamba.stylize import stylize
from stylemamba.train import train_style
from stylemamba.vae import load_vae


@pytest.fixture(scope="module")
def setup(tiny_models):
    photo = load_photo()
    vae = load_vae(tiny_models["vae"])
    text = load_text_image_encoder(tiny_models["siglip"])
    cfg = small_config(epochs=3, lr=3e-3)
    a = train_style(vae, text, photo, "fire", cfg).style
    b = train_style(vae, text, photo, "ice", small_config(epochs=3, lr=3e-3, seed=1)).style
    return vae, a, b


def test_any_size_is_kept(setup, photo):
    vae, a, _ = setup
    x = torch.nn.functional.interpolate(photo, size=(37, 53))
    y = stylize(x, vae, a)
    assert y.shape == (1, 3, 37, 53) and y.min() >= 0 and y.max() <= 1
    big = torch.nn.functional.interpolate(photo, size=(200, 136))
    assert stylize(big, vae, a, tile_size=128).shape == (1, 3, 200, 136)  # tiled
    for bad in (0, 64, 130):  # validated, never silently changed (a clamp to 128 used to show seams)
        with pytest.raises(ValueError, match=f"tile_size {bad} is invalid"):
            stylize(big, vae, a, tile_size=bad)
    with pytest.raises(ValueError, match="batch_size 0 is invalid"):
        stylize(big, vae, a, batch_size=0)


def test_nan_or_infinite_pixels_are_an_error(setup, photo_batch):
    vae, a, _ = setup
    bad = photo_batch.clone()
    bad[1, 2, 10, 10] = float("inf")
    with pytest.raises(ValueError, match="image 1 has 1 NaN or infinite pixel value"):
        stylize(bad, vae, a, batch_size=1)
    bad[1, 2, 10, 10] = float("nan")
    from stylemamba.train import prepare_content
    with pytest.raises(ValueError, match="content image 1 has 1 NaN"):
        prepare_content(bad, 64)


def test_pixels_on_another_scale_are_an_error(setup, photo):
    """0-255 pictures (torchvision's read_image gives uint8, a numpy array from Pillow 0-255 floats) were clamped
    to a white picture without a word, in stylising and training alike."""
    from stylemamba.train import prepare_content

    vae, a, _ = setup
    for bad, needle in (((photo * 255).round().to(torch.uint8), r"images are uint8 \(0-255 integers\?\): give floats"),
                        (photo * 255, "image 0 has pixel values up to 2")):
        with pytest.raises(ValueError, match=needle):
            stylize(bad, vae, a)
        with pytest.raises(ValueError, match=needle.replace("image", "content image")):
            prepare_content(bad, 64)
    stylize(photo * 1.01, vae, a)  # a little over 1 (an upstream rounding) is clamped as before


def test_channels(setup, photo):
    vae, a, _ = setup
    rgba = torch.cat([photo, torch.rand(1, 1, 64, 64)], 1)
    out = stylize(rgba, vae, a)
    assert out.shape == (1, 4, 64, 64)
    torch.testing.assert_close(out[:, 3], rgba[:, 3])
    torch.testing.assert_close(out[:, :3], stylize(photo, vae, a))
    gray = photo.mean(1, keepdim=True)
    assert stylize(gray, vae, a).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="5 channels"):
        stylize(torch.rand(1, 5, 64, 64), vae, a)
    with pytest.raises(ValueError, match="at least 8x8"):
        stylize(torch.rand(1, 3, 4, 64), vae, a)


def test_strength_zero_is_reconstruction_and_one_is_the_style(setup, photo):
    vae, a, _ = setup
    torch.testing.assert_close(stylize(photo, vae, a, strength=0.0), vae.reconstruct(photo), atol=1e-5, rtol=1e-5)
    # the distance from the reconstruction grows with the strength (that strength moves the picture ALONG the
    # prompt is shown with known-meaning models in test_proof.py, row "strength 0 .. 1")
    recon = vae.reconstruct(photo)
    dist = [float((stylize(photo, vae, a, strength=s) - recon).abs().mean()) for s in (0.25, 0.5, 0.75, 1.0)]
    assert 0.0 < dist[0] < dist[1] < dist[2] < dist[3], dist
    with pytest.raises(ValueError, match="outside"):
        stylize(photo, vae, a, strength=1.5)


def test_mask_keeps_original_pixels_outside(setup, photo):
    vae, a, _ = setup
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    y = stylize(photo, vae, a, mask=mask)
    torch.testing.assert_close(y[..., :16, :], photo[..., :16, :])
    torch.testing.assert_close(y[..., 16:48, 16:48], stylize(photo, vae, a)[..., 16:48, 16:48])
    with pytest.raises(ValueError, match="resize the mask"):
        stylize(photo, vae, a, mask=torch.ones(1, 32, 32))


def test_an_unpainted_mask_skips_the_pass(setup, photo, monkeypatch):
    """Images whose mask is empty come back as they were, without the encoder and decoder's time (a video masked
    in a few frames only, or a Mask Editor left blank, paid the whole pass for nothing)."""
    vae, a, _ = setup
    calls = []
    encode = vae.encode
    monkeypatch.setattr(vae, "encode", lambda x: calls.append(x.shape[0]) or encode(x))
    two = torch.cat([photo, photo.flip(-1)])
    assert torch.equal(stylize(two, vae, a, mask=torch.zeros(1, 64, 64)), two)
    assert calls == []
    mask = torch.zeros(2, 64, 64)
    mask[1] = 1
    y = stylize(two, vae, a, mask=mask, batch_size=1)
    assert calls == [1]  # the painted image only
    assert torch.equal(y[:1], two[:1])
    torch.testing.assert_close(y[1:], stylize(two[1:], vae, a))


def test_mixing_two_styles_by_their_pictures(setup, photo):
    """blend="outputs" (the default): each style stylises at the strength and the pictures are averaged, so a
    50/50 mix lies exactly halfway between the two styles' pictures (docs/METHOD_CHOICES.md, item 7)."""
    vae, a, b = setup
    ya, yb = stylize(photo, vae, a), stylize(photo, vae, b)
    torch.testing.assert_close(stylize(photo, vae, [a, b], weights=[0.5, 0.5]), 0.5 * ya + 0.5 * yb, atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(stylize(photo, vae, [a, b], weights=[1.0, 0.0]), ya, atol=1e-5, rtol=1e-5)
    half = [stylize(photo, vae, s, strength=0.4) for s in (a, b)]
    torch.testing.assert_close(stylize(photo, vae, [a, b], weights=[0.25, 0.75], strength=0.4),
                               0.25 * half[0] + 0.75 * half[1], atol=1e-5, rtol=1e-5)
    assert StyleModel.from_styles(vae, [a, b]).blend == "outputs"
    # the same through the tiled VAE passes (each style's decoder has its own shared statistics), up to the order
    # of clamping and feathering where tiles overlap (a mix clamps each style's tile, one style only the result)
    big = torch.nn.functional.interpolate(photo, size=(200, 136))
    tiled = [stylize(big, vae, s, tile_size=128) for s in (a, b)]
    diff = (stylize(big, vae, [a, b], tile_size=128) - (0.5 * tiled[0] + 0.5 * tiled[1])).abs()
    assert float((diff > 1e-5).float().mean()) < 0.05 and float(diff.mean()) < 2e-3, (diff.mean(), diff.max())
    from stylemamba.stylize import encode_latents, stylize_latents
    z = encode_latents(photo, vae)
    torch.testing.assert_close(stylize_latents(z, vae, [a, b]),
                               0.5 * stylize_latents(z, vae, a) + 0.5 * stylize_latents(z, vae, b), atol=1e-5,
                               rtol=1e-5)
    # one style gives the same pixels either way, at any strength
    for strength in (1.0, 0.6):
        torch.testing.assert_close(stylize(photo, vae, a, strength=strength, blend="outputs"),
                                   stylize(photo, vae, a, strength=strength, blend="weights"), atol=0, rtol=0)
    # the two blends really differ for two styles
    assert float((stylize(photo, vae, [a, b], blend="weights") - stylize(photo, vae, [a, b])).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="blend='both' is not a way to mix styles"):
        stylize(photo, vae, [a, b], blend="both")
    with pytest.raises(ValueError, match="built into a StyleModel"):
        stylize(photo, vae, StyleModel.from_styles(vae, [a, b]), blend="weights")


def test_mixing_two_styles_by_weights(setup, photo):
    """blend="weights" (0.1.0's mix) blends the fusion outputs and the decoder weights."""
    vae, a, b = setup
    only_a = stylize(photo, vae, [a, b], weights=[1.0, 0.0], blend="weights")
    torch.testing.assert_close(only_a, stylize(photo, vae, a), atol=1e-5, rtol=1e-5)
    # a 50/50 mix is the weighted sum of both styles, in the fusion (z + sum w_i (f_i(z) - z)) and in the decoder
    # (base + sum w_i delta_i)
    mixer, ma, mb = (StyleModel.from_styles(vae, [a, b], [0.5, 0.5], blend="weights"), StyleModel.from_styles(vae, [a]),
                     StyleModel.from_styles(vae, [b]))
    z = vae.encode(photo)
    torch.testing.assert_close(mixer.fuse(z), 0.5 * ma.fuse(z) + 0.5 * mb.fuse(z), atol=1e-5, rtol=1e-5)
    da, db, dm = ma.decoder.state_dict(), mb.decoder.state_dict(), mixer.decoder.state_dict()
    for k in dm:
        torch.testing.assert_close(dm[k], 0.5 * da[k] + 0.5 * db[k], atol=1e-6, rtol=1e-5)
    assert float((stylize(photo, vae, [a, b], weights=[0.5, 0.5], blend="weights") - only_a).abs().max()) > 0
    with pytest.raises(ValueError, match="style weights"):
        StyleModel.from_styles(vae, [a, b], [1.0])


def test_batches_match_single_images(setup, photo_batch):
    vae, a, _ = setup
    batch = stylize(photo_batch, vae, a, batch_size=2)
    singles = torch.cat([stylize(photo_batch[i:i + 1], vae, a) for i in range(2)])
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=1e-5)


def test_tiles_have_no_visible_seams(setup, tiny_models):
    """Tiles only bound the VAE's memory; the fusion sees the whole latent. A seam is a jump between neighbouring
    pixel columns (rows) that the untiled picture does not have: feathered tiles must show far less of it than a
    naive split (no overlap, no shared statistics) of the same style, which this metric does see.

    Bounds are relative to that naive split, not absolute: the tiny RANDOM models change with the diffusers /
    transformers versions that build them, and so does how much a style leans on the decoder's attention (global
    context), which tiles cut. The outer 24 px are left out: tiles meet only inside (from 64 px here), and near the
    image border the tiled and whole pictures differ for that reason alone. Measured over three training seeds on
    three stacks (torch 2.14 / diffusers 0.42, 2.4 / 0.30, 2.1 / 0.27): feathered at most 0.32 x the naive seam
    (0.0765-0.244), the same tiles without feathering (flat averages) at least 0.47 x; tiled vs whole mean
    difference 0.029-0.078. The style is trained with CLIPstyler's patch weight 9000 (the 0.1.0 default), which
    leans less on global context."""
    vae, _, _ = setup
    text = load_text_image_encoder(tiny_models["siglip"])
    a = train_style(vae, text, load_photo(), "fire", small_config(epochs=3, lr=3e-3, loss=dict(patch=9000.0))).style
    from skimage import data

    from stylemamba import stylize as mod

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    img = torch.nn.functional.interpolate(img, size=(256, 256), antialias=True, mode="bilinear")
    whole = stylize(img, vae, a, tile_size=1024)
    tiled = stylize(img, vae, a, tile_size=128, tile_overlap=64)
    naive = torch.cat([mod.stylize(img[..., :, :128], vae, a), mod.stylize(img[..., :, 128:], vae, a)], dim=-1)
    assert tiled.shape == whole.shape == naive.shape

    def seam(picture: torch.Tensor, dim: int) -> float:
        """The largest change, against the untiled picture, of the mean jump between neighbouring lines."""
        mean_over = (0, 1, 2 if dim == -1 else 3)
        jumps = picture.diff(dim=dim).abs().mean(dim=mean_over) - whole.diff(dim=dim).abs().mean(dim=mean_over)
        return float(jumps.abs()[24:-24].max())

    naive_seam = seam(naive, -1)
    assert naive_seam >= 0.06  # the metric sees a real seam ...
    for dim in (-1, -2):
        assert seam(tiled, dim) < 0.4 * naive_seam, (dim, seam(tiled, dim), naive_seam)  # ... and feathering hides it
    # tiles see less context, so the picture differs a little from the untiled one; a misplaced or unweighted
    # tile would differ by about the image's own contrast (0.2-0.3)
    assert (tiled - whole).abs().mean() < 0.1


def test_styles_with_different_embedding_sizes_mix(setup, photo):
    """SigLIP-base styles carry 768-d embeddings, CLIP ViT-B/32 styles 512-d; both must mix."""
    from stylemamba.fusion import FusionConfig, build_fusion
    from stylemamba.style_file import Style
    from stylemamba.vae_layout import to_ldm
    from stylemamba.vae import decoder_state

    vae, a, _ = setup
    cfg = FusionConfig(text_dim=a.embedding.numel() // 2, width=32, depth=1, d_state=4)
    zero_delta = {k: torch.zeros_like(v) for k, v in to_ldm(decoder_state(vae.decoder, vae.post_quant_conv)).items()}
    other = Style(cfg.to_dict(), build_fusion(cfg).state_dict(), zero_delta, torch.randn(cfg.text_dim),
                  dict(a.metadata))
    assert other.embedding.shape != a.embedding.shape
    out = stylize(photo, vae, [a, other], weights=[0.5, 0.5], blend="weights")
    # the untrained style is the identity, so the weight blend is style a at half strength ...
    torch.testing.assert_close(out, stylize(photo, vae, a, strength=0.5), atol=1e-5, rtol=1e-4)
    # ... and the picture blend averages style a with the VAE's reconstruction
    torch.testing.assert_close(stylize(photo, vae, [a, other], weights=[0.5, 0.5]),
                               0.5 * stylize(photo, vae, a) + 0.5 * stylize(photo, vae, a, strength=0.0),
                               atol=1e-5, rtol=1e-4)


def test_a_style_remembers_its_latent_scaling(setup, tiny_models, photo):
    vae, a, _ = setup
    assert a.metadata["scaling_factor"] == vae.scaling_factor
    other = load_vae(tiny_models["vae"], scaling_factor=0.13025)  # same VAE, loaded with another convention
    torch.testing.assert_close(stylize(photo, other, a), stylize(photo, vae, a), atol=1e-5, rtol=1e-4)


def test_gray_nan_and_empty_inputs_are_taken_or_named(setup, photo):
    """Found by driving the nodes: VAE Encode refused a 1-channel image that Stylize takes; NaN latents (a failed
    sampler) and a NaN mask gave a NaN picture without a word; an empty batch ended in a torch error."""
    from stylemamba.stylize import encode_latents, stylize_images, stylize_latents

    vae, a, _ = setup
    gray = photo.mean(dim=1, keepdim=True)
    torch.testing.assert_close(encode_latents(gray, vae), encode_latents(gray.expand(-1, 3, -1, -1), vae))
    z = encode_latents(photo, vae)
    bad = z.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"latent 0 has 1 NaN or infinite value\(s\) out of \d+: the sampler or VAE"):
        stylize_latents(bad, vae, a)
    mask = torch.ones(photo.shape[-2:])
    mask[0, 0] = float("nan")
    with pytest.raises(ValueError, match="mask 0 has 1 NaN or infinite"):
        stylize_images(photo, vae, a, mask=mask)
    for call, what in ((lambda: stylize_images(photo[:0], vae, a), "image"),
                       (lambda: encode_latents(photo[:0], vae), "image"),
                       (lambda: stylize_latents(z[:0], vae, a), "latent")):
        with pytest.raises(ValueError, match=f"the {what} batch is empty"):
            call()


def test_encode_latents_names_bad_pixels_as_stylize_does(setup, photo):
    """encode_latents took uint8 images, 0-255 floats and NaN pixels without a word (wrong or NaN latents), and said
    a (B,H,W,C) tensor was 'too small' instead of naming its layout."""
    from stylemamba.stylize import encode_latents

    vae, _, _ = setup
    with pytest.raises(ValueError, match=r"images are uint8 \(0-255 integers\?\): give floats in \[0, 1\]"):
        encode_latents((photo * 255).to(torch.uint8), vae)
    with pytest.raises(ValueError, match="image 0 has pixel values up to"):
        encode_latents(photo * 255, vae)
    nan = photo.repeat(3, 1, 1, 1)
    nan[2, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="image 2 has 1 NaN or infinite pixel value"):
        encode_latents(nan, vae, batch_size=2)
    with pytest.raises(ValueError, match=r"\(B,H,W,C\) \(ComfyUI layout\), permute it"):
        encode_latents(photo.permute(0, 2, 3, 1).contiguous(), vae)
