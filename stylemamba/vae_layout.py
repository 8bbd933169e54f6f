"""The two key layouts of SD-VAE weights: diffusers (``up_blocks.0.resnets.1``) and the original
LDM/CompVis one (``up.3.block.1``) that single files and ComfyUI use.

A style's decoder delta and a VAE's fingerprint are stored in the LDM layout, so a style trained
from a diffusers folder works on the same VAE loaded by ComfyUI, and the other way round.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch

_RESNET_LEAF = {"conv_shortcut": "nin_shortcut"}
_ATTN_LEAF = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_TOP_LEAF = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}


def ldm_key(key: str, num_levels: int) -> str:
    """One diffusers AutoencoderKL key (``encoder.``/``decoder.``/``*quant_conv.`` prefixed) -> its LDM name.

    LDM numbers decoder levels by resolution, diffusers by execution order, hence the reversal.
    Raises KeyError for a key it does not know.
    """
    if key.split(".", 1)[0] in ("quant_conv", "post_quant_conv"):
        return key
    part, rest = key.split(".", 1)  # "encoder" | "decoder"
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)", rest)
    if m:
        kind, level, j, layer, wb = m.groups()
        level = num_levels - 1 - int(level) if kind == "up" else int(level)
        return f"{part}.{kind}.{level}.block.{j}.{_RESNET_LEAF.get(layer, layer)}.{wb}"
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(?:downsamplers|upsamplers)\.0\.conv\.(weight|bias)", rest)
    if m:
        kind, level, wb = m.groups()
        level = num_levels - 1 - int(level) if kind == "up" else int(level)
        return f"{part}.{kind}.{level}.{kind}sample.conv.{wb}"
    m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(\w+)\.(weight|bias)", rest)
    if m:
        j, layer, wb = m.groups()
        return f"{part}.mid.block_{int(j) + 1}.{_RESNET_LEAF.get(layer, layer)}.{wb}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", rest)
    if m:
        layer, wb = m.groups()
        return f"{part}.mid.attn_1.{_ATTN_LEAF[layer]}.{wb}"
    m = re.fullmatch(r"(conv_in|conv_out|conv_norm_out)\.(weight|bias)", rest)
    if m:
        layer, wb = m.groups()
        return f"{part}.{_TOP_LEAF[layer]}.{wb}"
    raise KeyError(f"no LDM name known for diffusers VAE key {key!r}")


def is_diffusers_layout(keys: Iterable[str]) -> bool:
    return any("_blocks." in k or ".mid_block." in k for k in keys)


def _num_levels(keys: Iterable[str], part: str) -> int:
    levels = {int(m.group(1)) for k in keys for m in [re.match(rf"{part}\.(?:up|down)_blocks\.(\d+)\.", k)] if m}
    return max(levels) + 1 if levels else 0


def ldm_names(keys: Iterable[str]) -> dict[str, str]:
    """Each key -> its LDM name (identity for keys already in the LDM layout)."""
    keys = list(keys)
    if not is_diffusers_layout(keys):
        return {k: k for k in keys}
    levels = {part: _num_levels(keys, part) for part in ("encoder", "decoder")}
    return {k: ldm_key(k, levels.get(k.split(".", 1)[0], 0)) for k in keys}


def to_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict in either layout -> LDM names, attention weights as 1x1 convolutions (C,C,1,1)."""
    out: dict[str, torch.Tensor] = {}
    for key, name in ldm_names(state).items():
        tensor = state[key]
        if ".mid.attn_1." in name and name.endswith("weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        if name in out:
            raise ValueError(f"two keys map to {name!r}")
        out[name] = tensor
    return out


def from_ldm(ldm: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LDM-named tensors -> the keys and shapes of ``target`` (a state dict in either layout).

    Raises KeyError listing the target keys the LDM dict lacks, ValueError naming a tensor of another size.
    """
    names = ldm_names(target)
    missing = [k for k, n in names.items() if n not in ldm]
    if missing:
        raise KeyError(f"{len(missing)} weights missing, e.g. {missing[:3]}")
    for k, n in names.items():  # only the layouts differ (attention: 1x1 conv or linear), never the sizes
        if ldm[n].numel() != target[k].numel():
            raise ValueError(f"{n}: {tuple(ldm[n].shape)} in the file, {tuple(target[k].shape)} here")
    return {k: ldm[n].reshape(target[k].shape) for k, n in names.items()}
