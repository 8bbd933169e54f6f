"""F_T and F_I: the SigLIP (or CLIP) text and image towers, frozen, with a differentiable image path.

The losses need gradients through the image tower, so images are resized and normalised in torch
(never through PIL or a processor that rounds to uint8, which would give zero gradient). Training,
evaluation, metrics and the nodes accept any :class:`ImageTextModel`: SigLIP and CLIP
(:class:`TextImageEncoder`, so the paper's Table 4 ablation is a change of model name) and the
models of known meaning in ``stylemamba.testing`` plug in without touching internals.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from .logs import quiet_loading
from .vae import ModelFileError, refuse_missing_local

log = logging.getLogger("stylemamba")
EMPTY_PROMPT = "empty style prompt: write what the style should look like, e.g. \"Van Gogh's starry night\""

DEFAULT_SIGLIP = "google/siglip-base-patch16-224"
DEFAULT_CLIP = "openai/clip-vit-base-patch32"

# Fallbacks when a folder has no preprocessor_config.json.
_NORMALISATION = {
    "siglip": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    "clip": ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]),
}
_TEXT_LENGTH = {"siglip": 64, "clip": 77}


@runtime_checkable
class ImageTextModel(Protocol):
    """What the library needs of a frozen image-text model (F_T and F_I of the paper).

    ``encode_text``: prompts -> ``(N, D)`` L2-normalised embeddings (no gradient needed).
    ``encode_image``: ``(B,3,H,W)`` images in [0,1] -> ``(B, D)`` L2-normalised embeddings,
    DIFFERENTIABLE w.r.t. the pixels (the losses back-propagate through it); any H, W.
    ``image_size``: the side of the square views a training step builds for it (crops, masked image).
    ``name``: recorded in style files; a direction is only used with the model that encoded it.
    ``embed_dim``: D. ``device``: where its weights are. The nodes also move it with ``.to()``.
    Optional ``image_layers()``: the image tower's layers, in order, for training under memory plans that
    recompute them in backward (``tower_checkpointing``).
    """

    name: str
    image_size: int

    @property
    def embed_dim(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor: ...

    def encode_image(self, x01: torch.Tensor) -> torch.Tensor: ...


def check_image_text_model(model) -> None:
    """Refuse, with the list of what is missing, an object that is not an :class:`ImageTextModel`."""
    if not isinstance(model, ImageTextModel):
        missing = [m for m in ("name", "image_size", "embed_dim", "device", "encode_text", "encode_image")
                   if not hasattr(model, m)]
        raise TypeError(f"{type(model).__name__} is not an image-text model: it lacks {', '.join(missing)} "
                        "(load SigLIP or CLIP with load_text_image_encoder)")


def model_name(model) -> str:
    """The name a model is recorded under (its class name when it has none)."""
    return str(getattr(model, "name", "") or type(model).__name__)


def _features(out) -> torch.Tensor:
    """transformers 4.x returns a tensor, 5.x a ModelOutput whose pooler_output is the projection."""
    return out if torch.is_tensor(out) else out.pooler_output


class TextImageEncoder(nn.Module):
    """A frozen image-text model (``SiglipModel`` or ``CLIPModel``) with L2-normalised embeddings."""

    def __init__(self, model: nn.Module, tokenizer, kind: str, image_size: int,
                 mean: list[float], std: list[float], name: str = ""):
        super().__init__()
        if kind not in _NORMALISATION:
            raise ValueError(f"unknown text-image model kind {kind!r}; expected 'siglip' or 'clip'")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.kind = kind
        self.image_size = int(image_size)
        self.name = name
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def embed_dim(self) -> int:
        cfg = self.model.config
        if self.kind == "clip":
            return int(cfg.projection_dim)
        return int(cfg.text_config.hidden_size)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> (N, D) L2-normalised text embeddings. Empty prompts are refused."""
        if isinstance(prompts, str):
            prompts = [prompts]
        bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
        if not prompts or bad:
            raise ValueError(EMPTY_PROMPT)
        ids = self.token_ids(prompts)
        wordless = self.wordless(prompts, ids)
        if wordless:
            raise ValueError(wordless_error(wordless[0], self.name or self.kind))
        length = _TEXT_LENGTH[self.kind]
        for prompt, cut in self.cut_prompts(prompts, ids):
            log.warning("a prompt is longer than the %d tokens %s reads: its end '%s' is ignored; shorten the prompt",
                        length, self.kind.upper(), cut if len(cut) <= 60 else "..." + cut[-57:])
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt")
        kwargs = {"input_ids": tok["input_ids"].to(self.device)}
        if self.kind == "clip" and "attention_mask" in tok:
            kwargs["attention_mask"] = tok["attention_mask"].to(self.device)
        emb = _features(self.model.get_text_features(**kwargs)).float()
        return F.normalize(emb, dim=-1)

    def token_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """Each prompt's token ids, uncut (its own over-length warning off: :meth:`cut_prompts` says it), read once
        for the checks of :meth:`encode_text` (a bank may hold thousands of prompts)."""
        return self.tokenizer(list(prompts), truncation=False, verbose=False)["input_ids"]

    def wordless(self, prompts: Sequence[str], ids: list[list[int]] | None = None) -> list[str]:
        """The prompts this tokenizer reads as only unknown, padding or special tokens (emoji or punctuation for
        SigLIP's): each would encode as the same meaningless text and train a style of nothing, silently.
        ``ids``: the prompts' :meth:`token_ids`, when already read."""
        tok = self.tokenizer
        special = {i for i in (*tok.all_special_ids, tok.unk_token_id, tok.pad_token_id) if i is not None}
        found = []
        for prompt, row in zip(prompts, self.token_ids(prompts) if ids is None else ids):
            words = [i for i in row if i not in special]
            if not tok.decode(words, skip_special_tokens=True).strip():  # SentencePiece's lone '▁' decodes to ''
                found.append(prompt)
        return found

    def cut_prompts(self, prompts: list[str], ids: list[list[int]] | None = None) -> list[tuple[str, str]]:
        """(prompt, the words the text tower never sees) for each prompt longer than its token window (64 for
        SigLIP, 77 for CLIP): the tokenizer cuts them silently, so two prompts that differ only there encode alike."""
        length, cut = _TEXT_LENGTH[self.kind], []
        for prompt, row in zip(prompts, self.token_ids(prompts) if ids is None else ids):
            if len(row) > length:
                cut.append((prompt, self.tokenizer.decode(row[length - 1:], skip_special_tokens=True).strip()))
        return cut

    def preprocess(self, x01: torch.Tensor) -> torch.Tensor:
        """Differentiable resize (antialiased bicubic) to the tower's size and normalisation."""
        if x01.shape[-2:] != (self.image_size, self.image_size):
            x01 = F.interpolate(x01, size=(self.image_size, self.image_size), mode="bicubic",
                                align_corners=False, antialias=True)
        return (x01 - self.mean.to(x01.dtype)) / self.std.to(x01.dtype)

    def image_layers(self) -> list[nn.Module]:
        """The image tower's transformer layers (a memory plan may recompute them in backward)."""
        return list(self.model.vision_model.encoder.layers)

    def encode_image(self, x01: torch.Tensor) -> torch.Tensor:
        """Images (B,3,H,W) in [0,1] -> (B, D) L2-normalised embeddings, differentiable w.r.t. the pixels."""
        if x01.dim() != 4 or x01.shape[1] != 3:
            raise ValueError(f"encode_image expects (B,3,H,W) images; got {tuple(x01.shape)}")
        pixels = self.preprocess(x01)
        emb = _features(self.model.get_image_features(pixel_values=pixels)).float()
        return F.normalize(emb, dim=-1)


