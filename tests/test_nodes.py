"""The ComfyUI nodes without ComfyUI: declared interfaces, registration, and every node function on tiny models.

The pack is imported the way ComfyUI imports it (a package from its folder's ``__init__.py``). ComfyUI's VAE
is stood in for by an object whose ``first_stage_model`` is a real (tiny) diffusers AutoencoderKL, loaded
under ``torch.inference_mode()`` as ComfyUI loads models; images arrive in ComfyUI's (B,H,W,C) layout.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import logging
import shutil
import sys
import types
from pathlib import Path

import pytest

import torch
from conftest import import_pack

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui_stylemamba_node_tests"

# Public contract: node ids and their input names IN ORDER (saved workflows store widget values by position).
CONTRACT = {
    "StyleMambaLoadTextModel": ["model_name", "hf_id"],
    "StyleMambaTextConditioning": ["text_model", "style_prompt", "source_prompt"],
    "StyleMambaConditioningMix": ["conditioning_a", "conditioning_b", "blend"],
    "StyleMambaLoadPerceptual": ["vgg19", "lpips_backbone", "lpips_net"],
    "StyleMambaTrain": ["vae", "text_model", "conditioning", "images", "epochs", "steps_per_epoch", "learning_rate",
                        "lr_decay_epoch", "resolution", "seed", "n_crops", "crop_fraction", "mask_ratio", "so_interval",
                        "so_theta", "dir_weight", "patch_weight", "md_weight", "so_weight", "vgg_weight_start",
                        "vgg_weight_end", "vgg_weight_switch_epoch", "lpips_weight", "precision", "perceptual", "preset",
                        "vgg_reduction"],
    "StyleMambaSaveStyle": ["style", "filename_prefix"],
    "StyleMambaLoadStyle": ["style_name"],
    "StyleMambaStylize": ["style", "vae", "images", "strength", "tile_size", "batch_size", "mask"],
    "StyleMambaMixStyles": ["style_a", "style_b", "blend", "blend_mode"],
    "StyleMambaVAEEncode": ["vae", "images"],
    "StyleMambaStylizeLatent": ["style", "vae", "samples", "strength"],
    "StyleMambaLoadUniversalModel": ["model_name"],
    "StyleMambaReferenceConditioning": ["text_model", "reference_image", "source_images", "source_prompt"],
    "StyleMambaUniversalStyle": ["universal_model", "conditioning", "text_model", "reference_image"],
}
SOCKET_TYPES = {"STYLEMAMBA_TEXT_MODEL", "STYLEMAMBA_CONDITIONING", "STYLEMAMBA_STYLE", "STYLEMAMBA_PERCEPTUAL",
                "STYLEMAMBA_UNIVERSAL",
                "VAE", "IMAGE", "MASK", "LATENT", "STRING"}


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_models):
    """A models dir as users lay it out: siglip/<folder>, perceptual/<file>, stylemamba/ for styles."""
    root = tmp_path_factory.mktemp("comfy_models")
    shutil.copytree(tiny_models["siglip"], root / "siglip" / "tiny-siglip")
    shutil.copytree(tiny_models["clip"], root / "siglip" / "tiny-clip")
    (root / "perceptual").mkdir()
    shutil.copy(tiny_models["vgg19"], root / "perceptual" / "vgg19_tiny.safetensors")
    return root


@pytest.fixture(scope="module")
def pack(models_dir):
    """Import the pack as ComfyUI does; model folders resolve to ``models_dir`` (no ComfyUI here)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("STYLEMAMBA_MODELS_DIR", str(models_dir))
    yield import_pack(PACK_NAME)
    mp.undo()
    for name in [n for n in sys.modules if n == PACK_NAME or n.startswith(PACK_NAME + ".")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def nodes(pack):
    return pack.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def small_fusion(pack):
    """Train-node runs on CPU-test size: the paper's recipe keeps its numbers, the fusion module is narrow."""
    train_mod = importlib.import_module(PACK_NAME + ".stylemamba.train")
    fusion_mod = importlib.import_module(PACK_NAME + ".stylemamba.fusion")
    mp = pytest.MonkeyPatch()
    mp.setattr(train_mod, "TrainConfig", functools.partial(
        train_mod.TrainConfig, fusion=fusion_mod.FusionConfig(width=32, depth=1, d_state=4)))
    yield
    mp.undo()


class FakeComfyVAE:
    """What the nodes use of ComfyUI's ``comfy.sd.VAE``: ``first_stage_model`` (modules with encoder/decoder)."""

    def __init__(self, model):
        self.first_stage_model = model


@pytest.fixture(scope="module")
def vae(tiny_models):
    from diffusers import AutoencoderKL

    with torch.inference_mode():  # ComfyUI loads models inside inference mode
        model = AutoencoderKL.from_pretrained(str(tiny_models["vae"])).eval()
    return FakeComfyVAE(model)


def comfy_images(photo: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) -> ComfyUI IMAGE (B,H,W,3), created under inference mode like a LoadImage output."""
    with torch.inference_mode():
        return photo.permute(0, 2, 3, 1).contiguous().clone()


@pytest.fixture(scope="module")
def text_model(nodes, pack):
    with torch.inference_mode():
        return nodes["StyleMambaLoadTextModel"]().load("tiny-siglip", "")[0]


def train_args(**overrides):
    args = dict(epochs=2, steps_per_epoch=1, learning_rate=5e-4, lr_decay_epoch=1, resolution=64, seed=0, n_crops=2,
                crop_fraction=0.5, mask_ratio=0.5, so_interval=1, so_theta=2.0, dir_weight=500.0, patch_weight=9000.0,
                md_weight=500.0, so_weight=500.0, vgg_weight_start=9000.0, vgg_weight_end=150.0,
                vgg_weight_switch_epoch=1, lpips_weight=150.0, precision="auto")
    args.update(overrides)
    return args


@pytest.fixture(scope="module")
def trained(nodes, vae, text_model, small_fusion):
    """One style trained through the Train node (with VGG), shared by the save / load / stylise tests."""
    from conftest import load_photo

    before = {k: v.clone() for k, v in vae.first_stage_model.decoder.state_dict().items()}
    with torch.inference_mode():
        cond = nodes["StyleMambaTextConditioning"]().encode(text_model, "oil painting", "a plain photo")[0]
        perceptual = nodes["StyleMambaLoadPerceptual"]().load("vgg19_tiny.safetensors", "none", "vgg")[0]
        images = comfy_images(torch.cat([load_photo("astronaut", (48, 56)), load_photo("chelsea", (48, 56))]))
        style, curve = nodes["StyleMambaTrain"]().train(vae, text_model, cond, images, perceptual=perceptual,
                                                        **train_args())
    return {"style": style, "curve": curve, "decoder_before": before}


# ---------------------------------------------------------------------------------------------------- interface
def test_registered_nodes_and_input_names_are_the_public_contract(nodes):
    assert sorted(nodes) == sorted(CONTRACT)
    for node_id, names in CONTRACT.items():
        it = nodes[node_id].INPUT_TYPES()
        assert list(it.get("required", {})) + list(it.get("optional", {})) == names, node_id


@pytest.mark.parametrize("node_id", sorted(CONTRACT))
def test_node_declaration_is_well_formed(nodes, pack, node_id):
    cls = nodes[node_id]
    assert node_id.startswith("StyleMamba") and cls.NODE_ID == node_id
    assert cls.CATEGORY == "StyleMamba"
    assert pack.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("StyleMamba ")
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 30
    assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    assert set(cls.RETURN_TYPES) <= SOCKET_TYPES
    it = cls.INPUT_TYPES()
    assert set(it) <= {"required", "optional", "hidden"} and it["required"]
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    for cat in ("required", "optional"):
        for name, spec in it.get(cat, {}).items():
            assert isinstance(spec, tuple) and 1 <= len(spec) <= 2, (name, spec)
            kind, opts = spec[0], spec[1]
            assert isinstance(opts.get("tooltip"), str) and len(opts["tooltip"]) > 10, f"{node_id}.{name}: tooltip"
            assert name in params, f"{node_id}.{cls.FUNCTION} does not accept {name}"
            if cat == "optional":
                assert params[name].default is None
            if isinstance(kind, list):
                assert "default" not in opts or opts["default"] in kind, (name, opts)
            elif kind in ("INT", "FLOAT"):
                assert opts["min"] <= opts["default"] <= opts["max"], name
                assert isinstance(opts["default"], int if kind == "INT" else float), name
            elif kind not in ("STRING", "BOOLEAN"):
                assert kind in SOCKET_TYPES, (name, kind)
    for name in it.get("hidden", {}):
        assert name in params
    required_params = [p for p, v in params.items() if p != "self" and v.default is inspect.Parameter.empty]
    assert set(required_params) <= set(it["required"])


def test_train_widget_defaults_are_the_library_recipe(nodes):
    """The paper's recipe with the changes measured in docs/METHOD_CHOICES.md: the library's defaults."""
    req = nodes["StyleMambaTrain"].INPUT_TYPES()["required"]
    defaults = {k: v[1]["default"] for k, v in req.items() if len(v) > 1 and "default" in v[1]}
    assert defaults["epochs"] == 20 and defaults["learning_rate"] == 5e-4 and defaults["lr_decay_epoch"] == 10
    assert defaults["resolution"] == 512 and defaults["mask_ratio"] == 0.5 and defaults["so_interval"] == 1
    lc = importlib.import_module(PACK_NAME + ".stylemamba.losses").LossConfig()
    assert (defaults["patch_weight"], defaults["so_interval"]) == (lc.patch, lc.so_interval) == (500.0, 1)
    assert (defaults["dir_weight"], defaults["md_weight"], defaults["so_weight"], defaults["so_theta"],
            defaults["n_crops"], defaults["crop_fraction"]) == (lc.dir, lc.md, lc.so, lc.so_theta, lc.n_crops,
                                                                lc.crop_fraction)
    # item 5: the VGG term off by default, its weights in relative units (the optional vgg_reduction input)
    assert (defaults["vgg_weight_start"], defaults["vgg_weight_end"], defaults["vgg_weight_switch_epoch"]) == (
        lc.vgg_weight_start, lc.vgg_weight_end, lc.vgg_weight_switch_epoch) == (0.0, 0.0, 5)
    reduction = nodes["StyleMambaTrain"].INPUT_TYPES()["optional"]["vgg_reduction"]
    assert reduction[1]["default"] == lc.vgg_reduction == "relative"
    assert sorted(reduction[0]) == sorted(importlib.import_module(PACK_NAME + ".stylemamba.losses").VGG_REDUCTIONS)
    assert req["seed"][1]["control_after_generate"] is False  # re-queueing must not retrain with a new seed


# ---------------------------------------------------------------------------------------------------- registration
def test_a_missing_package_disables_only_the_node_that_needs_it(pack, caplog):
    nodes_pkg = sys.modules[PACK_NAME + ".nodes"]
    with caplog.at_level(logging.WARNING, logger="stylemamba"):
        classes, names = nodes_pkg.build_mappings(available=lambda name: name not in ("transformers", "lpips"))
    assert "StyleMambaLoadTextModel" not in classes and "StyleMambaLoadTextModel" not in names
    assert set(classes) == set(CONTRACT) - {"StyleMambaLoadTextModel"}
    assert "pip install transformers" in caplog.text and "pip install lpips" in caplog.text


def test_a_node_module_that_fails_to_import_is_skipped(pack, monkeypatch, caplog):
    nodes_pkg = sys.modules[PACK_NAME + ".nodes"]
    real = importlib.import_module

    def failing(name, package=None):
        if name == ".train_node":
            raise ImportError("No module named 'fake_dependency'")
        return real(name, package)

    monkeypatch.setattr(nodes_pkg.importlib, "import_module", failing)
    with caplog.at_level(logging.ERROR, logger="stylemamba"):
        classes, _ = nodes_pkg.build_mappings()
    assert "StyleMambaTrain" not in classes and "StyleMambaStylize" in classes
    assert "fake_dependency" in caplog.text


def test_comfy_helpers_degrade_without_comfyui(pack, models_dir):
    ch = sys.modules[PACK_NAME + ".nodes.comfy_helpers"]
    assert not ch.comfy_available()
    assert ch.interrupted() is False
    ch.Progress(3, "7").update(1, torch.rand(3, 8, 8))  # no-op, no error
    ch.Progress(3, "7").text("hello")
    assert ch.list_model_dirs("siglip") == ["tiny-clip", "tiny-siglip"]
    assert ch.list_files("perceptual") == ["vgg19_tiny.safetensors"]
    assert ch.resolve("siglip", "tiny-siglip", is_dir=True) == models_dir / "siglip" / "tiny-siglip"
    with pytest.raises(ValueError, match="invalid"):
        ch.resolve("perceptual", "../siglip/tiny-siglip/config.json")
    with pytest.raises(FileNotFoundError, match="not found in"):
        ch.resolve("perceptual", "vgg19.safetensors")
    with pytest.raises(ch.CancelledWithoutComfy):
        ch.raise_interrupted()
    with pytest.raises(TypeError, match="not a VAE"):
        ch.prepare_vae(object())


# ---------------------------------------------------------------------------------------------------- loaders
def test_load_text_model_lists_and_loads_siglip_and_clip(nodes, text_model):
    node = nodes["StyleMambaLoadTextModel"]
    assert node.INPUT_TYPES()["required"]["model_name"][0] == ["tiny-clip", "tiny-siglip"]
    assert text_model.kind == "siglip" and text_model.device.type == "cpu"
    assert not any(t.is_inference() for t in list(text_model.parameters()) + list(text_model.buffers()))
    with torch.inference_mode():
        clip = node().load("tiny-clip", "")[0]
    assert clip.kind == "clip"
    assert node.VALIDATE_INPUTS("tiny-siglip", "") is True
    assert node.VALIDATE_INPUTS("anything", "google/siglip-base-patch16-224") is True
    message = node.VALIDATE_INPUTS("siglip-base-patch16-224", "")
    assert "not found" in message and "google/siglip-base-patch16-224" in message
    assert "not a Hugging Face id" in node.VALIDATE_INPUTS("x", "../../etc")


def test_hf_id_offline_gives_a_clear_message(nodes, models_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError) as info:
        nodes["StyleMambaLoadTextModel"]().load("tiny-siglip", "google/siglip-base-patch16-224")
    message = str(info.value)
    assert "https://huggingface.co/google/siglip-base-patch16-224" in message
    assert str(models_dir / "siglip" / "siglip-base-patch16-224") in message


def test_cancel_while_downloading_stays_a_cancel(pack, monkeypatch):
    """ComfyUI's progress hook raises its interrupt from inside the download's bar: it was reported as a failed
    download with advice for offline machines."""
    import huggingface_hub

    loaders = importlib.import_module(PACK_NAME + ".nodes.loaders")
    helpers = importlib.import_module(PACK_NAME + ".nodes.comfy_helpers")

    def cancelled(**kwargs):
        raise helpers.CancelledWithoutComfy()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", cancelled)
    with pytest.raises(helpers.CancelledWithoutComfy):
        loaders.download_text_model("someone/cancelled-model")


def test_hf_id_never_reuses_or_overwrites_another_repositorys_folder(pack, models_dir, monkeypatch):
    """The download folder was the repository's name alone: another owner's model of that name was reused without a
    word, and a user's unfinished copy there became the download's target."""
    import huggingface_hub

    loaders = importlib.import_module(PACK_NAME + ".nodes.loaders")
    siglip = models_dir / "siglip"
    downloads = []

    def fake_download(repo_id, local_dir, **kwargs):
        downloads.append((repo_id, Path(local_dir).name))
        (Path(local_dir) / "config.json").write_text("{}")
        (Path(local_dir) / "model.safetensors").write_bytes(b"weights of " + repo_id.encode())
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)

    first = loaders.download_text_model("google/same-name")
    assert first == siglip / "same-name" and downloads == [("google/same-name", "same-name")]
    assert loaders.download_text_model("google/same-name") == first and len(downloads) == 1  # recorded: reused
    other = loaders.download_text_model("HuggingFaceM4/same-name")  # same name, another owner: its own folder
    assert other == siglip / "HuggingFaceM4--same-name" and downloads[-1] == ("HuggingFaceM4/same-name", other.name)
    assert (first / "model.safetensors").read_bytes() == b"weights of google/same-name"

    mine = siglip / "my-copy"  # the user's unfinished copy: never a download's target
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": 1}')
    assert loaders.download_text_model("owner/my-copy") == siglip / "owner--my-copy"
    assert (mine / "config.json").read_text() == '{"mine": 1}' and not (mine / "model.safetensors").exists()

    legacy = siglip / "old-download"  # complete, from a version that recorded nothing: used as before
    legacy.mkdir()
    (legacy / "config.json").write_text("{}")
    (legacy / "model.safetensors").write_bytes(b"old")
    count = len(downloads)
    assert loaders.download_text_model("owner/old-download") == legacy and len(downloads) == count

    (siglip / "owner--my-copy" / loaders.HF_ID_RECORD).write_text("someone/else")  # both folders taken
    with pytest.raises(RuntimeError, match="my-copy and .*owner--my-copy hold files of another model"):
        loaders.download_text_model("owner/my-copy")
    for folder in (first, other, mine, legacy, siglip / "owner--my-copy"):
        shutil.rmtree(folder)


def test_the_download_bar_takes_the_keywords_huggingface_hub_passes_and_moves_the_node_bar(pack):
    import io

    loaders = importlib.import_module(PACK_NAME + ".nodes.loaders")
    helpers = importlib.import_module(PACK_NAME + ".nodes.comfy_helpers")

    class Recorded(helpers.Progress):  # ComfyUI's bar is absent here: keep what the node would show
        def update(self, value, preview=None, max_size=512):
            self.shown = (int(value), self.total)

    progress = Recorded(1)
    bar = loaders.download_progress(progress)(total=4, name="huggingface_hub.snapshot_download", file=io.StringIO())
    bar.update(3)
    assert progress.shown == (3, 4)
    bar.close()

    # huggingface_hub 1.x/2.x opens bytes-received and bytes-written bars (totals grow as files start) and a files
    # bar; the node follows the bytes, never jumping to "1 of 2 files" and back
    progress, shown = Recorded(1), []
    progress_class = loaders.download_progress(progress)
    received, written = (progress_class(total=0, unit="B", name=n, file=io.StringIO()) for n in ("t", "w"))
    files = progress_class(total=2, file=io.StringIO())
    for size in (100, 900):
        received.total += size
        written.total += size
    for bar, n in ((received, 50), (written, 50), (files, 1), (received, 950), (written, 950), (files, 1)):
        bar.update(n)
        shown.append(progress.shown)
    assert shown == [(50, 1000), (50, 1000), (50, 1000), (1000, 1000), (1000, 1000), (1000, 1000)]


def test_load_perceptual(nodes):
    node = nodes["StyleMambaLoadPerceptual"]()
    with torch.inference_mode():
        none = node.load("none", "none", "vgg")[0]
        vgg = node.load("vgg19_tiny.safetensors", "none", "vgg")[0]
    assert none.vgg is None and none.lpips is None
    assert vgg.vgg is not None and vgg.lpips is None and vgg.names == {"vgg": "vgg19_tiny.safetensors"}
    assert not any(p.is_inference() for p in vgg.vgg.parameters())
    assert nodes["StyleMambaLoadPerceptual"].INPUT_TYPES()["required"]["vgg19"][0] == ["none", "vgg19_tiny.safetensors"]


# ---------------------------------------------------------------------------------------------------- conditioning
def test_a_prompt_longer_than_the_text_tower_reads_is_said(nodes, pack, text_model, monkeypatch, caplog):
    """SigLIP reads 64 tokens: two long prompts that differ only after that encode alike, which the node and
    the log now say (before: silently)."""
    helpers = importlib.import_module(PACK_NAME + ".nodes.comfy_helpers")
    shown = []
    monkeypatch.setattr(helpers.Progress, "text", lambda self, message: shown.append(message))
    long = "an oil painting " * 40
    with torch.inference_mode(), caplog.at_level(logging.WARNING, logger="stylemamba"):
        red = nodes["StyleMambaTextConditioning"]().encode(text_model, long + "in red", "a plain photo", "3")[0]
        blue = nodes["StyleMambaTextConditioning"]().encode(text_model, long + "in blue", "a plain photo", "3")[0]
        nodes["StyleMambaTextConditioning"]().encode(text_model, "in red", "a plain photo", "3")
    assert torch.equal(red.embeddings, blue.embeddings)  # what the warning is for
    assert len(shown) == 2 and shown[0].startswith("prompt too long: its end '") and "in red' is ignored" in shown[0]
    assert caplog.text.count("tokens SIGLIP reads: its end") == 2


def test_text_conditioning_and_mix(nodes, text_model):
    enc, mix = nodes["StyleMambaTextConditioning"](), nodes["StyleMambaConditioningMix"]()
    with torch.inference_mode():
        a = enc.encode(text_model, "oil   painting\n", "a plain photo")[0]
        b = enc.encode(text_model, "pop art", "a plain photo")[0]
        ab = mix.mix(a, b, 0.25)[0]
        only_a = mix.mix(a, b, 0.0)[0]
        abb = mix.mix(ab, b, 0.5)[0]
    assert a.prompts == ("oil painting",) and a.embeddings.shape == (1, text_model.embed_dim)
    assert torch.allclose(a.embeddings.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert ab.prompts == ("oil painting", "pop art") and ab.weights == pytest.approx((0.75, 0.25))
    assert only_a.prompts == ("oil painting",)
    assert abb.prompts == ("oil painting", "pop art", "pop art")
    assert abb.weights == pytest.approx((0.375, 0.125, 0.5))
    # what training follows when given the prompts as text (TextDirection.encode, as train_style does); the node's
    # embeddings must give the same direction, or they are dead data
    direction_mod = importlib.import_module(PACK_NAME + ".stylemamba.direction")
    encoded = direction_mod.TextDirection.encode(text_model, list(abb.prompts), list(abb.weights), abb.source_prompt)
    e_t, e_src = encoded.e_t, encoded.e_src
    w = torch.tensor(abb.weights)[:, None]
    torch.testing.assert_close(torch.nn.functional.normalize((w * abb.embeddings).sum(0), dim=-1), e_t, atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(abb.source_embedding, e_src, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="different source prompts"):
        mix.mix(a, enc.encode(text_model, "pop art", "a photo")[0], 0.5)
    with pytest.raises(ValueError, match="empty style prompt"):
        enc.encode(text_model, "  \n", "a plain photo")


# ---------------------------------------------------------------------------------------------------- training
def test_train_node_outputs_a_style_and_a_loss_curve(trained, vae, text_model):
    style, curve = trained["style"], trained["curve"]
    assert curve.shape[0] == 1 and curve.shape[-1] == 3 and curve.dtype == torch.float32
    assert 0.0 <= float(curve.min()) and float(curve.max()) <= 1.0 and float(curve.std()) > 0.01
    assert style.metadata["prompts"] == ["oil painting"] and style.metadata["steps"] == 2
    assert style.metadata["perceptual"] == {"vgg": "vgg19_tiny.safetensors"}
    assert style.metadata["losses_skipped"] == ["lpips"]  # decided and recorded once, by the trainer
    assert "vgg" in style.metadata["final_losses"]
    assert max(float(d.abs().max()) for d in style.decoder_delta.values()) > 0  # the decoder copy was trained
    after = vae.first_stage_model.decoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in trained["decoder_before"].items())  # shared VAE untouched
    assert text_model.device.type == "cpu"  # moved back after training


def test_train_node_says_a_skipped_loss_once(nodes, vae, text_model, caplog):
    """The node says which content losses it skips, naming its input; the library said it again in its own words."""
    from conftest import load_photo

    with torch.inference_mode(), caplog.at_level(logging.WARNING, logger="stylemamba"):
        cond = nodes["StyleMambaTextConditioning"]().encode(text_model, "watercolor", "a plain photo")[0]
        images = comfy_images(load_photo("astronaut", (48, 56)))
        style, _ = nodes["StyleMambaTrain"]().train(vae, text_model, cond, images, **train_args())
    assert style.metadata["losses_skipped"] == ["vgg", "lpips"]
    for name in ("VGG", "LPIPS"):
        said = [m for m in (r.getMessage() for r in caplog.records)
                if any(f in m for f in (f"{name} loss skipped", f"{name} content loss skipped", f"the {name} loss is"))]
        assert len(said) == 1 and "connect Load VGG/LPIPS" in said[0], said


def test_training_networks_are_one_managed_model_per_set(pack, text_model):
    """The text model, VGG and LPIPS go to ComfyUI's model management as one container, the same for the same
    networks (so they stay loaded between trainings), replaced when the set changes; None entries left out."""
    caches = sys.modules[PACK_NAME + ".nodes.caches"]
    vgg, lpips = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3)
    first, patcher = caches.training_networks([text_model, None, lpips], torch.device("cpu"))
    assert list(first.nets) == [text_model, lpips] and patcher is None  # no ComfyUI here: the node moves them back
    assert caches.training_networks([text_model, None, lpips], torch.device("cpu"))[0] is first
    moved = []
    first.to = lambda device: moved.append(device)  # the replaced set goes off the GPU before ComfyUI forgets it
    other = caches.training_networks([text_model, vgg, lpips], torch.device("cpu"))[0]
    assert moved == [torch.device("cpu")]
    assert other is not first and list(other.nets) == [text_model, vgg, lpips] and len(caches._training_networks) == 1
    assert dict(other.named_parameters()).keys() >= {"nets.1.weight", "nets.2.weight"}


def test_training_networks_let_the_kept_trainer_go_when_they_move(pack):
    """The Train node keeps the last style's trainer (its GPU memory, graphs over these weights) in the networks'
    container; ComfyUI unloading the container, or any conversion that puts the weights elsewhere, releases it."""
    caches = sys.modules[PACK_NAME + ".nodes.caches"]
    container = caches.TrainingNetworks([torch.nn.Conv2d(3, 4, 3)])
    kept = types.SimpleNamespace(graphs="graphs", opt=torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1),
                                 model="model", device=torch.device("cpu"))
    container.workspace._trainer, container.workspace._kind = kept, ("a kind of style",)
    container.to("cpu")  # already there: nothing moves, the trainer stays
    assert container.workspace.holds
    container.to(torch.float64)  # new storages, as a move to another device
    assert not container.workspace.holds and kept.graphs is None and kept.model is None and kept.opt is None


def test_train_node_vgg_reduction_reaches_the_recipe(nodes, vae, text_model, photo, monkeypatch):
    """Workflows saved before the vgg_reduction input (released names, 9000 -> 150) train; choosing "mean" gives
    them the raw units they were trained with, and without the input the library's default units apply."""
    seen = []

    def capture(*args, **kwargs):
        seen.append(args[4].loss)
        raise RuntimeError("captured")

    monkeypatch.setattr(importlib.import_module(PACK_NAME + ".stylemamba.train"), "train_style", capture)
    with torch.inference_mode():
        cond = nodes["StyleMambaTextConditioning"]().encode(text_model, "pop art", "a plain photo")[0]
        for extra in ({}, {"vgg_reduction": "mean"}):
            with pytest.raises(RuntimeError, match="captured"):
                nodes["StyleMambaTrain"]().train(vae, text_model, cond, comfy_images(photo), **train_args(seed=7),
                                                 **extra)
    assert [(lc.vgg_reduction, lc.vgg_weight_start, lc.vgg_weight_end) for lc in seen] == [
        ("relative", 9000.0, 150.0), ("mean", 9000.0, 150.0)]


def test_train_node_refuses_a_conditioning_of_another_text_model(nodes, vae, text_model, photo):
    with torch.inference_mode():
        clip = nodes["StyleMambaLoadTextModel"]().load("tiny-clip", "")[0]
        cond = nodes["StyleMambaTextConditioning"]().encode(clip, "pop art", "a plain photo")[0]
        with pytest.raises(ValueError, match="same Load SigLIP/CLIP node"):
            nodes["StyleMambaTrain"]().train(vae, text_model, cond, comfy_images(photo), **train_args())


def test_train_node_names_its_own_inputs_when_every_style_weight_is_0(nodes, vae, text_model, photo):
    """The library's refusal named its recipe fields (loss.dir, ...), which the node does not show."""
    with torch.inference_mode():
        cond = nodes["StyleMambaTextConditioning"]().encode(text_model, "pop art", "a plain photo")[0]
        with pytest.raises(ValueError, match=r"^dir_weight, patch_weight, md_weight, so_weight are all 0: .*the "
                                             r"defaults are dir_weight 500, patch_weight 500"):
            nodes["StyleMambaTrain"]().train(vae, text_model, cond, comfy_images(photo),
                                             **train_args(dir_weight=0.0, patch_weight=0.0, md_weight=0.0,
                                                          so_weight=0.0))


def test_train_node_cancel_raises_the_interrupt(nodes, pack, vae, text_model, photo, small_fusion, monkeypatch):
    ch = sys.modules[PACK_NAME + ".nodes.comfy_helpers"]
    calls = []

    def interrupted():
        calls.append(1)
        return len(calls) > 1  # the user presses Cancel during the first step

    monkeypatch.setattr(ch, "interrupted", interrupted)
    with torch.inference_mode():
        cond = nodes["StyleMambaTextConditioning"]().encode(text_model, "pop art", "a plain photo")[0]
        with pytest.raises(ch.CancelledWithoutComfy):
            nodes["StyleMambaTrain"]().train(vae, text_model, cond, comfy_images(photo),
                                             **train_args(epochs=5, n_crops=1))
    assert len(calls) == 2  # stopped before the second step


def test_train_node_turns_out_of_memory_into_advice(nodes, pack, vae, text_model, photo, monkeypatch):
    train_mod = importlib.import_module(PACK_NAME + ".stylemamba.train")

    def oom(*args, **kwargs):  # the GPU runs out inside a training step
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_mod.StyleTrainer, "step", oom)
    with torch.inference_mode():
        cond = nodes["StyleMambaTextConditioning"]().encode(text_model, "pop art", "a plain photo")[0]
        # an OOM type (ComfyUI frees its models on it) with advice the node's inputs can follow
        with pytest.raises(torch.cuda.OutOfMemoryError, match="Lower 'resolution'"):
            nodes["StyleMambaTrain"]().train(vae, text_model, cond, comfy_images(photo), **train_args())


