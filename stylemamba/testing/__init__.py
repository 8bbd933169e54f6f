"""Tools to PROVE the method without pretrained weights, and tiny real test models (never imported by the core).

``tiny_models``: tiny real SD-VAE / SigLIP / CLIP / VGG models for the tests. ``known_models``: small
differentiable image-text models whose image embedding is a known function of the picture (colour, texture) and whose text embeddings for a small vocabulary are known vectors,
so "did the style move held-out photos towards the prompt?" has a measurable answer.
"""
from .known_models import (
    KnownMeaningModel,
    UnknownPrompt,
    chroma,
    colour_model,
    combined_model,
    high_frequency_energy,
    high_frequency_share,
    known_model,
    texture_model,
)

__all__ = [
    "KnownMeaningModel", "UnknownPrompt", "chroma", "colour_model", "combined_model", "high_frequency_energy",
    "high_frequency_share", "known_model", "texture_model",
]
