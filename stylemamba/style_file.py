"""A trained style as one shareable ``.safetensors`` file.

A style is what training changes: the fusion module's weights, the decoder as a *delta* on top of
the base VAE's decoder, and the style embedding e_t it was trained with (so stylising needs no
text model). Metadata (prompts, recipe, fusion config, base-VAE fingerprint, versions) travels in
the safetensors header as JSON. Only safetensors is read: a style file is never unpickled.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .vae import SDVAE, fingerprints_match

FORMAT = "stylemamba.style"
FORMAT_VERSION = 1
UNIVERSAL_FORMAT = "stylemamba.universal"  # a fusion module + decoder trained over a prompt bank (universal.py)
UNIVERSAL_FORMAT_VERSION = 1
EXTENSION = ".safetensors"


class StyleFileError(ValueError):
    """A style file is corrupt, foreign or made for another VAE; the message says what to do."""


@dataclass
class Style:
    """A trained style held in memory (CPU tensors)."""

    fusion_config: dict[str, Any]
    fusion_state: dict[str, torch.Tensor]
    decoder_delta: dict[str, torch.Tensor]
    embedding: torch.Tensor  # (D,) the style conditioning e_t
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or ", ".join(self.metadata.get("prompts", [])) or "style")

    def check_vae(self, vae: SDVAE) -> None:
        """Refuse to apply the decoder delta to a VAE other than the one the style was trained on."""
        _check_vae(self.metadata, vae, f"style '{self.name}'", "train the style again")


def _check_vae(meta: dict[str, Any], vae: SDVAE, what: str, otherwise: str) -> None:
    base = meta.get("base_vae")
    if base and not fingerprints_match(base, vae.identity):
        raise StyleFileError(
            f"{what} was trained on another VAE ({meta.get('base_vae_name') or 'unknown'}, fingerprint "
            f"{base.get('arch')}); the connected VAE '{vae.name}' has fingerprint {vae.identity.get('arch')}. "
            f"Connect the VAE it was trained with, or {otherwise}.")


@dataclass
class UniversalModel:
    """A fusion module and decoder trained over a prompt bank (``universal.py``): a style for ANY prompt.

    The fusion weights are shared by every prompt (the prompt enters as its embedding e_t through the
    adaLN modulation), so a prompt's style is these weights with that prompt's e_t (:meth:`style`).
    ``source_embedding``: e_src of the source prompt it was trained against; ``source_image_embedding``:
    the mean image embedding of its training photos, where directions from a reference image start.
    """

    fusion_config: dict[str, Any]
    fusion_state: dict[str, torch.Tensor]
    decoder_delta: dict[str, torch.Tensor]
    source_embedding: torch.Tensor  # (D,)
    source_image_embedding: torch.Tensor  # (D,)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or self.metadata.get("file") or "universal model")

    @property
    def text_model(self) -> str:
        return str(self.metadata.get("text_model", ""))

    def check_vae(self, vae: SDVAE) -> None:
        _check_vae(self.metadata, vae, f"universal model '{self.name}'", "train it again on this VAE")

    def style(self, embedding: torch.Tensor, metadata: dict[str, Any] | None = None) -> Style:
        """The style of one conditioning ``embedding`` e_t (D,): shared fusion weights, this model's decoder delta.

        The tensors are shared with this model, not copied. ``metadata`` (prompts, source prompt...) is
        recorded in the style beside the universal model's VAE fingerprint and latent scaling.
        """
        e = embedding.detach().float().cpu().reshape(-1)
        dim = int(self.source_embedding.numel())
        if e.numel() != dim:
            raise StyleFileError(f"the conditioning has {e.numel()}-d embeddings but universal model '{self.name}' "
                                 f"was trained on {dim}-d ones ({self.text_model or 'unknown text model'}): encode "
                                 "the prompt with that text model")
        keep = ("base_vae", "base_vae_name", "scaling_factor", "text_model", "text_model_kind", "source_prompt")
        meta = {k: self.metadata[k] for k in keep if k in self.metadata}
        meta.update(metadata or {})
        meta.update(universal_model=self.name, steps=0, train_seconds=0.0)
        return Style(self.fusion_config, self.fusion_state, self.decoder_delta, e, meta)


def safe_style_filename(name: str) -> str:
    """A file name with no folders, no path escapes and the .safetensors extension."""
    base = os.path.basename(str(name).replace("\\", "/")).strip()
    if base.lower().endswith(EXTENSION):
        base = base[: -len(EXTENSION)]
    base = re.sub(r"[^A-Za-z0-9._ -]+", "_", base).strip(" .") or "style"
    return base[:120] + EXTENSION


def save_style(style: Style, path: str | Path, delta_dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """Write ``style`` to ``path`` (a .safetensors file); returns {'path', 'bytes'}.

    The decoder delta is stored in ``delta_dtype`` (fp16 by default: the delta is small in magnitude,
    so fp16 keeps it to ~1e-3 relative while halving the file; pass torch.float32 for an exact copy).
    The file is written to a temporary name and renamed, so a crash never leaves a half file.
    """
    tensors: dict[str, torch.Tensor] = {"embedding": style.embedding.detach().float().cpu().contiguous()}
    tensors.update(_weights(style.fusion_state, style.decoder_delta, delta_dtype))
    meta = {**style.metadata, "fusion": style.fusion_config}
    return _write(tensors, meta, path, FORMAT, FORMAT_VERSION, delta_dtype)


def _weights(fusion_state, decoder_delta, delta_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {"fusion." + k: v.detach().float().cpu().contiguous() for k, v in fusion_state.items()}
    out.update({"decoder_delta." + k: v.detach().to(delta_dtype).cpu().contiguous() for k, v in decoder_delta.items()})
    return out


def _write(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: str | Path, fmt: str, version: int,
           delta_dtype: torch.dtype) -> dict[str, Any]:
    """Write a StyleMamba weight file atomically (temporary name, then rename) and readable by others."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != EXTENSION:
        path = path.with_suffix(EXTENSION)
    meta = dict(meta)
    meta.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    meta.update(format=fmt, format_version=version, library_version=__version__,
                delta_dtype=str(delta_dtype).replace("torch.", ""))
    header = {"stylemamba": json.dumps(meta, sort_keys=True, default=str), "format": fmt}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata=header)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; a style file is meant to be shared
    os.replace(tmp, path)
    return {"path": str(path), "bytes": path.stat().st_size}