# ---------------------------------------------------------------------------------------------------- style files
def test_save_style_sanitises_the_name_never_overwrites_and_never_duplicates(nodes, trained, models_dir):
    save = nodes["StyleMambaSaveStyle"]()
    style = trained["style"]
    other = dataclasses.replace(style, embedding=style.embedding + 0.01)  # a different style
    first = save.save(style, "../../outside/évil ünïcode 名前: a/b")
    assert first["result"] == ("outside_évil ünïcode 名前_ a_b_00001.safetensors",)  # never a folder, nothing dropped
    first = save.save(other, "évil ünïcode 名前")
    assert first["result"] == ("évil ünïcode 名前_00001.safetensors",)  # Unicode letters are kept
    again = save.save(other, "another name")  # the identical style is recognised on disk
    assert again["result"] == first["result"] and "nothing written" in again["ui"]["text"][0]
    second = save.save(dataclasses.replace(other, embedding=other.embedding + 0.01), "évil ünïcode 名前")
    assert second["result"] == ("évil ünïcode 名前_00002.safetensors",)  # never overwritten: numbered
    folder = models_dir / "stylemamba"
    assert sorted(p.name for p in folder.iterdir()) == ["outside_évil ünïcode 名前_ a_b_00001.safetensors",
                                                        "évil ünïcode 名前_00001.safetensors",
                                                        "évil ünïcode 名前_00002.safetensors"]
    assert not (models_dir.parent / "outside").exists()
    assert "évil ünïcode 名前_00002.safetensors" in nodes["StyleMambaLoadStyle"].INPUT_TYPES()["required"]["style_name"][0]
    load = nodes["StyleMambaLoadStyle"]()  # each style is named after its file (before: both 'évil ünïcode 名前')
    assert [load.load(name)[0].name for name in ("évil ünïcode 名前_00001.safetensors",
                                                 "évil ünïcode 名前_00002.safetensors")] == \
        ["évil ünïcode 名前_00001", "évil ünïcode 名前_00002"]


