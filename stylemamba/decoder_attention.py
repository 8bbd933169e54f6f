"""The SD decoder's attention as two matrix products, for training.

Why: the decoder's one attention block runs a single head of width 512 over the 64x64 latent tokens at
512 px. No flash kernel takes a head of 512, so ``scaled_dot_product_attention`` falls back to the
memory-efficient kernel, whose backward took 5.6-5.8 ms of an H200 training step for 17 GFLOP of work
(bench/results/tower_h200/callD, step_kernels). Written as ``softmax(q k^T / sqrt(d)) v`` with the softmax
in fp32, the same attention is a handful of large GEMMs; its 4096 x 4096 probabilities (32 MB in bf16) are
small next to the decoder's activations. Only the decoder's plain self-attention form is taken over (4-D
input, no mask, no cross-attention); anything else runs the processor it replaces.
"""
from __future__ import annotations

import torch
from torch import nn


def _sdpa_processor():
    from diffusers.models.attention_processor import AttnProcessor2_0

    return AttnProcessor2_0()


class MatmulAttention:
    """A diffusers attention processor: plain self-attention as explicit matrix products."""

    def __init__(self, fallback=None):
        self.fallback = fallback if fallback is not None else _sdpa_processor()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs) -> torch.Tensor:
        unusual = (hidden_states.ndim != 4 or encoder_hidden_states is not None or attention_mask is not None
                   or attn.spatial_norm is not None or getattr(attn, "norm_q", None) is not None
                   or getattr(attn, "norm_k", None) is not None or args or kwargs)
        if unusual:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        b, c, h, w = hidden_states.shape
        tokens = hidden_states.flatten(2).transpose(1, 2)  # (B, HW, C)
        if attn.group_norm is not None:
            tokens = attn.group_norm(tokens.transpose(1, 2)).transpose(1, 2)
        q, k, v = (proj(tokens).unflatten(-1, (attn.heads, -1)).transpose(1, 2)  # (B, heads, HW, d)
                   for proj in (attn.to_q, attn.to_k, attn.to_v))
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # the scale scaled_dot_product_attention uses
        probs = scores.softmax(dim=-1, dtype=torch.promote_types(v.dtype, torch.float32)).to(v.dtype)
        out = (probs @ v).transpose(1, 2).flatten(2)  # (B, HW, C)
        out = attn.to_out[1](attn.to_out[0](out))
        out = out.transpose(1, 2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def single_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ComfyUI's VAE attention (``comfy.ldm.modules.diffusionmodules.model.pytorch_attention``: one head over the
    pixels of (B, C, H, W) q, k, v, scale 1/sqrt(C)) as matrix products, the softmax in fp32; (B, C, H, W) out."""
    b, c, h, w = q.shape
    q, k, v = (t.reshape(b, c, h * w) for t in (q, k, v))
    scores = (q.transpose(1, 2) * c ** -0.5) @ k  # (B, HW, HW)
    probs = scores.softmax(dim=-1, dtype=torch.promote_types(v.dtype, torch.float32)).to(v.dtype)
    return (v @ probs.transpose(1, 2)).reshape(b, c, h, w)


def _comfy_attention_block(module: nn.Module) -> bool:
    """A ComfyUI VAE ``AttnBlock`` (known by its parts: the library never imports ComfyUI)."""
    return (callable(getattr(module, "optimized_attention", None)) and
            all(isinstance(getattr(module, name, None), nn.Module) for name in ("norm", "q", "k", "v", "proj_out")))


def attention_by_matmul_(decoder: nn.Module) -> int:
    """Give every diffusers ``Attention`` under ``decoder`` a :class:`MatmulAttention` processor, and every ComfyUI
    VAE attention block :func:`single_head_attention` (in place; no parameter changes); returns how many. In
    ComfyUI the trained decoder is ComfyUI's own, whose attention runs scaled_dot_product_attention with the
    same 512-wide head and so the same slow backward."""
    try:
        from diffusers.models.attention_processor import Attention
    except ImportError:
        Attention = ()
    count = 0
    for module in decoder.modules():
        if Attention and isinstance(module, Attention) and not isinstance(module.processor, MatmulAttention):
            module.set_processor(MatmulAttention(module.processor))
            count += 1
        elif _comfy_attention_block(module) and module.optimized_attention is not single_head_attention:
            module.optimized_attention = single_head_attention
            count += 1
    return count