def wordless_error(prompt: str, model: str) -> str:
    """What to do about a prompt the text model reads as no words (see :meth:`TextImageEncoder.wordless`)."""
    return (f"prompt '{prompt}' has no words the text model knows ({model} reads it as unknown or special tokens "
            "only, e.g. emoji or punctuation): it would train a style of nothing; describe the style in words, e.g. "
            "\"ocean waves in watercolor\" or \"pop art\"")


def _read_preprocessor(folder: Path, kind: str) -> tuple[int | None, list[float], list[float]]:
    mean, std = _NORMALISATION[kind]
    cfg_path = folder / "preprocessor_config.json"
    if not cfg_path.is_file():
        return None, mean, std
    cfg = json.loads(cfg_path.read_text())
    size = cfg.get("crop_size") or cfg.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    return (int(size) if size else None), cfg.get("image_mean", mean), cfg.get("image_std", std)


# The tokenizer files each kind needs: any one of these sets (a fast tokenizer.json, or the slow files).
_TOKENIZER_FILES = {"siglip": (("tokenizer.json",), ("spiece.model",)),
                    "clip": (("tokenizer.json",), ("vocab.json", "merges.txt"))}


def _check_model_folder(path: Path, kind: str) -> None:
    """Refuse a folder without weights or tokenizer: without spiece.model SigLIP failed inside sentencepiece
    ("Either model_file or model_proto must be specified"), and CLIP loaded a tokenizer that knows no word."""
    if not any(path.glob("*.safetensors")):
        raise ModelFileError(f"model folder {path} has no weights (model.safetensors; only safetensors are read): "
                             "download every file of the model's repository into that folder")
    if not any(all((path / f).is_file() for f in files) for files in _TOKENIZER_FILES[kind]):
        wanted = " or ".join(" + ".join(files) for files in _TOKENIZER_FILES[kind])
        raise ModelFileError(f"model folder {path} has no {kind} tokenizer files ({wanted}): download every file "
                             "of the model's repository into that folder, tokenizer files included")


