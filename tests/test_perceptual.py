"""Frozen perceptual networks: VGG19 features and LPIPS, with weights from safetensors."""

import logging

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file

from stylemamba.perceptual import LPIPSLoss, VGGFeatures

TINY = (4, 8, 16, 16, 16)


@pytest.fixture(scope="module")
def photos():
    """skimage's astronaut and chelsea, 48x48, (2, 3, 48, 48) in [0, 1]."""
    from skimage import data

    imgs = [torch.from_numpy(a).permute(2, 0, 1).float() / 255.0 for a in (data.astronaut(), data.chelsea())]
    return torch.cat([F.interpolate(i[None], size=(48, 48), mode="area") for i in imgs])


# ----- VGG -----------------------------------------------------------------------------------
def test_vgg_matches_torchvision_layout_and_layers():
    torch.manual_seed(0)
    tv_features = torchvision.models.vgg19(weights=None).features.eval()
    ours = VGGFeatures()
    expected_keys = {f"features.{k}" for k in tv_features.state_dict()}
    assert set(ours.state_dict()) == expected_keys
    ours.load_state_dict({f"features.{k}": v for k, v in tv_features.state_dict().items()})
    x = torch.rand(1, 3, 32, 32)
    normed = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        relu4_2 = tv_features[:23](normed)  # index 22 = ReLU after conv4_2 (index 21)
        relu5_2 = tv_features[:32](normed)  # index 31 = ReLU after conv5_2 (index 30)
        got = ours(x)
    assert [tuple(g.shape) for g in got] == [(1, 512, 4, 4), (1, 512, 2, 2)]
    torch.testing.assert_close(got[0], relu4_2)
    torch.testing.assert_close(got[1], relu5_2)


def test_vgg_tiny_roundtrip_through_safetensors(tmp_path, photos):
    torch.manual_seed(1)
    vgg = VGGFeatures(widths=TINY, layers=("conv1_1", "conv4_2", "conv5_2"))
    path = tmp_path / "vgg_tiny.safetensors"
    vgg.save_safetensors(path)
    assert all(k.startswith("features.") for k in load_file(str(path)))
    loaded = VGGFeatures.from_safetensors(path, layers=("conv1_1", "conv4_2", "conv5_2"))
    assert loaded.widths == TINY
    a, b = vgg(photos), loaded(photos)
    assert [tuple(f.shape) for f in a] == [(2, 4, 48, 48), (2, 16, 6, 6), (2, 16, 3, 3)]
    for fa, fb in zip(a, b):
        assert torch.equal(fa, fb)
        assert fa.min() >= 0  # post-ReLU activations
    fresh = VGGFeatures(widths=TINY, layers=("conv1_1",))
    assert not torch.equal(fresh(photos)[0], a[0])  # loading really changed the weights


