"""Frozen perceptual networks of the content losses: VGG19 features and LPIPS.

Both load their weights from ``.safetensors`` files with torchvision's key names, so no code
path downloads anything or unpickles a user file. ``VGGFeatures`` feeds the VGG content loss
(CLIPstyler's conv4_2 + conv5_2, paper Sec. 3.2 "L_vgg"); ``LPIPSLoss`` wraps the ``lpips``
package (paper's "L_lpips").
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

log = logging.getLogger("stylemamba")

PathLike = Union[str, "os.PathLike[str]"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG19_WIDTHS = (64, 128, 256, 512, 512)
VGG19_CONVS_PER_BLOCK = (2, 2, 4, 4, 4)
VGG16_CONVS_PER_BLOCK = (2, 2, 3, 3, 3)


def _vgg_layout(widths: Sequence[int], convs_per_block: Sequence[int] = VGG19_CONVS_PER_BLOCK
                ) -> Tuple[List[nn.Module], Dict[str, int]]:
    """torchvision's ``vgg19().features`` (or ``vgg16()``) layers (same indices) and ``name -> index of the ReLU``.

    Index ``i`` of the list is ``features.i`` in torchvision's state dict: conv, ReLU pairs and
    a max-pool after each of the 5 blocks.
    """
    layers: List[nn.Module] = []
    relu_index: Dict[str, int] = {}
    in_ch = 3
    for block, (width, n_convs) in enumerate(zip(widths, convs_per_block), start=1):
        for j in range(1, n_convs + 1):
            layers.append(nn.Conv2d(in_ch, int(width), kernel_size=3, padding=1))
            layers.append(nn.ReLU(inplace=False))
            relu_index[f"conv{block}_{j}"] = len(layers) - 1
            in_ch = int(width)
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return layers, relu_index


class VGGFeatures(nn.Module):
    """Frozen VGG19 feature extractor in torchvision's ``features`` layout.

    ``forward(x01)`` takes ``(B, 3, H, W)`` images in [0, 1], normalises them with the ImageNet
    mean / std inside, and returns a LIST of activations, one per name in ``layers`` (in that
    order). A name ``"convK_J"`` returns the output of the ReLU after that convolution: this is
    what CLIPstyler's ``get_features`` effectively stores for conv4_2 / conv5_2 (torchvision's
    in-place ReLUs overwrite the saved conv output, and its index 31 is ReLU 5_2). The network
    runs only up to the deepest requested layer.

    ``widths``: the five block widths (default VGG19's 64, 128, 256, 512, 512); tests use a tiny
    variant such as ``(4, 8, 16, 32, 32)`` with the same layer names and state-dict keys
    (``features.N.weight`` / ``features.N.bias``, as torchvision). Weights come from
    :meth:`from_safetensors`; a fresh instance has random weights.

    ``convs_per_block`` (default VGG19's) and ``mean`` / ``std`` (the input normalisation, in [0, 1]
    units; default ImageNet's as torchvision) let other VGG checkpoints run unchanged, e.g. the
    original Caffe VGG16 (``VGG16_CONVS_PER_BLOCK``, mean = Caffe mean / 255, std = 1 / 255, with
    the first convolution's input channels in RGB order): ``stylemamba.testing.real_backbones``.
    """

    def __init__(self, layers: Sequence[str] = ("conv4_2", "conv5_2"), widths: Optional[Sequence[int]] = None,
                 convs_per_block: Sequence[int] = VGG19_CONVS_PER_BLOCK,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        widths = tuple(int(w) for w in (widths if widths is not None else VGG19_WIDTHS))
        if len(widths) != 5 or min(widths) < 1:
            raise ValueError(f"VGGFeatures: widths must be 5 positive channel counts, got {widths}")
        convs_per_block = tuple(int(n) for n in convs_per_block)
        if len(convs_per_block) != 5 or min(convs_per_block) < 1:
            raise ValueError(f"VGGFeatures: convs_per_block must be 5 positive counts, got {convs_per_block}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"VGGFeatures: mean and std must be 3 numbers (std > 0), got {mean}, {std}")
        modules, relu_index = _vgg_layout(widths, convs_per_block)
        layers = tuple(layers)
        if not layers:
            raise ValueError("VGGFeatures: at least one layer name is needed")
        unknown = [name for name in layers if name not in relu_index]
        if unknown:
            raise ValueError(f"VGGFeatures: unknown layers {unknown}; valid names: {list(relu_index)}")
        self.features = nn.Sequential(*modules)
        self.widths = widths
        self.convs_per_block = convs_per_block
        self.layer_names = layers
        self._indices = [relu_index[name] for name in layers]
        self._last = max(self._indices)
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGFeatures":
        """Always stays in eval mode: the network is a frozen measuring device."""
        return super().train(False)

    def forward(self, x01: torch.Tensor) -> List[torch.Tensor]:
        x = (x01 - self.mean.to(x01.dtype)) / self.std.to(x01.dtype)
        feats: Dict[int, torch.Tensor] = {}
        for idx, layer in enumerate(self.features):
            x = layer(x)
            if idx in self._indices:
                feats[idx] = x
            if idx >= self._last:
                break
        return [feats[idx] for idx in self._indices]

    # ----- weights ------------------------------------------------------------------------
    def save_safetensors(self, path: PathLike) -> None:
        """Save the weights as safetensors with torchvision's ``features.N.*`` keys."""
        from safetensors.torch import save_file

        from .image_io import write_whole

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        write_whole(path, lambda tmp: save_file(state, os.fspath(tmp)))

    @classmethod
    def from_safetensors(
        cls,
        path: PathLike,
        layers: Sequence[str] = ("conv4_2", "conv5_2"),
        device: Optional[Union[str, torch.device]] = None,
    ) -> "VGGFeatures":
        """Load a VGG19 ``features`` state dict (torchvision keys) from a safetensors file.

        The widths are read from the file, so full-size and tiny networks load alike. Missing
        file -> ``FileNotFoundError``; missing / unexpected keys or wrong shapes -> ``ValueError``.
        """
        path = os.fspath(path)
        if not os.path.exists(path):  # a folder: read_safetensors names it
            raise FileNotFoundError(
                f"VGG19 weights not found: {path!r}. Put there a .safetensors file holding "
                "torchvision's VGG19 `features.N.weight` / `features.N.bias` tensors (ImageNet "
                "weights, VGG19_Weights.IMAGENET1K_V1); on a machine with internet, "
                "stylemamba.perceptual.convert_torchvision_vgg19(path) writes it."
            )
        state = read_safetensors(path, "VGG19 weights")
        _refuse_other_network(state, path, "VGG19", "VGG content network (--vgg, the node's vgg19 input)")
        widths = _widths_from_state(state, path)
        model = cls(layers=layers, widths=widths)
        _load_strict(model, state, path, "VGG19 features")
        if device is not None:
            model = model.to(device)
        return model


# torchvision ``features`` convolutions per network: a file's count names what it holds
_CONVOLUTIONS = {5: "AlexNet", 13: "VGG16", 16: "VGG19"}
# where each network goes in this pack (the CLI flag, the Load VGG/LPIPS node's input)
_SLOT = {"VGG19": "the VGG content network (--vgg, the node's vgg19 input)",
         "VGG16": "the LPIPS backbone with --lpips vgg (--lpips-backbone, the node's lpips_backbone, lpips_net vgg)",
         "AlexNet": "the LPIPS backbone with --lpips alex (--lpips-backbone, the node's lpips_backbone, lpips_net alex)"}


def read_safetensors(path: str, what: str, fix: str = "get or convert it again (README: Models)"
                     ) -> Dict[str, torch.Tensor]:
    """A weight file's tensors; a damaged file (or a pickle under a .safetensors name) was a SafetensorError
    traceback, now a one-line error that ends with ``fix``. A folder is named as one (FileNotFoundError)."""
    from safetensors.torch import load_file

    if os.path.isdir(path):
        raise FileNotFoundError(f"{what} {path!r} is a folder, not a file: give the .safetensors file")
    try:
        return load_file(path)
    except Exception as exc:  # safetensors' own error type, not a subclass of anything more precise
        raise ValueError(f"{what} {path!r} is not a readable .safetensors file ({str(exc)[:120]}); it may be "
                         f"truncated, or a pickle under another name (never loaded): {fix}") from None


def _refuse_other_network(state: Dict[str, torch.Tensor], path: str, expected: str, slot: str) -> None:
    """A file of another known network (VGG16 picked as VGG19, VGG19 as an LPIPS backbone ...) is named as such,
    with where it belongs, instead of a list of missing and unexpected keys."""
    convs = sum(1 for k, v in state.items() if k.startswith("features.") and k.endswith(".weight") and v.dim() == 4)
    found = _CONVOLUTIONS.get(convs)
    if found is not None and found != expected:
        raise ValueError(f"{os.path.basename(path)} holds {found} weights ({convs} convolutions), not {expected} "
                         f"({slot}): pick it as {_SLOT[found]}, and a {expected} file here")


def _widths_from_state(state: Dict[str, torch.Tensor], path: str) -> Tuple[int, ...]:
    """Block widths = output channels of the first conv of each block (features 0, 5, 10, 19, 28)."""
    first_convs = (0, 5, 10, 19, 28)
    widths = []
    for idx in first_convs:
        key = f"features.{idx}.weight"
        if key not in state or state[key].dim() != 4:
            have = sorted(state)[:8]
            raise ValueError(
                f"{path!r} is not a torchvision VGG19 `features` state dict: missing or malformed "
                f"{key!r} (first keys in the file: {have})"
            )
        widths.append(int(state[key].shape[0]))
    return tuple(widths)


def _load_strict(module: nn.Module, state: Dict[str, torch.Tensor], path: str, what: str) -> None:
    """``load_state_dict`` that reports missing / unexpected keys and shape errors as ValueError."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or bad_shapes:
        raise ValueError(
            f"{path!r} does not match the {what}: missing keys {missing}, unexpected keys "
            f"{unexpected}, shape mismatches {bad_shapes}"
        )
    module.load_state_dict(state, strict=True)


def convert_torchvision_vgg19(out_path: PathLike) -> str:
    """Download torchvision's ImageNet VGG19 and save its ``features`` as safetensors.

    Needs internet (torchvision fetches ``VGG19_Weights.IMAGENET1K_V1`` into its cache); offline
    it raises ``RuntimeError`` saying so. Returns the written path.
    """
    from safetensors.torch import save_file

    try:
        import torchvision
    except ImportError as exc:  # pragma: no cover - torchvision is a dependency of lpips
        raise RuntimeError("convert_torchvision_vgg19 needs torchvision installed") from exc
    try:
        net = torchvision.models.vgg19(weights=torchvision.models.VGG19_Weights.IMAGENET1K_V1)
    except Exception as exc:
        raise RuntimeError(
            "could not get torchvision's VGG19_Weights.IMAGENET1K_V1 (no internet access or no "
            f"cached copy?): {exc}. Run this on a machine that can download it and copy "
            f"{os.fspath(out_path)!r} here."
        ) from exc
    state = {f"features.{k}": v.detach().cpu().contiguous() for k, v in net.features.state_dict().items()}
    out_path = os.fspath(out_path)
    from .image_io import write_whole

    write_whole(out_path, lambda tmp: save_file(state, os.fspath(tmp)))
    return out_path


class LPIPSLoss(nn.Module):
    """Frozen LPIPS distance (``lpips`` package, v0.1 linear heads) as a scalar loss.

    ``forward(y01, x01)`` takes images in [0, 1], maps them to [-1, 1] as LPIPS expects, and
    returns the mean LPIPS over the batch. The linear heads ship inside the ``lpips`` package;
    its backbone normally comes from torchvision's download, which we never trigger
    (``pnet_rand=True``): the backbone is loaded from ``backbone_path``, a safetensors file with
    torchvision's ``features.N.*`` keys of VGG16 (``net="vgg"``) or AlexNet (``net="alex"``), or
    with lpips' own ``net.sliceK.N.*`` keys. Without it, LPIPS runs on a RANDOM backbone (a
    warning is logged): fine for speed / memory benchmarks, meaningless for quality.
    """

    def __init__(self, net: str = "vgg", backbone_path: Optional[PathLike] = None,
                 device: Optional[Union[str, torch.device]] = None):
        super().__init__()
        if net not in ("vgg", "alex"):
            raise ValueError(f"LPIPSLoss: net must be 'vgg' or 'alex', got {net!r}")
        import lpips

        with warnings.catch_warnings():
            # torchvision warns about lpips' legacy `pretrained=` argument; harmless here.
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        self.net_name = net
        self.backbone_path: Optional[str] = None
        if backbone_path is not None:
            self.load_backbone(backbone_path)
        else:
            log.warning(
                "LPIPSLoss(%s): no backbone weights given, LPIPS runs with a RANDOM backbone "
                "(fine for speed benchmarks, wrong for quality)", net,
            )
        self.requires_grad_(False)
        self.eval()
        if device is not None:
            self.to(device)

    def train(self, mode: bool = True) -> "LPIPSLoss":
        """Always stays in eval mode (LPIPS' heads have dropout)."""
        return super().train(False)

    def _backbone_key_map(self) -> Dict[str, str]:
        """torchvision ``features.N.{weight,bias}`` -> lpips ``net.sliceK.N.{weight,bias}``.

        lpips builds each slice by re-registering torchvision's ``features[N]`` under the name
        ``str(N)``, so the index N is preserved; we read the mapping off the module itself.
        """
        mapping: Dict[str, str] = {}
        for slice_name, block in self.model.net.named_children():
            if not slice_name.startswith("slice"):
                continue
            for key in block.state_dict():
                mapping[f"features.{key}"] = f"net.{slice_name}.{key}"
        return mapping

    def load_backbone(self, path: PathLike) -> None:
        """Load backbone weights from a safetensors file (see class docstring for the keys)."""
        path = os.fspath(path)
        if not os.path.exists(path):  # a folder: read_safetensors names it
            arch = "VGG16" if self.net_name == "vgg" else "AlexNet"
            raise FileNotFoundError(
                f"LPIPS backbone weights not found: {path!r}. Put there a .safetensors file with "
                f"torchvision's ImageNet {arch} `features.N.weight` / `features.N.bias` tensors."
            )
        state = read_safetensors(path, "LPIPS backbone weights")
        expected = "VGG16" if self.net_name == "vgg" else "AlexNet"
        _refuse_other_network(state, path, expected, f"the LPIPS {self.net_name} backbone")
        mapping = self._backbone_key_map()
        lpips_keys = set(mapping.values())
        converted: Dict[str, torch.Tensor] = {}
        unexpected = []
        for key, value in state.items():
            if key in mapping:
                converted[mapping[key]] = value
            elif key in lpips_keys:
                converted[key] = value
            else:
                unexpected.append(key)
        missing = sorted(k for k in mapping if mapping[k] not in converted)
        own = self.model.state_dict()
        bad_shapes = sorted(
            f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in converted.items()
            if tuple(v.shape) != tuple(own[k].shape)
        )
        if missing or unexpected or bad_shapes:
            raise ValueError(
                f"{path!r} does not match the LPIPS {self.net_name} backbone: missing keys "
                f"{missing}, unexpected keys {sorted(unexpected)}, shape mismatches {bad_shapes}"
            )
        result = self.model.load_state_dict(converted, strict=False)
        assert not result.unexpected_keys, result.unexpected_keys
        self.backbone_path = path

    def target_features(self, x01: torch.Tensor) -> List[torch.Tensor]:
        """The backbone features of the images LPIPS compares against, for ``forward(target=)``.

        Why: training compares every step's output with the same content image; computing its features once per
        style instead of every step took the compiled step from 51.1 to 49.3 ms on an H200 (LPIPS-VGG16 at 512 px,
        bench/results/steady_h200/callAF, with the normalised features kept). They are kept as the backbone returns
        them (bf16 under autocast: 64 MB per 512 px image) and unit-normalised in each ``forward`` (in fp32 under
        autocast, 128 MB kept, the memory plan put an 8 GB card's 4 images in smaller micro-batches); that
        normalisation, a few elementwise passes, is not yet timed. Computed under the step's autocast and on the
        same images, ``forward`` gives what ``forward(y, x)`` gives (this class always builds lpips v0.1 with its
        linear heads)."""
        m = self.model
        return list(m.net(m.scaling_layer(x01 * 2.0 - 1.0)))

    def forward(self, y01: torch.Tensor, x01: Optional[torch.Tensor] = None,
                target: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Mean LPIPS between ``y01`` and ``x01``, or ``target`` = ``target_features(x01)`` computed earlier."""
        if target is None:
            if x01 is None:
                raise ValueError("LPIPSLoss: give the images to compare against (x01) or their target_features")
            return self.model(y01 * 2.0 - 1.0, x01 * 2.0 - 1.0, normalize=False).mean()
        import lpips

        feats = self.target_features(y01)  # the same backbone pass, on the output
        total = 0  # the layer terms summed in the package's order: the same value as forward(y01, x01)
        for k, (f, t) in enumerate(zip(feats, target)):
            diff = (lpips.normalize_tensor(f) - lpips.normalize_tensor(t)) ** 2
            total = total + lpips.spatial_average(self.model.lins[k](diff), keepdim=True)
        return total.mean()
