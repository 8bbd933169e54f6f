"""Baselines the paper compares against, written in this project (no code copied from their repositories).

* :mod:`.clipstyler`: CLIPstyler (Kwon & Ye, CVPR 2022), per-image optimisation of a small U-Net.
"""