def load_text_image_encoder(name_or_path: str | Path = DEFAULT_SIGLIP, device: str | torch.device | None = None,
                            dtype: torch.dtype | None = None) -> TextImageEncoder:
    """Load SigLIP or CLIP (chosen by the folder's config) from a local folder or a Hugging Face id.

    A folder must hold what a hub snapshot holds: config.json, model.safetensors, tokenizer files,
    preprocessor_config.json. Only safetensors weights are read.
    """
    from transformers import AutoConfig, AutoTokenizer, CLIPModel, SiglipModel

    src = str(name_or_path)
    path = Path(src).expanduser()
    if path.exists() and not path.is_dir():
        raise ModelFileError(f"{path} is a file; a SigLIP/CLIP model is a folder (config.json, model.safetensors, "
                             "tokenizer and preprocessor files), e.g. a download of google/siglip-base-patch16-224")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelFileError(f"model folder {path} has no config.json: download all files of "
                             f"{DEFAULT_SIGLIP} into that folder")
    if not path.is_dir() and src.count("/") != 1:
        raise ModelFileError(f"text-image model not found: '{src}' is neither a folder nor a Hugging Face id "
                             f"like {DEFAULT_SIGLIP}")
    if not path.is_dir():
        refuse_missing_local(src, "text-image model")
    try:
        with quiet_loading():
            try:
                config = AutoConfig.from_pretrained(src)
            except ValueError as exc:  # e.g. a diffusers VAE folder: "Unrecognized model ... `model_type` key"
                raise ValueError(f"{src} is not a SigLIP or CLIP model ({str(exc).split('. ')[0]}); give a folder "
                                 f"of one, e.g. {DEFAULT_SIGLIP}") from None
        kind = config.model_type
        if kind not in ("siglip", "clip"):
            raise ValueError(f"{src} is a '{kind}' model; StyleMamba needs a SigLIP or CLIP model (e.g. {DEFAULT_SIGLIP})")
        cls = SiglipModel if kind == "siglip" else CLIPModel
        if path.is_dir():
            _check_model_folder(path, kind)
        with quiet_loading():
            try:
                model, loading = cls.from_pretrained(src, use_safetensors=True, output_loading_info=True)
            except Exception as exc:
                if type(exc).__name__ != "SafetensorError":  # safetensors' own: the file, not the model, is bad
                    raise
                raise ModelFileError(f"{src}: its weights could not be read ({exc}): the file is damaged; download "
                                     "it again") from None
        missing = sorted(k for k in loading.get("missing_keys", ()) if not k.endswith("position_ids"))
        if missing or loading.get("mismatched_keys"):
            # an error, not a warning: randomly initialised weights would train a meaningless style
            raise ModelFileError(f"{src}: the weights do not fit the {kind} config (missing {missing[:3]}, mismatched "
                                 f"{sorted(loading.get('mismatched_keys') or [])[:3]}); download the model again")
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(src)
    except OSError as exc:
        if path.is_dir():  # a folder here: there is no repository of that name to point to
            raise ModelFileError(f"could not load the text-image model in {src} ({exc}): download every file of "
                                 "the model's repository into that folder") from exc
        raise ModelFileError(
            f"could not load the text-image model '{src}' ({exc}). Offline? Download https://huggingface.co/{src} "
            "(all files) into ComfyUI/models/siglip/<name>/ or any folder, and pass that folder."
        ) from exc
    size, mean, std = _read_preprocessor(path, kind) if path.is_dir() else (None, *_NORMALISATION[kind])
    size = size or int(model.config.vision_config.image_size)
    enc = TextImageEncoder(model, tokenizer, kind, size, mean, std, name=path.name if path.is_dir() else src)
    return enc.to(device=device or "cpu", dtype=dtype or torch.float32)