def test_a_new_style_never_takes_a_name_another_style_folder_has(nodes, pack, trained, tmp_path, monkeypatch):
    """With a stylemamba folder in extra_model_paths.yaml (ComfyUI lists it first), Save Style writes there; a
    name the models folder already has would hide that style from Load Style and every saved workflow."""
    helpers = importlib.import_module(PACK_NAME + ".nodes.comfy_helpers")
    extra, default = tmp_path / "extra", tmp_path / "models_stylemamba"
    default.mkdir()
    (default / "StyleMamba_00001.safetensors").write_bytes(b"the user's Van Gogh style")
    monkeypatch.setattr(helpers, "folder_paths_for", lambda kind: [str(extra), str(default)])
    style = dataclasses.replace(trained["style"], embedding=trained["style"].embedding + 0.02)
    saved = nodes["StyleMambaSaveStyle"]().save(style, "StyleMamba")
    assert saved["result"] == ("StyleMamba_00002.safetensors",)  # before: StyleMamba_00001 in extra/
    assert (extra / "StyleMamba_00002.safetensors").is_file()
    assert (default / "StyleMamba_00001.safetensors").read_bytes() == b"the user's Van Gogh style"


def test_a_missing_style_file_says_where_styles_go_and_how_to_get_one(nodes, trained, models_dir):
    """ComfyUI's own check of a combo said only "Value not in list: ... not in []" for a shared workflow whose
    style is not here (or an empty models/stylemamba)."""
    name = nodes["StyleMambaSaveStyle"]().save(trained["style"], "validated")["result"][0]
    assert nodes["StyleMambaLoadStyle"].VALIDATE_INPUTS(name) is True
    message = nodes["StyleMambaLoadStyle"].VALIDATE_INPUTS("StyleMamba_00099.safetensors")
    assert message.startswith("style file 'StyleMamba_00099.safetensors' not found in ") and \
        str(models_dir / "stylemamba") in message and "train one with Train Style -> Save Style" in message
    message = nodes["StyleMambaLoadUniversalModel"].VALIDATE_INPUTS("StyleMamba_universal.safetensors")
    assert "universal model file" in message and "python -m stylemamba train-universal" in message


