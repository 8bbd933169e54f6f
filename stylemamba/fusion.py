"""The Style Fusion Module (paper Sec. 3.1, Eq. 1): conditions the VAE latent on the style text.

Each block is DiT's adaLN-Zero wrapper around a token mixer::

    s, b, g = Linear(SiLU(e_t)).chunk(3)          # per-channel scale, shift, gate from the text
    x = x + g * mixer(LayerNorm(x) * (1 + s) + b)

The mixer is a Mamba (selective SSM) layer run over the latent tokens along one, two or four
2D scan orders (``kind="mamba"``, the paper's choice), or global self-attention plus
cross-attention to tokens made from the style embedding (``kind="cross_attention"``, the
comparison of the paper's Table 3).

Identity at initialisation: the modulation Linears are zero, so every block passes its input
through unchanged, and the latent-level output is ``z + out_proj(x_N - x_0)`` (the out-projection
reads only what the blocks *added* to the token stream), so an untrained module returns ``z``
exactly and training starts from the VAE's own reconstruction. The out-projection is NOT zero:
with zero gates and a zero read-out (plain DiT), the gates receive exactly zero gradient on the
first step, so the output could not depend on the style until step 2 -- costly when a style
trains for ~20 steps (METHOD.md: one epoch ~ one step).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .options import check_kinds, from_options
from .ssm import BACKENDS, MambaMixer

KINDS = ("mamba", "cross_attention")
SCANS = ("forward", "bidirectional", "cross")


@dataclass
class FusionConfig:
    """Architecture of the fusion module; stored in every style file (``to_dict``)."""

    kind: str = "mamba"  # "mamba" | "cross_attention"
    latent_channels: int = 4
    text_dim: int = 768
    width: int = 256
    depth: int = 4
    d_state: int = 16
    expand: int = 2
    scan: str = "bidirectional"  # "forward" | "bidirectional" | "cross"
    mlp_ratio: float = 0.0  # 0: no MLP sub-block; > 0: a DiT-style modulated MLP of width*ratio
    heads: int = 8  # cross_attention only
    n_style_tokens: int = 8  # cross_attention only
    backend: str = "auto"  # selective-scan backend (mamba only), see ssm.py

    def __post_init__(self):
        check_kinds(self, "FusionConfig")
        if self.kind not in KINDS:
            raise ValueError(f"FusionConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.scan not in SCANS:
            raise ValueError(f"FusionConfig.scan must be one of {SCANS}, got {self.scan!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"FusionConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        for name in ("latent_channels", "text_dim", "width", "d_state", "expand", "heads", "n_style_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"FusionConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.depth < 0 or self.mlp_ratio < 0:
            raise ValueError("FusionConfig.depth and mlp_ratio must be >= 0")
        if self.kind == "cross_attention" and self.width % self.heads:
            raise ValueError(f"FusionConfig.width ({self.width}) must be divisible by heads ({self.heads})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FusionConfig":
        return from_options(cls, d, "FusionConfig")


# ----------------------------------------------------------------------------- 2D scan orders
def scan_permutations(h: int, w: int, scan: str) -> list[torch.Tensor]:
    """Token orders (permutations of the raster indices 0..h*w-1) for a 2D scan.

    "forward": raster (row by row); "bidirectional": raster and its reverse (as Vim);
    "cross": rows, rows reversed, columns, columns reversed (as VMamba's cross-scan).
    Sequence ``k`` is ``tokens[:, perm_k]``; ``y[:, argsort(perm_k)]`` puts it back in raster order.
    """
    if scan not in SCANS:
        raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
    raster = torch.arange(h * w)
    if scan == "forward":
        return [raster]
    if scan == "bidirectional":
        return [raster, raster.flip(0)]
    cols = raster.view(h, w).t().reshape(-1)
    return [raster, raster.flip(0), cols, cols.flip(0)]


def _modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class ScanMambaMixer(nn.Module):
    """One Mamba mixer over several scan orders of the latent grid, outputs summed in raster order.

    The directions SHARE the mixer's weights (one set of parameters) and are stacked along the
    batch dimension, so a single selective-scan call processes all of them.
    """

    def __init__(self, width: int, d_state: int, expand: int, scan: str, backend: str):
        super().__init__()
        self.scan = scan
        self.mamba = MambaMixer(width, d_state=d_state, expand=expand, backend=backend)
        self._orders: dict = {}

    def _indices(self, h: int, w: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        key = (h, w, str(device))
        if key not in self._orders:
            self._orders[key] = [(p.to(device), torch.argsort(p).to(device))
                                 for p in scan_permutations(h, w, self.scan)]
        return self._orders[key]

    def forward(self, x: torch.Tensor, style: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        orders = self._indices(hw[0], hw[1], x.device)
        # the first order is always the raster order itself: no gather needed for it
        seqs = torch.cat([x] + [x.index_select(1, p) for p, _ in orders[1:]], dim=0)
        ys = self.mamba(seqs).chunk(len(orders), dim=0)
        out = ys[0]
        for y, (_, inv) in zip(ys[1:], orders[1:]):
            out = out + y.index_select(1, inv)
        return out


class AttentionMixer(nn.Module):
    """Cross-attention fusion (the paper's Table 3 alternative, TxST-like): global self-attention
    over the latent tokens, then cross-attention from the latent tokens to ``n_style_tokens``
    tokens projected from the style embedding."""

    def __init__(self, width: int, heads: int, text_dim: int, n_style_tokens: int):
        super().__init__()
        self.heads, self.n_style_tokens = heads, n_style_tokens
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_out = nn.Linear(width, width)
        self.style_tokens = nn.Linear(text_dim, n_style_tokens * width)
        self.norm_q = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.cross_out = nn.Linear(width, width)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # (B, L, W) -> (B, heads, L, W/heads)
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, style: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        a = self.attn_out(a.transpose(1, 2).flatten(2))
        s = self.style_tokens(style).unflatten(-1, (self.n_style_tokens, -1))  # (B, S, W)
        k2, v2 = self.kv(s).chunk(2, dim=-1)
        q2 = self.q(self.norm_q(x + a))
        c = F.scaled_dot_product_attention(self._heads(q2), self._heads(k2), self._heads(v2))
        return a + self.cross_out(c.transpose(1, 2).flatten(2))


class FusionBlock(nn.Module):
    """adaLN-Zero block (DiT): modulation regressed from the style embedding, gated residual."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        W = cfg.width
        self.norm = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        if cfg.kind == "mamba":
            self.mixer: nn.Module = ScanMambaMixer(W, cfg.d_state, cfg.expand, cfg.scan, cfg.backend)
        else:
            self.mixer = AttentionMixer(W, cfg.heads, cfg.text_dim, cfg.n_style_tokens)
        self.mlp = None
        if cfg.mlp_ratio > 0:
            hidden = max(1, int(round(W * cfg.mlp_ratio)))
            self.norm2 = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(W, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, W))
        self.n_mod = 6 if self.mlp is not None else 3
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.text_dim, self.n_mod * W))
        nn.init.zeros_(self.modulation[1].weight)  # adaLN-Zero: the block starts as the identity
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, style: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        mods = self.modulation(style).unsqueeze(1).chunk(self.n_mod, dim=-1)
        scale, shift, gate = mods[:3]
        x = x + gate * self.mixer(_modulate(self.norm(x), scale, shift), style, hw)
        if self.mlp is not None:
            scale2, shift2, gate2 = mods[3:]
            x = x + gate2 * self.mlp(_modulate(self.norm2(x), scale2, shift2))
        return x


