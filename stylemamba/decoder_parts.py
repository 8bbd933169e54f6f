"""Which part of the decoder a style trains (issue 9, item 6: 53.6 M trained parameters against the
paper's 17 M, 115 MB style files).

Parts are named in the LDM key layout (``vae_layout``), so they mean the same on diffusers and ComfyUI
decoders: ``"all"`` (the whole decoder, post_quant_conv included), ``"none"`` (the fusion module
alone), ``"topN"`` (the N highest-resolution up levels ``decoder.up.0`` .. ``decoder.up.N-1`` and the
output head ``decoder.norm_out`` / ``decoder.conv_out``). A style stores the delta of the trained
part only. Figures per part: docs/METHOD_CHOICES.md.
"""
from __future__ import annotations

import re

from torch import nn

from .vae_layout import ldm_names

DECODER_PARTS = ("all", "none", "top1", "top2", "top3")


def check_part(part: str) -> str:
    if part not in DECODER_PARTS:
        raise ValueError(f"train_decoder={part!r} is not a decoder part; choose one of {', '.join(DECODER_PARTS)}")
    return part


def in_part(ldm_key: str, part: str) -> bool:
    """Whether a decoder weight (LDM name, ``decoder.``/``post_quant_conv.`` prefixed) is trained by ``part``."""
    check_part(part)
    if part == "all":
        return True
    if part == "none":
        return False
    if ldm_key.startswith(("decoder.norm_out.", "decoder.conv_out.")):
        return True
    m = re.match(r"decoder\.up\.(\d+)\.", ldm_key)
    return m is not None and int(m.group(1)) < int(part[len("top"):])


def restrict_training(decoder: nn.Module, part: str) -> list[str]:
    """Freeze every decoder parameter outside ``part``; returns the names (decoder's own layout) still trained."""
    names = ldm_names(decoder.state_dict().keys())
    trained = []
    for name, param in decoder.named_parameters():
        keep = in_part(names[name], part)
        param.requires_grad_(keep)
        if keep:
            trained.append(name)
    return trained