def test_load_style_round_trip_and_clear_errors(nodes, trained, models_dir):
    from safetensors.torch import save_file

    name = nodes["StyleMambaSaveStyle"]().save(trained["style"], "roundtrip")["result"][0]
    load = nodes["StyleMambaLoadStyle"]()
    style, info = load.load(name)
    assert style.metadata["prompts"] == ["oil painting"] and "prompts: 'oil painting'" in info
    assert torch.allclose(style.embedding, trained["style"].embedding)
    assert nodes["StyleMambaLoadStyle"].IS_CHANGED(name) != ""
    folder = models_dir / "stylemamba"
    (folder / "broken.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    save_file({"encoder.conv_in.weight": torch.zeros(2, 3, 3, 3)}, str(folder / "a_vae.safetensors"))
    style_file = importlib.import_module(PACK_NAME + ".stylemamba.style_file")
    # the node raises built-in types (ComfyUI shows "ValueError: ...", not our install path); the cause is kept
    with pytest.raises(ValueError, match="corrupt") as info:
        load.load("broken.safetensors")
    assert comfy_type_name(info.value) == "ValueError" and isinstance(info.value.__cause__, style_file.StyleFileError)
    with pytest.raises(ValueError, match="not a StyleMamba style file .*a VAE") as info:
        load.load("a_vae.safetensors")
    assert comfy_type_name(info.value) == "ValueError"


def comfy_type_name(exc: BaseException) -> str:
    """How ComfyUI's execution.py (full_type_name) names an exception type in the UI."""
    klass = type(exc)
    return klass.__qualname__ if klass.__module__ == "builtins" else klass.__module__ + "." + klass.__qualname__


def test_node_errors_reach_comfyui_as_builtin_types_and_oom_stays_oom(pack):
    nodes_pkg = sys.modules[PACK_NAME + ".nodes"]
    errors = importlib.import_module(PACK_NAME + ".stylemamba.errors")
    vae_mod = importlib.import_module(PACK_NAME + ".stylemamba.vae")
    ch = sys.modules[PACK_NAME + ".nodes.comfy_helpers"]
    shown = nodes_pkg.shown_as_builtin(vae_mod.ModelFileError("VAE file not found: x"))
    assert comfy_type_name(shown) == "FileNotFoundError" and str(shown) == "VAE file not found: x"
    ours = errors.stylizing_out_of_memory("1 image(s) of 64x64", 4, 1024)
    oom = nodes_pkg.shown_as_builtin(ours)
    assert type(oom) is torch.cuda.OutOfMemoryError and str(oom) == str(ours)  # ComfyUI unloads on it
    for foreign in (RuntimeError("torch says"), ch.CancelledWithoutComfy("cancelled"), KeyError("k")):
        assert nodes_pkg.shown_as_builtin(foreign) is foreign  # not ours, or ComfyUI's interrupt: unchanged


def test_stylize_out_of_memory_suggests_only_what_would_help(nodes, pack, trained, vae, photo, monkeypatch):
    """One 64 px picture with batch_size 4 and tile_size 1024: lowering either changes nothing, yet both were
    advised."""
    stylize_mod = importlib.import_module(PACK_NAME + ".stylemamba.stylize")

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(stylize_mod, "stylize_images", out_of_memory)
    with torch.inference_mode(), pytest.raises(torch.cuda.OutOfMemoryError) as info:
        nodes["StyleMambaStylize"]().stylize(trained["style"], vae, comfy_images(photo), 1.0, 1024, 4)
    message = str(info.value)
    assert "while stylising 1 image(s) of 64x64" in message, message
    assert "batch_size" not in message and "tile_size" not in message, message


# ---------------------------------------------------------------------------------------------------- stylise
def test_an_empty_mask_is_said_on_the_node(nodes, pack, trained, vae, photo_loader, monkeypatch):
    """Load Image gives an all-zero MASK for a picture nobody painted: Stylize then changes nothing, which the
    node says where the user looks (before: one console line)."""
    helpers = importlib.import_module(PACK_NAME + ".nodes.comfy_helpers")
    shown = []
    monkeypatch.setattr(helpers.Progress, "text", lambda self, message: shown.append(message))
    images = comfy_images(photo_loader("astronaut", (40, 48)))
    with torch.inference_mode():
        out = nodes["StyleMambaStylize"]().stylize(trained["style"], vae, images, 1.0, 1024, 1,
                                                   mask=torch.zeros(1, 40, 48), unique_id="7")[0]
    assert torch.equal(out, images)
    assert shown == ["the mask is empty, so nothing is stylised: paint the area in the Mask Editor, or disconnect "
                     "mask to stylise the whole image"]


def test_stylize_any_size_batch_with_mask_and_strength(nodes, trained, vae, photo_loader):
    stylize = nodes["StyleMambaStylize"]()
    images = comfy_images(torch.cat([photo_loader("astronaut", (44, 60)), photo_loader("coffee", (44, 60))]))
    with torch.inference_mode():
        out = stylize.stylize(trained["style"], vae, images, 1.0, 1024, 1)[0]
        mask = torch.zeros(1, 22, 30)
        mask[:, :, 15:] = 1.0  # right half, at half resolution: the node resizes masks to the image
        masked = stylize.stylize(trained["style"], vae, images, 1.0, 1024, 4, mask=mask)[0]
        recon = stylize.stylize(trained["style"], vae, images, 0.0, 1024, 4)[0]
        wide = comfy_images(photo_loader("rocket", (40, 296)))
        tiled = stylize.stylize(trained["style"], vae, wide, 1.0, 256, 4)[0]  # wider than a tile: tiled VAE
    assert out.shape == images.shape == masked.shape and out.dtype == torch.float32
    # the node gives the library's pixels (sizes that are not multiples of 8, batches, tiles, strength 0)
    lib = importlib.import_module(PACK_NAME + ".stylemamba.stylize")
    sdvae = sys.modules[PACK_NAME + ".nodes.comfy_helpers"].prepare_vae(vae)
    x = images.permute(0, 3, 1, 2).clone()
    torch.testing.assert_close(out, lib.stylize(x, sdvae, trained["style"]).permute(0, 2, 3, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recon, lib.stylize(x, sdvae, trained["style"], strength=0.0).permute(0, 2, 3, 1),
                               atol=1e-5, rtol=1e-5)
    assert float((out - recon).abs().max()) > 0.01  # the trained style changes the picture
    assert torch.allclose(masked[:, :, :28], images[:, :, :28], atol=1e-5)  # left of the mask: original pixels
    assert torch.allclose(masked[:, :, 32:], out[:, :, 32:], atol=1e-4)  # inside: the style
    assert tiled.shape == wide.shape
    torch.testing.assert_close(tiled, lib.stylize(wide.permute(0, 3, 1, 2).clone(), sdvae, trained["style"],
                                                  tile_size=256).permute(0, 2, 3, 1), atol=1e-5, rtol=1e-5)


def test_mix_styles_and_stylize_latent(nodes, trained, vae, photo):
    other = trained["style"].__class__(trained["style"].fusion_config, trained["style"].fusion_state,
                                       {k: -v for k, v in trained["style"].decoder_delta.items()},
                                       trained["style"].embedding, dict(trained["style"].metadata))
    images = comfy_images(photo)
    with torch.inference_mode():
        mixed = nodes["StyleMambaMixStyles"]().mix(trained["style"], other, 0.5)[0]
        by_weights = nodes["StyleMambaMixStyles"]().mix(trained["style"], other, 0.5, "weights")[0]
        out_by_weights = nodes["StyleMambaStylize"]().stylize(by_weights, vae, images, 1.0, 1024, 4)[0]
        only_a = nodes["StyleMambaMixStyles"]().mix(trained["style"], other, 0.0)[0]
        out_a = nodes["StyleMambaStylize"]().stylize(trained["style"], vae, images, 1.0, 1024, 4)[0]
        out_only_a = nodes["StyleMambaStylize"]().stylize(only_a, vae, images, 1.0, 1024, 4)[0]
        out_mix = nodes["StyleMambaStylize"]().stylize(mixed, vae, images, 1.0, 1024, 4)[0]
        latent = nodes["StyleMambaVAEEncode"]().encode(vae, images)[0]
        from_latent = nodes["StyleMambaStylizeLatent"]().decode(trained["style"], vae, latent, 1.0)[0]
    assert mixed.weights == (0.5, 0.5) and only_a.weights == (1.0,)
    assert torch.allclose(out_only_a, out_a, atol=1e-5)
    lib = importlib.import_module(PACK_NAME + ".stylemamba.stylize")
    sdvae = sys.modules[PACK_NAME + ".nodes.comfy_helpers"].prepare_vae(vae)
    expected = lib.stylize(photo, sdvae, [trained["style"], other], weights=[0.5, 0.5]).permute(0, 2, 3, 1)
    torch.testing.assert_close(out_mix, expected, atol=1e-5, rtol=1e-5)  # the node mixes as the library does
    assert mixed.mode == "outputs" and by_weights.mode == "weights"  # blend_mode: the pictures by default
    expected = lib.stylize(photo, sdvae, [trained["style"], other], weights=[0.5, 0.5], blend="weights")
    torch.testing.assert_close(out_by_weights, expected.permute(0, 2, 3, 1), atol=1e-5, rtol=1e-5)
    assert float((out_by_weights - out_mix).abs().max()) > 1e-3
    assert float((out_mix - out_a).abs().max()) > 0.01
    assert latent["samples"].shape == (1, 4, 8, 8)
    assert from_latent.shape == images.shape
    assert torch.allclose(from_latent, out_a, atol=2e-3)  # same path as Stylize for sizes that are multiples of 8
    with pytest.raises(ValueError, match="mix of styles"):
        nodes["StyleMambaSaveStyle"]().save(mixed, "mix")
    with pytest.raises(ValueError, match="does not fit this VAE"):
        nodes["StyleMambaStylizeLatent"]().decode(trained["style"], vae, {"samples": torch.zeros(1, 16, 8, 8)}, 1.0)


def test_loss_curve_image_draws_every_term_and_survives_edge_cases(pack):
    plots = importlib.import_module(PACK_NAME + ".stylemamba.plots")
    blank = plots.loss_curve_image([])
    single = plots.loss_curve_image([{"total": 5.0, "so": 0.0}])
    curve = plots.loss_curve_image([{"total": 1e4 / (i + 1), "dir": 0.7, "so": 0.0} for i in range(30)],
                                   width=320, height=200)
    assert blank.shape == single.shape == (3, 360, 640) and curve.shape == (3, 200, 320)
    assert 0.0 <= float(curve.min()) and float(curve.max()) <= 1.0
    assert not torch.equal(blank, single)

    def has_colour(img, rgb):
        target = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 255.0
        return bool(((img - target).abs().amax(dim=0) < 0.02).any())

    colours = plots._COLOURS
    assert has_colour(curve, colours[0]) and has_colour(curve, colours[1]) and has_colour(curve, colours[2])
    assert not has_colour(blank, colours[0])


# ---------------------------------------------------------------------------------------------------- caches, names
def test_stylize_reuses_the_built_style_across_calls(nodes, pack, trained, vae, photo, monkeypatch):
    style_model_mod = importlib.import_module(PACK_NAME + ".stylemamba.style_model")
    caches = sys.modules[PACK_NAME + ".nodes.caches"]
    caches.style_models.clear()
    built = []
    real = style_model_mod.StyleModel.from_styles

    def counting(*args, **kwargs):
        built.append(args[2:] + tuple(kwargs.values()))
        return real(*args, **kwargs)

    monkeypatch.setattr(style_model_mod.StyleModel, "from_styles", staticmethod(counting))
    images = comfy_images(photo)
    node = nodes["StyleMambaStylize"]()
    with torch.inference_mode():
        first = node.stylize(trained["style"], vae, images, 0.8, 1024, 4)[0]
        second = node.stylize(trained["style"], vae, images, 0.8, 1024, 4)[0]
        assert len(built) == 1  # the second call reused the style's decoder
        assert torch.equal(first, second)
        latent = nodes["StyleMambaVAEEncode"]().encode(vae, images)[0]
        nodes["StyleMambaStylizeLatent"]().decode(trained["style"], vae, latent, 0.8)
        assert len(built) == 1  # Stylize Latent shares the cache
        other = node.stylize(trained["style"], vae, images, 0.5, 1024, 4)[0]  # another strength: another model
        assert len(built) == 2 and not torch.equal(other, first)
        node.stylize(trained["style"], vae, images, 0.3, 1024, 4)
        assert len(built) == 3 and len(caches.style_models.entries) == caches.STYLE_MODELS  # bounded
        again = node.stylize(trained["style"], vae, images, 0.8, 1024, 4)[0]  # evicted: built again, same pixels
    assert len(built) == 4 and torch.equal(again, first)


def test_a_kept_style_model_does_not_keep_a_dropped_vae_alive(nodes, trained, tiny_models, photo):
    """The cache key is the VAE's weights, but the kept model held the VAE it was built with: ComfyUI dropping that
    VAE and loading the same file again left the old encoder and decoder alive, outside its memory accounting."""
    import gc
    import weakref

    from diffusers import AutoencoderKL

    def load_vae_file():
        with torch.inference_mode():
            return FakeComfyVAE(AutoencoderKL.from_pretrained(str(tiny_models["vae"])).eval())
    caches = sys.modules[PACK_NAME + ".nodes.caches"]
    caches.style_models.clear()
    images, node = comfy_images(photo), nodes["StyleMambaStylize"]()
    first_vae = load_vae_file()
    with torch.inference_mode():
        first = node.stylize(trained["style"], first_vae, images, 0.8, 1024, 4)[0]
    dropped = weakref.ref(first_vae.first_stage_model.encoder)
    del first_vae
    again = load_vae_file()
    with torch.inference_mode():
        second = node.stylize(trained["style"], again, images, 0.8, 1024, 4)[0]
    gc.collect()
    assert len(caches.style_models.entries) == 1 and torch.equal(first, second)  # the same model, reused
    assert dropped() is None
    caches.style_models.clear()


def test_stylize_does_no_garbage_collection_per_call(nodes, trained, vae, photo, monkeypatch):
    """A cycle collection per Stylize call took ~256 ms in a process holding the models (2.4x the whole call on
    the CPU); ComfyUI's prompt loop collects between prompts itself."""
    import gc

    collected = []
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(1) or 0)
    with torch.inference_mode():
        for _ in range(2):
            out = nodes["StyleMambaStylize"]().stylize(trained["style"], vae, comfy_images(photo), 1.0, 1024, 4)[0]
    assert collected == [] and torch.isfinite(out).all()


def test_the_vae_is_wrapped_and_fingerprinted_once(nodes, pack, trained, vae, photo, monkeypatch):
    """Each call wrapped ComfyUI's VAE anew and fingerprinted its decoder again (~1 s of an 0.88 s node Stylize on
    an H200 against 43 ms for the library, call N; and the training's per-process graph decision never applied)."""
    vae_mod = importlib.import_module(PACK_NAME + ".stylemamba.vae")
    ch = sys.modules[PACK_NAME + ".nodes.comfy_helpers"]
    fingerprinted = []
    real = vae_mod._fingerprint
    monkeypatch.setattr(vae_mod, "_fingerprint", lambda *a: fingerprinted.append(1) or real(*a))
    # another VAE object with the same weights (built from the config: the tiny model's init is deterministic)
    fresh = FakeComfyVAE(vae.first_stage_model.__class__.from_config(vae.first_stage_model.config).eval())
    with torch.inference_mode():
        for strength in (1.0, 0.9, 1.0):
            nodes["StyleMambaStylize"]().stylize(trained["style"], fresh, comfy_images(photo), strength, 1024, 4)
    assert ch.prepare_vae(fresh) is ch.prepare_vae(fresh, name="renamed.safetensors")
    # a caller that does not know the file name (VAE Encode) keeps the one a caller gave
    assert ch.prepare_vae(fresh).name == "renamed.safetensors" and ch.prepare_vae(vae) is not ch.prepare_vae(fresh)
    assert len(fingerprinted) == 1


def test_identical_training_is_not_repeated_after_another_prompt(nodes, pack, vae, text_model, small_fusion,
                                                                  monkeypatch):
    from conftest import load_photo

    train_mod = importlib.import_module(PACK_NAME + ".stylemamba.train")
    calls = []
    real = train_mod.train_style
    monkeypatch.setattr(train_mod, "train_style", lambda *a, **k: calls.append(1) or real(*a, **k))
    node = nodes["StyleMambaTrain"]()

    def train(seed, photo="astronaut"):
        with torch.inference_mode():
            cond = nodes["StyleMambaTextConditioning"]().encode(text_model, "pop art", "a plain photo")[0]
            images = comfy_images(load_photo(photo, (48, 56)))  # fresh tensors, as a new prompt brings
            return node.train(vae, text_model, cond, images, **train_args(epochs=1, n_crops=1, seed=seed))

    first = train(seed=7)
    other = train(seed=8)  # another prompt runs in between (ComfyUI forgets the first result)
    again = train(seed=7)
    assert len(calls) == 2 and again[0] is first[0] and torch.equal(again[1], first[1])
    assert other[0] is not first[0]
    train(seed=7, photo="coffee")  # other content pixels: trained
    assert len(calls) == 3


def test_vae_mismatch_names_the_vae_files_from_the_workflow(nodes, pack, trained, vae, photo, tiny_models):
    from diffusers import AutoencoderKL

    with torch.inference_mode():
        model = AutoencoderKL.from_pretrained(str(tiny_models["vae"])).eval()
        for p in model.decoder.parameters():
            p.add_(torch.randn_like(p) * float(p.abs().mean()) * 0.05)  # a fine-tune of the same architecture
    prompt = {"3": {"class_type": "VAELoader", "inputs": {"vae_name": "tuned-vae.safetensors"}},
              "9": {"class_type": "StyleMambaStylize", "inputs": {"vae": ["3", 0]}}}
    style = dataclasses.replace(trained["style"], metadata={**trained["style"].metadata,
                                                            "base_vae_name": "vae-ft-mse.safetensors"})
    caches = sys.modules[PACK_NAME + ".nodes.caches"]
    with torch.inference_mode():
        nodes["StyleMambaStylize"]().stylize(style, vae, comfy_images(photo), 1.0, 1024, 4)  # a good entry
    kept = list(caches.style_models.entries)
    with torch.inference_mode(), pytest.raises(ValueError) as info:
        nodes["StyleMambaStylize"]().stylize(style, FakeComfyVAE(model), comfy_images(photo), 1.0, 1024, 4,
                                             unique_id="9", prompt=prompt)
    assert list(caches.style_models.entries) == kept  # the refused VAE evicted nothing
    message = str(info.value)
    assert "'vae-ft-mse.safetensors' (weights " in message and "'tuned-vae.safetensors' (weights " in message
    ids = [part.split(")")[0] for part in message.split("(weights ")[1:]]
    assert len(ids) == 2 and ids[0] != ids[1]
    ch = sys.modules[PACK_NAME + ".nodes.comfy_helpers"]
    ckpt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
            "2": {"class_type": "StyleMambaTrain", "inputs": {"vae": ["1", 2]}}}
    assert ch.linked_file_name(ckpt, "2", "vae") == "sd15.safetensors (checkpoint's VAE)"
    assert ch.linked_file_name(None, None, "vae") == "" and ch.linked_file_name(ckpt, "1", "vae") == ""


