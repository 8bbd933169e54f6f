"""StyleMamba: text-driven image style transfer (arXiv 2405.05027) in pure PyTorch.

The library never imports ComfyUI; the ComfyUI nodes in ``nodes/`` are thin adapters over it.
"""
__version__ = "0.2.0"