def test_vgg_weights_cut_short_in_mid_write_leave_the_earlier_file_whole(tmp_path, monkeypatch):
    """save_safetensors wrote in place: a full disk in mid-write left a truncated VGG file where a good one was."""
    import safetensors.torch

    path = tmp_path / "vgg19.safetensors"
    VGGFeatures(widths=TINY).save_safetensors(path)
    before = path.read_bytes()

    def a_full_disk_half_way(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", a_full_disk_half_way)
    with pytest.raises(OSError, match="No space left"):
        VGGFeatures(widths=TINY).save_safetensors(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["vgg19.safetensors"]


def test_vgg_weights_are_readable_by_others_as_a_new_file_is(tmp_path):
    """safetensors writes 0600: a VGG file converted by one user was unreadable to a ComfyUI run as another."""
    import os
    import stat

    path = tmp_path / "vgg19.safetensors"
    umask = os.umask(0o022)
    try:
        VGGFeatures(widths=TINY).save_safetensors(path)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_vgg_is_frozen_but_passes_gradients(photos):
    vgg = VGGFeatures(widths=TINY)
    assert all(not p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    y = photos.clone().requires_grad_(True)
    loss = sum(f.square().mean() for f in vgg(y))
    loss.backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_vgg_errors(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors.*features.N.weight"):
        VGGFeatures.from_safetensors(missing)
    with pytest.raises(ValueError, match="unknown layers.*conv6_1"):
        VGGFeatures(layers=("conv6_1",), widths=TINY)
    state = {k: v.clone() for k, v in VGGFeatures(widths=TINY).state_dict().items()}
    state["features.2.kernel"] = state.pop("features.2.weight")
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(ValueError, match=r"missing keys \['features.2.weight'\].*unexpected keys \['features.2.kernel'\]"):
        VGGFeatures.from_safetensors(bad)
    state = {k: v.clone() for k, v in VGGFeatures(widths=TINY).state_dict().items()}
    state["features.2.weight"] = torch.zeros(4, 4, 1, 1)
    save_file(state, str(bad))
    with pytest.raises(ValueError, match="shape mismatches.*features.2.weight"):
        VGGFeatures.from_safetensors(bad)
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(bad))
    with pytest.raises(ValueError, match="not a torchvision VGG19"):
        VGGFeatures.from_safetensors(bad)


# ----- LPIPS ---------------------------------------------------------------------------------
def test_lpips_random_backbone_warns_and_measures(caplog, photos):
    with caplog.at_level(logging.WARNING, logger="stylemamba.perceptual"):
        loss_fn = LPIPSLoss(net="alex")
    assert "RANDOM backbone" in caplog.text
    assert all(not p.requires_grad for p in loss_fn.parameters())
    loss_fn.train()
    assert not loss_fn.training
    x = photos
    same = loss_fn(x, x)
    assert same.dim() == 0 and same.item() == pytest.approx(0.0, abs=1e-7)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    diff = loss_fn(y, x)
    assert diff.item() > 1e-4
    diff.backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_from_target_features_is_lpips_against_the_images(photos, net):
    """Training computes the content image's LPIPS features once per style: the distance and its gradient from them
    are the package's own, to the bit (fp64: the same operations in the same order)."""
    torch.manual_seed(0)
    loss_fn = LPIPSLoss(net=net).double()
    x = photos.double()
    target = loss_fn.target_features(x)
    assert len(target) == loss_fn.model.L and all(not t.requires_grad for t in target)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    results = []
    for kwargs in ({"x01": x}, {"target": target}):
        yy = y.clone().requires_grad_(True)
        value = loss_fn(yy, **kwargs)
        value.backward()
        results.append((value.detach(), yy.grad))
    assert results[0][0] > 1e-4
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="x01.*target_features"):
        loss_fn(y)


@pytest.mark.parametrize("net, builder", [("alex", torchvision.models.alexnet), ("vgg", torchvision.models.vgg16)])
def test_lpips_loads_torchvision_backbone(tmp_path, caplog, photos, net, builder):
    torch.manual_seed(0)
    features = builder(weights=None).features
    path = tmp_path / f"{net}.safetensors"
    save_file({f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}, str(path))
    with caplog.at_level(logging.WARNING, logger="stylemamba.perceptual"):
        loss_fn = LPIPSLoss(net=net, backbone_path=path)
    assert "RANDOM" not in caplog.text
    own = loss_fn.model.state_dict()
    for key, value in features.state_dict().items():
        idx = key.split(".")[0]
        matches = [k for k in own if k.startswith("net.slice") and k.endswith(f".{key}") and k.split(".")[2] == idx]
        assert len(matches) == 1, key
        assert torch.equal(own[matches[0]], value)
    if net == "vgg":
        return  # building another full VGG16 LPIPS is slow; alex checks the distance changes
    # the loaded backbone is the one in use: it changes the distance
    plain = LPIPSLoss(net=net)
    y = photos.flip(-1)
    assert loss_fn(y, photos).item() != pytest.approx(plain(y, photos).item())


def test_lpips_backbone_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        LPIPSLoss(net="alex", backbone_path=tmp_path / "missing.safetensors")
    vgg_tiny = tmp_path / "vgg_tiny.safetensors"
    VGGFeatures(widths=TINY).save_safetensors(vgg_tiny)
    # a file of another known network is named, with where it belongs (before: a list of missing / unexpected keys)
    with pytest.raises(ValueError, match=r"vgg_tiny.safetensors holds VGG19 weights \(16 convolutions\), not AlexNet "
                                         r".*pick it as the VGG content network \(--vgg, the node's vgg19 input\)"):
        LPIPSLoss(net="alex", backbone_path=vgg_tiny)
    vgg16 = tmp_path / "vgg16.safetensors"
    save_file({f"features.{i}.weight": torch.zeros(4, 4, 3, 3) for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)},
              str(vgg16))
    with pytest.raises(ValueError, match=r"vgg16.safetensors holds VGG16 weights \(13 convolutions\), not VGG19 .*"
                                         r"pick it as the LPIPS backbone with --lpips vgg"):
        VGGFeatures.from_safetensors(vgg16)
    with pytest.raises(ValueError, match="holds VGG16 weights .* not AlexNet"):
        LPIPSLoss(net="alex", backbone_path=vgg16)
    with pytest.raises(ValueError, match="net must be"):
        LPIPSLoss(net="squeeze")


def test_a_damaged_weight_file_or_a_folder_is_named_in_one_line(tmp_path):
    """Before: a damaged file (or a pickle renamed .safetensors) given as --vgg or --lpips-backbone was a
    SafetensorError traceback, and a folder was 'not found'."""
    damaged = tmp_path / "vgg19.safetensors"
    damaged.write_bytes(b"\x80\x04 a pickle by another name")
    with pytest.raises(ValueError, match="VGG19 weights .*vgg19.safetensors' is not a readable .safetensors file"):
        VGGFeatures.from_safetensors(damaged)
    with pytest.raises(ValueError, match="LPIPS backbone weights .* is not a readable .safetensors file"):
        LPIPSLoss(net="alex", backbone_path=damaged)
    with pytest.raises(FileNotFoundError, match="is a folder, not a file"):
        VGGFeatures.from_safetensors(tmp_path)
    with pytest.raises(FileNotFoundError, match="is a folder, not a file"):
        LPIPSLoss(net="alex", backbone_path=tmp_path)