def test_nan_pixels_are_an_error_in_the_nodes(nodes, trained, vae, text_model, photo):
    bad = photo.clone()
    bad[0, 1, 3, 5] = float("nan")
    bad[0, 0, 7, 7] = float("inf")
    with torch.inference_mode():
        cond = nodes["StyleMambaTextConditioning"]().encode(text_model, "pop art", "a plain photo")[0]
        with pytest.raises(ValueError, match="2 NaN or infinite pixel value"):
            nodes["StyleMambaStylize"]().stylize(trained["style"], vae, comfy_images(bad), 1.0, 1024, 4)
        with pytest.raises(ValueError, match="NaN or infinite"):
            nodes["StyleMambaTrain"]().train(vae, text_model, cond, comfy_images(bad), **train_args())


def test_train_node_cpu_preset(nodes, pack, vae, text_model, photo, monkeypatch):
    train_mod = importlib.import_module(PACK_NAME + ".stylemamba.train")
    seen = {}

    def capture(vae, text, content, prompts, config, **kwargs):
        seen["config"] = config
        raise RuntimeError("stop here")

    monkeypatch.setattr(train_mod, "train_style", capture)
    with torch.inference_mode():
        cond = nodes["StyleMambaTextConditioning"]().encode(text_model, "pop art", "a plain photo")[0]
        with pytest.raises(RuntimeError, match="stop here"):
            nodes["StyleMambaTrain"]().train(vae, text_model, cond, comfy_images(photo), preset="cpu",
                                             **train_args(resolution=512, n_crops=64))
    cfg = seen["config"]
    assert (cfg.resolution, cfg.loss.n_crops, cfg.fusion.width, cfg.fusion.depth) == (256, 16, 128, 2)
    assert cfg.epochs == 2 and cfg.loss.mask_ratio == 0.5  # the rest of the recipe is the widgets'