def _read_metadata(path: str | Path, kind: str) -> dict[str, Any]:
    """The JSON metadata of a StyleMamba weight file of either kind, without loading its tensors.

    ``kind`` ("style" or "universal model") only words the errors; the caller checks the format.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            keys = list(f.keys())
    except Exception as exc:
        raise StyleFileError(f"{path.name} is not a readable .safetensors file ({exc}); it may be truncated or "
                             "corrupt: copy or download it again") from exc
    if "stylemamba" not in header:
        what = "a VAE" if any(k.startswith(("encoder.", "decoder.")) for k in keys) else \
               "a LoRA" if any("lora" in k for k in keys) else "some other model"
        raise StyleFileError(f"{path.name} is not a StyleMamba {kind} file (it looks like {what}); "
                             f"load it with the matching loader, or pick a {kind} trained with StyleMamba")
    try:
        meta = json.loads(header["stylemamba"])
    except json.JSONDecodeError as exc:
        raise StyleFileError(f"{path.name}: {kind} metadata is damaged ({exc}); train or download it again") from exc
    newest = {FORMAT: FORMAT_VERSION, UNIVERSAL_FORMAT: UNIVERSAL_FORMAT_VERSION}.get(meta.get("format"))
    if newest is None:
        raise StyleFileError(f"{path.name}: metadata format {meta.get('format')!r} is not a StyleMamba {kind}; "
                             f"pick a {kind} trained with StyleMamba")
    try:
        version = int(meta.get("format_version", 0))
    except (TypeError, ValueError):
        raise StyleFileError(f"{path.name}: {kind} metadata is damaged (format_version "
                             f"{meta.get('format_version')!r}); train or download it again") from None
    if version > newest:
        raise StyleFileError(f"{path.name}: format v{version} is newer than this StyleMamba ({__version__}) "
                             "understands; update the node pack")
    return meta


def read_style_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a style file, without loading its tensors; a universal model is refused, saying what to do."""
    meta = _read_metadata(path, "style")
    if meta["format"] == UNIVERSAL_FORMAT:
        raise StyleFileError(f"{Path(path).name} is a universal StyleMamba model (one model for any prompt), not a "
                             "style: load it with Load Universal Model and make a style from it with Universal Style "
                             "(a prompt or a reference image); on the command line: stylize --universal FILE --prompt")
    return meta


