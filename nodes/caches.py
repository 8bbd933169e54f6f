"""The pack's own bounded caches: trained styles, and styles built for stylising.

ComfyUI's default cache keeps only the last prompt's outputs, so re-queueing a training after any
other prompt would retrain (minutes) and rebuilding a style's decoder on every Stylize call costs
a copy of the whole VAE decoder. Both are kept here, keyed by everything that determines them,
with a small bound (oldest dropped first).
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from typing import Any, Hashable

import torch

from . import comfy_helpers as ch

log = logging.getLogger("stylemamba")

TRAINED_STYLES = 4  # a style is ~200 MB of CPU memory (fp32 decoder delta of an SD VAE)
STYLE_MODELS = 2  # a built style is a full fp32 decoder on the GPU (~200 MB for SD VAEs)


class BoundedCache:
    """At most ``size`` entries; a hit makes an entry the newest, the oldest goes first."""

    def __init__(self, size: int):
        self.size = int(size)
        self.entries: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        if key in self.entries:
            self.entries.move_to_end(key)
            self.hits += 1
            return self.entries[key]
        self.misses += 1
        return None

    def put(self, key: Hashable, value: Any) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def make_room(self) -> None:
        """Drop the oldest entries until one more fits (so what they hold is freed before a new one is built)."""
        while self.entries and len(self.entries) >= self.size:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()


trained_styles = BoundedCache(TRAINED_STYLES)
style_models = BoundedCache(STYLE_MODELS)


def tensor_hash(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's values (as fp32 on the CPU), one image at a time."""
    h = hashlib.sha256(f"{tuple(t.shape)}".encode())
    for item in (t if t.dim() > 0 else t[None]):
        h.update(item.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def vae_key(sdvae) -> str:
    """What identifies a VAE's weights for the caches: its full fingerprint and latent scaling."""
    return hashlib.sha256(json.dumps([sdvae.identity, sdvae.scaling_factor], sort_keys=True).encode()).hexdigest()


def training_key(sdvae, conditioning, images: torch.Tensor, config, perceptual_names: dict, device: str) -> str:
    """Everything a trained style depends on: VAE, text direction, content pixels, recipe (seed included),
    the perceptual networks and the kind of device (bf16 on CUDA trains differently from fp32 on a CPU)."""
    parts = {
        "vae": vae_key(sdvae),
        "prompts": list(conditioning.prompts), "weights": [round(float(w), 8) for w in conditioning.weights],
        "source": conditioning.source_prompt, "text_model": conditioning.text_model,
        "embeddings": tensor_hash(conditioning.embeddings), "source_embedding": tensor_hash(conditioning.source_embedding),
        "content": tensor_hash(images), "recipe": config.to_dict(), "perceptual": perceptual_names, "device": device,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class TrainingNetworks(torch.nn.Module):
    """The frozen networks a training needs on the GPU (text model, VGG, LPIPS) as ONE model for ComfyUI's model
    management: loaded for a training and left there, so the next style does not move ~0.9 GB to the GPU and back
    (call N: ~1.2 s of each new-style prompt); ComfyUI moves them off when another model needs the room."""

    def __init__(self, modules: list):
        from ..stylemamba.train import TrainingWorkspace

        super().__init__()
        self.nets = torch.nn.ModuleList(modules)
        self.device = None  # ComfyUI's ModelPatcher records where it put the model here
        # the last style's trainer, restarted for the next style of the same kind (no decoder copy, no first
        # eager step, its CUDA graphs replayed): it holds GPU memory, so it goes whenever the networks move, and
        # is not kept when it holds more than a quarter of the card (ComfyUI counts a graph pool's unused part
        # as free memory, but no other model can use it)
        self.workspace = TrainingWorkspace(max_share=KEPT_TRAINER_SHARE)

    def _apply(self, fn, recurse=True):
        """Moved or converted (ComfyUI unloading the networks to make room, a new set replacing them: any
        ``.to()``): the kept trainer and its GPU memory go (its graphs read these weights where they were)."""
        before = [p.data_ptr() for p in self.parameters()]
        out = super()._apply(fn, recurse)
        if self.workspace.holds and before != [p.data_ptr() for p in self.parameters()]:
            self.workspace.release()
        return out


_training_networks: dict = {}  # (ids of the networks) -> (TrainingNetworks, its ModelPatcher); the last set only
KEPT_TRAINER_SHARE = 0.25  # the most of the card a kept trainer may hold (TrainingWorkspace.max_share)


def kept_training_bytes() -> int:
    """GPU memory the kept trainer holds that ComfyUI counts as used (what a new training need not ask for)."""
    return sum(container.workspace.counted_bytes for container, _ in _training_networks.values())


def training_networks(modules: list, device: torch.device):
    """The managed container of ``modules`` (None entries left out) and its ComfyUI ModelPatcher, the same for the
    same networks (one set kept: a new set replaces the old); the patcher is None without ComfyUI."""
    modules = [m for m in modules if m is not None]
    key = (tuple(id(m) for m in modules), str(device))
    entry = _training_networks.get(key)
    if entry is None or any(a is not b for a, b in zip(entry[0].nets, modules)):
        for old, _ in _training_networks.values():  # ComfyUI forgets the old set with its patcher: off the GPU
            with torch.inference_mode(False):  # first, or it would stay there uncounted
                old.to(ch.offload_device())
        _training_networks.clear()
        container = TrainingNetworks(modules)
        entry = _training_networks[key] = (container, ch.managed_model(container, device, whole=True))
    return entry


def style_model(sdvae, vae, styles: list, weights: list[float], strength: float, memory_required: float = 0.0,
                blend: str = "outputs"):
    """A built :class:`StyleModel` (fusion modules + the style's decoder) on the VAE's device.

    Reused across calls when the styles (by content), weights, strength, blend and VAE weights are the same;
    built and cached otherwise. In ComfyUI it is handed to ComfyUI's model management, which moves it
    off the GPU when other models need the memory (and frees it when it leaves this cache).
    Returns ``(model, reused)``.
    """
    from ..stylemamba.style_model import StyleModel

    key = (tuple(s.digest(exact=True) for s in styles), tuple(round(float(w), 8) for w in weights), round(float(strength), 8),
           blend if len(styles) > 1 else "weights", vae_key(sdvae))
    entry = style_models.get(key)
    reused = entry is not None
    if entry is None:
        for style in styles:  # a refused VAE must not evict a good entry
            style.check_vae(sdvae)
        style_models.make_room()
        model = StyleModel.from_styles(sdvae, styles, weights, float(strength), blend)
        log.info("Stylize: built the decoder of %s at strength %g (kept for later calls)",
                 " + ".join(f"'{s.name}'" for s in styles), strength)
        entry = (model, ch.managed_model(model, sdvae.device))
        style_models.put(key, entry)
    model, patcher = entry
    model.use_vae(sdvae)  # the key is the VAE's weights: a reloaded VAE file must not keep the dropped one alive
    ch.load_on_device([getattr(vae, "patcher", None), patcher], model, sdvae.device, memory_required)
    return model, reused