def test_loss_curve_title_is_wrapped_not_cut(pack):
    plots = importlib.import_module(PACK_NAME + ".stylemamba.plots")
    title = "StyleMamba: " + ", ".join(["Van Gogh's starry night with swirling blue sky"] * 3 + ["évil ünïcode"])
    lines = plots.title_lines(title, lambda text: 6.0 * len(text), 624)
    assert len(lines) == 2 and " ".join(lines) == title and all(6.0 * len(line) <= 624 for line in lines)
    many = plots.title_lines("word " * 400, lambda text: 6.0 * len(text), 624)
    assert len(many) == 3 and many[-1].endswith("…") and all(6.0 * len(line) <= 624 for line in many)
    image = plots.loss_curve_image([{"total": 1.0}, {"total": 0.5}], title=title)
    assert image.shape == (3, 360, 640)


# ---------------------------------------------------------------------------------------------------- zero-shot
@pytest.fixture(scope="module")
def universal_file(pack, models_dir, tiny_models):
    """A tiny universal model trained with the library (as `train-universal` does), saved in models/stylemamba/."""
    from conftest import load_photo

    lib = lambda name: importlib.import_module(f"{PACK_NAME}.stylemamba.{name}")  # noqa: E731
    train_mod = lib("train")  # small_fusion may have replaced TrainConfig by a partial: subclass the real one
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "TrainConfig", getattr(train_mod.TrainConfig, "func", train_mod.TrainConfig))
        lib("universal")
    vae = lib("vae").load_vae(tiny_models["vae"])
    text = lib("encoders").load_text_image_encoder(tiny_models["siglip"])
    cfg = lib("universal").UniversalConfig(
        epochs=1, steps_per_epoch=2, batch_size=2, resolution=64, loss=lib("losses").LossConfig(n_crops=2,
        crop_fraction=0.5), fusion=lib("fusion").FusionConfig(width=16, depth=1, d_state=4))
    images = torch.cat([load_photo(n, 64) for n in ("astronaut", "coffee")])
    result = lib("universal").train_universal(vae, text, images, ["oil painting", "watercolor"], cfg)
    (models_dir / "stylemamba").mkdir(exist_ok=True)
    lib("style_file").save_universal(result.model, models_dir / "stylemamba" / "universal_tiny.safetensors")
    return "universal_tiny.safetensors"


