"""SD-VAE loading (HF folder, single LDM file, wrapped object), encoding and the trainable decoder copy."""
import pytest
import torch
from safetensors.torch import save_file

from stylemamba.vae import ModelFileError, SDVAE, fingerprints_match, load_vae, weights_id


@pytest.fixture(scope="module")
def vae(tiny_models):
    return load_vae(tiny_models["vae"])


def test_folder_and_single_file_give_the_same_model(tiny_models, vae, photo):
    single = load_vae(tiny_models["vae_ldm"])
    z1, z2 = vae.encode(photo), single.encode(photo)
    assert z1.shape == (1, 4, photo.shape[-2] // 8, photo.shape[-1] // 8)
    torch.testing.assert_close(z1, z2)
    torch.testing.assert_close(vae.reconstruct(photo), single.reconstruct(photo))
    assert vae.identity["arch"] == single.identity["arch"]


def test_wrapping_an_ldm_style_object_shares_modules(tiny_models, vae, photo):
    from diffusers import AutoencoderKL

    ae = AutoencoderKL.from_pretrained(str(tiny_models["vae"]))
    wrapped = SDVAE.from_ldm(ae, scaling_factor=vae.scaling_factor)
    assert wrapped.decoder is ae.decoder and wrapped.encoder is ae.encoder
    torch.testing.assert_close(wrapped.encode(photo), vae.encode(photo))
    with pytest.raises(TypeError, match="not an SD-style autoencoder"):
        SDVAE.from_ldm(torch.nn.Linear(2, 2))


def test_latent_scaling_lives_in_encode_and_decoder(vae, photo):
    raw = vae.quant_conv(vae.encoder(photo * 2 - 1))[:, :4]
    torch.testing.assert_close(vae.encode(photo), raw * vae.scaling_factor)
    dec = vae.make_decoder()
    expected = (vae.decoder(vae.post_quant_conv(raw)) + 1) / 2
    torch.testing.assert_close(dec(raw * vae.scaling_factor), expected)


def test_trainable_decoder_is_a_copy(vae, photo):
    before = {k: v.clone() for k, v in vae.decoder.state_dict().items()}
    dec = vae.make_decoder()
    assert all(p.requires_grad for p in dec.parameters())
    assert not any(p.requires_grad for p in vae.parameters())
    opt = torch.optim.SGD(dec.parameters(), lr=0.1)
    dec(vae.encode(photo)).mean().backward()
    opt.step()
    for k, v in vae.decoder.state_dict().items():
        assert torch.equal(v, before[k]), f"base decoder weight {k} changed"
    assert not torch.equal(dec.decoder.conv_out.weight, vae.decoder.conv_out.weight)


def test_fingerprint_tolerates_half_precision_but_not_other_weights(tiny_models, vae):
    for dtype in (torch.float16, torch.bfloat16):
        assert fingerprints_match(vae.identity, load_vae(tiny_models["vae"], dtype=dtype).identity)
    other = load_vae(tiny_models["vae"])
    with torch.no_grad():
        for p in other.decoder.parameters():
            p.mul_(1.02)  # a decoder 2 % away (e.g. a fine-tune of the same VAE) is another base
    other._identity = None
    assert not fingerprints_match(vae.identity, other.identity)


def test_fingerprint_tells_a_fine_tune_apart_and_shows_a_weight_id(tiny_models, vae):
    """A fine-tune moves single weights while keeping the statistics (what sd-vae-ft-mse is to kl-f8)."""
    tuned = load_vae(tiny_models["vae"])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tuned.decoder.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * float(p.abs().mean()) * 0.05)
    tuned._identity = None
    stats_only = [{k: v for k, v in f.items() if k != "values"} for f in (vae.identity, tuned.identity)]
    assert fingerprints_match(*stats_only)  # the statistics alone (what 0.1 styles stored) cannot tell
    assert not fingerprints_match(vae.identity, tuned.identity)
    assert vae.identity["arch"] == tuned.identity["arch"]  # the hash the old message printed: the same
    assert weights_id(vae.identity) != weights_id(tuned.identity)
    assert weights_id(vae.identity) == weights_id(load_vae(tiny_models["vae"], dtype=torch.bfloat16).identity)
    assert len(weights_id(vae.identity)) == 12 and weights_id(stats_only[0]) != weights_id(stats_only[1])


def test_bad_inputs_have_clear_errors(tmp_path, vae, photo):
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.encode(photo[..., :60, :61])
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        vae.encode(photo[:, :1])
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ModelFileError, match="nope.safetensors"):
        load_vae(missing)
    with pytest.raises(ModelFileError, match="config.json"):
        load_vae(tmp_path)
    pickled = tmp_path / "vae.ckpt"
    pickled.write_bytes(b"not really")
    with pytest.raises(ValueError, match="pickled"):
        load_vae(pickled)
    foreign = tmp_path / "lora.safetensors"
    save_file({"lora_up.weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(ValueError, match="not an SD-VAE file"):
        load_vae(foreign)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(foreign.read_bytes()[:20])
    with pytest.raises(ModelFileError, match="could not read VAE file"):
        load_vae(truncated)


def test_a_mistyped_local_path_is_not_asked_of_the_hub(tmp_path, monkeypatch):
    """'models/vea' (a typo of models/vae) has the shape of a Hugging Face id: it was asked of the hub, which waited
    through retries offline and then said to download https://huggingface.co/models/vea."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "vae").mkdir(parents=True)
    with pytest.raises(ModelFileError, match=r"VAE not found: models/vea does not exist \(a typo\?.*holds vae/"):
        load_vae("models/vea")
    with pytest.raises(ModelFileError, match="Hugging Face hub"):  # no local folder 'nobody': still a hub id
        load_vae("nobody/no-such-vae")


@pytest.mark.parametrize("src", ["./vea", "vea/"])
def test_a_local_path_that_no_hub_id_can_be_is_not_asked_of_the_hub(tmp_path, monkeypatch, src):
    """'./vea' and 'vea/' hold one '/' as an 'owner/name' id does: they were asked of the hub, then the user was
    told to download https://huggingface.co/./vea; the current folder was the one folder not looked at."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vae").mkdir()
    with pytest.raises(ModelFileError, match=r"^VAE not found: vea does not exist \(the current folder holds vae/\)"):
        load_vae(src)


def test_an_absolute_path_is_not_explained_as_a_hub_id():
    """'/vea' was said to be looked up on the hub 'only where no folder of its first part (/) is in the current
    folder': no hub id starts with '/'."""
    with pytest.raises(ModelFileError, match=r"^VAE not found: /no-such-vae does not exist \(the folder / holds ") as e:
        load_vae("/no-such-vae")
    assert "Hugging Face" not in str(e.value)


def test_a_hub_id_in_the_cache_loads_beside_a_folder_of_its_owner_name(tiny_models, tmp_path, monkeypatch):
    """A folder 'stabilityai/' here (another model of that owner, downloaded into it) made the cached hub id
    'stabilityai/sd-vae-ft-mse' a 'mistyped local path': refused, though it loads offline from the cache."""
    import shutil

    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo = cache / "models--stabilityai--sd-vae-ft-mse"
    shutil.copytree(tiny_models["vae"], repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stabilityai" / "sd-vae-ft-ema").mkdir(parents=True)
    import warnings

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert isinstance(load_vae("stabilityai/sd-vae-ft-mse"), SDVAE)
    # huggingface_hub's "`local_dir_use_symlinks` is deprecated" (an argument diffusers passes) is not the user's
    assert not [str(w.message) for w in said if "local_dir_use_symlinks" in str(w.message)]