class StyleFusion(nn.Module):
    """``forward(z (B,C,h,w) scaled latent, style (B,text_dim)) -> (B,C,h,w)``, any h and w."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.config = cfg
        self.in_proj = nn.Linear(cfg.latent_channels, cfg.width)  # a 1x1 conv on the latent grid
        self.blocks = nn.ModuleList(FusionBlock(cfg) for _ in range(cfg.depth))
        self.out_proj = nn.Linear(cfg.width, cfg.latent_channels)
        nn.init.zeros_(self.out_proj.bias)

    def set_backend(self, backend: str) -> None:
        """Switch the selective-scan backend of every Mamba mixer (e.g. for benchmarks)."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown selective-scan backend {backend!r}; expected one of {BACKENDS}")
        for m in self.modules():
            if isinstance(m, MambaMixer):
                m.backend = backend

    def forward(self, z: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        B, C, h, w = z.shape
        if C != self.config.latent_channels:
            raise ValueError(f"latent has {C} channels, the fusion module expects {self.config.latent_channels}")
        if style.dim() == 1:
            style = style.unsqueeze(0)
        if style.shape[-1] != self.config.text_dim:
            raise ValueError(f"style embedding has dim {style.shape[-1]}, expected {self.config.text_dim}")
        if style.shape[0] != B:
            style = style.expand(B, -1)
        x0 = self.in_proj(z.flatten(2).transpose(1, 2))  # (B, h*w, width), raster order
        x = x0
        for block in self.blocks:
            x = block(x, style, (h, w))
        out = self.out_proj(x - x0)  # only what the blocks added: exactly 0 at initialisation
        return z + out.transpose(1, 2).reshape(B, C, h, w).to(z.dtype)


def build_fusion(cfg: FusionConfig) -> StyleFusion:
    """The fusion module for ``cfg`` (``.config`` holds it); the identity until trained."""
    if isinstance(cfg, dict):
        cfg = FusionConfig.from_dict(cfg)
    return StyleFusion(cfg)