def test_universal_model_with_a_prompt_or_a_reference_gives_styles_the_other_nodes_take(
        nodes, universal_file, trained, vae, text_model, photo, models_dir):
    from conftest import load_photo

    images = comfy_images(photo)
    with torch.inference_mode():
        model, info = nodes["StyleMambaLoadUniversalModel"]().load(universal_file)
        cond = nodes["StyleMambaTextConditioning"]().encode(text_model, "a watercolor painting", "a plain photo")[0]
        style = nodes["StyleMambaUniversalStyle"]().make(model, conditioning=cond)[0]
        other = nodes["StyleMambaUniversalStyle"]().make(
            model, nodes["StyleMambaTextConditioning"]().encode(text_model, "pop art", "a plain photo")[0])[0]
        ref = comfy_images(load_photo("coffee", (40, 48)))
        by_ref = nodes["StyleMambaUniversalStyle"]().make(model, text_model=text_model, reference_image=ref)[0]
        ref_cond = nodes["StyleMambaReferenceConditioning"]().encode(text_model, ref, images, "a plain photo")[0]
        out = nodes["StyleMambaStylize"]().stylize(style, vae, images, 1.0, 1024, 4)[0]
        out_other = nodes["StyleMambaStylize"]().stylize(other, vae, images, 1.0, 1024, 4)[0]
        out_ref = nodes["StyleMambaStylize"]().stylize(by_ref, vae, images, 1.0, 1024, 4)[0]
        mixed = nodes["StyleMambaMixStyles"]().mix(style, trained["style"], 0.5)[0]
        out_mix = nodes["StyleMambaStylize"]().stylize(mixed, vae, images, 1.0, 1024, 4)[0]
        saved = nodes["StyleMambaSaveStyle"]().save(style, "from_universal")["result"][0]
        reloaded = nodes["StyleMambaLoadStyle"]().load(saved)[0]
    assert "trained over 2 prompts x 2 images" in info and "text model:" in info
    assert style.metadata["prompts"] == ["a watercolor painting"] and style.metadata["universal_model"] == universal_file
    assert torch.equal(style.embedding, cond.e_t) and style.fusion_state is model.fusion_state  # shared, not copied
    assert out.shape == images.shape and not torch.equal(out, out_other)  # the prompt enters the forward pass
    assert by_ref.metadata["prompts"] == ["reference image"] and out_ref.shape == images.shape
    assert ref_cond.embeddings.shape == (1, cond.embeddings.shape[1]) and ref_cond.prompts == ("reference image",)
    assert out_mix.shape == images.shape and torch.equal(reloaded.embedding, style.embedding)
    with pytest.raises(ValueError, match="universal StyleMamba model"):
        nodes["StyleMambaLoadStyle"]().load(universal_file)
    with pytest.raises(ValueError, match="not a universal model: load it with Load Style"):
        nodes["StyleMambaLoadUniversalModel"]().load(saved)
    with pytest.raises(ValueError, match="needs a style"):
        nodes["StyleMambaUniversalStyle"]().make(model)
    with pytest.raises(ValueError, match="not both"):
        nodes["StyleMambaUniversalStyle"]().make(model, conditioning=cond, reference_image=ref)
    with pytest.raises(ValueError, match="connect the text model"):
        nodes["StyleMambaUniversalStyle"]().make(model, reference_image=ref)
    clip = nodes["StyleMambaLoadTextModel"]().load("tiny-clip", "")[0]
    with torch.inference_mode():
        clip_cond = nodes["StyleMambaTextConditioning"]().encode(clip, "a watercolor painting", "a plain photo")[0]
    with pytest.raises(ValueError, match="trained with the text model"):
        nodes["StyleMambaUniversalStyle"]().make(model, conditioning=clip_cond)


def test_the_first_training_on_a_gpu_says_its_first_step_may_compile(pack, monkeypatch):
    """A machine's first run compiles the Triton kernels during the first step (~20 s without a step shown, callAS):
    the Train node says so the first time it trains on a GPU in a process, not on the CPU and not afterwards."""
    train_node = sys.modules[PACK_NAME + ".nodes.train_node"]
    monkeypatch.setattr(train_node, "_devices_trained_on", set())
    assert train_node.first_run_note(torch.device("cpu")) == ""
    assert "compiles GPU kernels" in train_node.first_run_note(torch.device("cuda", 0))
    assert train_node.first_run_note(torch.device("cuda", 0)) == ""
    assert "compiles GPU kernels" in train_node.first_run_note(torch.device("cuda", 1))