def load_style(path: str | Path) -> Style:
    """Read a style file; corrupt, truncated or foreign files raise :class:`StyleFileError`."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_style_metadata(path)
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise StyleFileError(f"{path.name}: could not read the style weights ({exc}); the file is damaged") from exc
    if "embedding" not in tensors:
        raise StyleFileError(f"{path.name}: style file has no embedding tensor; it is damaged")
    fusion = {k[len("fusion."):]: v for k, v in tensors.items() if k.startswith("fusion.")}
    delta = {k[len("decoder_delta."):]: v.float() for k, v in tensors.items() if k.startswith("decoder_delta.")}
    meta["file"] = path.name
    return Style(meta.get("fusion", {}), fusion, delta, tensors["embedding"].float(), meta)


def describe_style(path: str | Path) -> dict[str, Any]:
    """What a style file (or a universal model file) holds, for ``stylemamba info`` and the UI."""
    from safetensors import safe_open

    meta = _read_metadata(path, "style")  # either kind: `stylemamba info` describes universal models too
    meta.pop("bank_prompts", None)  # a universal model's whole prompt list; its count stays in "bank_size"
    counts: dict[str, int] = {}
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            group = k.split(".", 1)[0]
            counts[group] = counts.get(group, 0) + int(torch.Size(f.get_slice(k).get_shape()).numel())
    return {"file": str(path), "bytes": Path(path).stat().st_size, "parameters": counts, **meta}


def style_summary(meta: dict[str, Any]) -> str:
    """A few lines saying what a style is (its metadata): prompts, source, text model, steps, base VAE."""
    prompts = meta.get("prompts") or []
    weights = meta.get("prompt_weights")
    lines = [f"style: {meta.get('name') or meta.get('file') or 'unnamed'}",
             "prompts: " + (", ".join(f"'{p}'" for p in prompts) or "?")]
    if weights:
        lines.append("prompt weights: " + ", ".join(f"{float(w):.2f}" for w in weights))
    lines += [f"source prompt: '{meta.get('source_prompt', '')}'",
              f"text model: {meta.get('text_model', '?')} ({meta.get('text_model_kind', '?')})",
              f"steps: {meta.get('steps', '?')}, trained in {meta.get('train_seconds', '?')} s"
              + (" (cancelled early)" if meta.get("cancelled") else ""),
              f"base VAE: {meta.get('base_vae_name', '?')}"]
    if meta.get("losses_skipped"):
        lines.append("losses skipped (no network given): " + ", ".join(meta["losses_skipped"]))
    return "\n".join(lines)


def universal_summary(meta: dict[str, Any]) -> str:
    """A few lines saying what a universal model is (its metadata): bank, text model, source, training, base VAE."""
    prompts = meta.get("bank_prompts") or []
    shown = ", ".join(f"'{p}'" for p in prompts[:5]) + (f" ... ({len(prompts)} in all)" if len(prompts) > 5 else "")
    lines = [f"universal model: {meta.get('name') or meta.get('file') or 'unnamed'}",
             f"trained over {meta.get('bank_size', '?')} prompts x {meta.get('content_images', '?')} images"
             + (f": {shown}" if shown else ""),
             f"source prompt: '{meta.get('source_prompt', '')}'",
             f"text model: {meta.get('text_model', '?')} ({meta.get('text_model_kind', '?')}): encode prompts with it",
             f"steps: {meta.get('steps', '?')} on {meta.get('world_size', '?')} process(es), "
             f"{meta.get('train_seconds', '?')} s" + (" (stopped early)" if meta.get("cancelled") else ""),
             f"base VAE: {meta.get('base_vae_name', '?')}"]
    if meta.get("losses_skipped"):
        lines.append("losses skipped (no network given): " + ", ".join(meta["losses_skipped"]))
    return "\n".join(lines)

def save_universal(model: UniversalModel, path: str | Path, delta_dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """Write a universal model (same layout as a style, plus the source embeddings); returns {'path', 'bytes'}."""
    tensors = _weights(model.fusion_state, model.decoder_delta, delta_dtype)
    tensors["source_embedding"] = model.source_embedding.detach().float().cpu().contiguous()
    tensors["source_image_embedding"] = model.source_image_embedding.detach().float().cpu().contiguous()
    meta = {**model.metadata, "fusion": model.fusion_config, "kind": "universal"}
    meta.pop("file", None)
    return _write(tensors, meta, path, UNIVERSAL_FORMAT, UNIVERSAL_FORMAT_VERSION, delta_dtype)


def read_universal_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a universal model file; a per-prompt style is refused, saying what to do."""
    meta = _read_metadata(path, "universal model")
    if meta["format"] == FORMAT:
        prompts = ", ".join(f"'{p}'" for p in meta.get("prompts", [])) or "its prompt"
        raise StyleFileError(f"{Path(path).name} is a style trained for {prompts}, not a universal model: load it "
                             "with Load Style (command line: stylize --style FILE)")
    return meta


def load_universal(path: str | Path) -> UniversalModel:
    """Read a universal model file; corrupt, foreign or per-prompt style files raise :class:`StyleFileError`."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_universal_metadata(path)
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise StyleFileError(f"{path.name}: could not read the weights ({exc}); the file is damaged") from exc
    missing = [k for k in ("source_embedding", "source_image_embedding") if k not in tensors]
    if missing:
        raise StyleFileError(f"{path.name}: universal model file has no {', '.join(missing)}; it is damaged")
    fusion = {k[len("fusion."):]: v for k, v in tensors.items() if k.startswith("fusion.")}
    delta = {k[len("decoder_delta."):]: v.float() for k, v in tensors.items() if k.startswith("decoder_delta.")}
    meta["file"] = path.name
    return UniversalModel(meta.get("fusion", {}), fusion, delta, tensors["source_embedding"].float(),
                          tensors["source_image_embedding"].float(), meta)


def file_kind(path: str | Path) -> str:
    """"style" or "universal" for a StyleMamba weight file (e.g. to pick the loader); other files raise."""
    return "universal" if _read_metadata(path, "style")["format"] == UNIVERSAL_FORMAT else "style"
