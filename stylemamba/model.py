"""StyleMamba: frozen encoder F_e -> Style Fusion Module -> decoder F_d (paper Fig. 2)."""
from __future__ import annotations

import torch
from torch import nn

from .vae import SDVAE, TrainableDecoder


class StyleMamba(nn.Module):
    """Ties the parts; only ``fusion`` and ``decoder`` are trainable and appear in ``parameters()``.

    The VAE is held outside the module tree on purpose: it is shared (ComfyUI caches it) and
    frozen, so it must never reach an optimiser, a ``.to()`` of this module or a state dict.
    """

    def __init__(self, vae: SDVAE, fusion: nn.Module, decoder: TrainableDecoder):
        super().__init__()
        self.__dict__["vae"] = vae  # not a submodule (see class docstring)
        self.fusion = fusion
        self.decoder = decoder

    def fuse(self, z: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Scaled latent z and style embedding (D,) or (B,D) -> fused latent M (Eq. 1)."""
        if style.dim() == 1:
            style = style.unsqueeze(0)
        if style.shape[0] == 1 and z.shape[0] > 1:
            style = style.expand(z.shape[0], -1)
        return self.fusion(z, style.to(z.dtype))

    def decode(self, z: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Latent -> stylised image in [0,1] (unclamped: losses see the raw output)."""
        return self.decoder(self.fuse(z, style))

    def forward(self, x01: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.decode(self.vae.encode(x01), style)
