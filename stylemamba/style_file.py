"""A trained style as one shareable ``.safetensors`` file.

A style is what training changes: the fusion module's weights, the decoder as a *delta* on top of
the base VAE's decoder, and the style embedding e_t it was trained with (so stylising needs no
text model). Metadata (prompts, recipe, fusion config, base-VAE fingerprint, versions) travels in
the safetensors header as JSON. Only safetensors is read: a style file is never unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .vae import SDVAE, fingerprints_match, weights_id

FORMAT = "stylemamba.style"
FORMAT_VERSION = 1
EXTENSION = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")


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
        base = self.metadata.get("base_vae")
        if base and not fingerprints_match(base, vae.identity):
            trained_on = describe_vae(self.metadata.get("base_vae_name"), base)
            connected = describe_vae(vae.name, vae.identity)
            raise StyleFileError(
                f"style '{self.name}' was trained on the VAE {trained_on}, but the connected VAE is {connected}. "
                "Connect the VAE the style was trained with, or train the style again with this VAE."
            )

    def digest(self, exact: bool = False) -> str:
        """SHA-256 of the style's tensors: as a style file stores them (fp16 decoder delta; equal digests, same
        file), or with ``exact`` as held in memory (what a built style computes with).

        Computed once per object (a style is not changed after it is made)."""
        name = "_digest_exact" if exact else "_digest"
        cached = self.__dict__.get(name)
        if cached is None:
            tensors = style_tensors(self, delta_dtype=None if exact else torch.float16)
            cached = self.__dict__[name] = tensor_digest(tensors)
        return cached


def describe_vae(name: str | None, identity: dict[str, Any]) -> str:
    """'vae-ft-mse.safetensors (weights 3f2a9c01b7de)': the file name when known and the weight fingerprint."""
    weights = weights_id(identity)
    name = str(name or "").strip()
    return f"'{name}' (weights {weights})" if name else f"with weights {weights} (file name unknown)"


def safe_style_filename(name: str) -> str:
    """A file name with no folders, no path escapes and the .safetensors extension.

    Letters and digits of every script are kept (a Japanese or accented name stays readable); only
    characters that are unsafe in file names on some system (path separators, ``<>:"|?*``, control
    characters) become ``_``, and names Windows reserves (``CON``, ``NUL``, ``COM1`` ...) get a ``_``.
    """
    base = os.path.basename(str(name).replace("\\", "/")).strip()
    base = unicodedata.normalize("NFC", base)
    if base.lower().endswith(EXTENSION):
        base = base[: -len(EXTENSION)]
    base = "".join(c if (c.isalnum() or c in " ._-()[]+,&'!#@=~") else "_" for c in base)
    base = re.sub(r"_{2,}", "_", base).strip(" .") or "style"
    if base.split(".")[0].upper() in _WINDOWS_RESERVED:
        base = "_" + base
    return base[:120] + EXTENSION


_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def style_path(path: str | Path) -> Path:
    """Where :func:`save_style` writes ``path`` (the .safetensors extension is added when missing)."""
    path = Path(path)
    return path if path.suffix == EXTENSION else path.with_suffix(EXTENSION)


def style_tensors(style: Style, delta_dtype: torch.dtype | None = torch.float16) -> dict[str, torch.Tensor]:
    """The tensors of a style file, by name (what :func:`save_style` writes; ``delta_dtype`` None keeps the
    decoder delta's own dtype)."""
    tensors: dict[str, torch.Tensor] = {"embedding": style.embedding.detach().float().cpu().contiguous()}
    for k, v in style.fusion_state.items():
        tensors["fusion." + k] = v.detach().float().cpu().contiguous()
    for k, v in style.decoder_delta.items():
        tensors["decoder_delta." + k] = v.detach().to(delta_dtype or v.dtype).cpu().contiguous()
    return tensors


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def save_style(style: Style, path: str | Path, delta_dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """Write ``style`` to ``path`` (a .safetensors file); returns {'path', 'bytes'}.

    The decoder delta is stored in ``delta_dtype`` (fp16 by default: the delta is small in magnitude,
    so fp16 keeps it to ~1e-3 relative while halving the file; pass torch.float32 for an exact copy).
    The file is written to a temporary name and renamed, so a crash never leaves a half file.
    """
    from safetensors.torch import save_file

    path = style_path(path)
    tensors = style_tensors(style, delta_dtype)
    meta = dict(style.metadata)
    meta.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    meta.update(format=FORMAT, format_version=FORMAT_VERSION, library_version=__version__,
                fusion=style.fusion_config, delta_dtype=str(delta_dtype).replace("torch.", ""),
                tensor_sha256=tensor_digest(tensors))
    meta.pop("file", None)
    header = {"stylemamba": json.dumps(meta, sort_keys=True, default=str), "format": FORMAT}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata=header)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; a style file is meant to be shared
    os.replace(tmp, path)
    return {"path": str(path), "bytes": path.stat().st_size}


def refuse_pickle(path: Path) -> None:
    """A pickled file (torch.save, .ckpt/.pt/.pth/.bin) is refused before anything reads it."""
    with open(path, "rb") as f:
        head = f.read(4)
    zipped_or_pickled = head[:2] == b"PK" or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05")
    if path.suffix.lower() in PICKLE_SUFFIXES or zipped_or_pickled:
        raise StyleFileError(f"{path.name} is a pickled PyTorch file: pickled files are not loaded (unpickling can "
                             "run any code). A StyleMamba style is a .safetensors file; pick one made by "
                             "StyleMamba's train command or Save Style node")


def read_style_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a style file, without loading its tensors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"style file not found: {path}")
    refuse_pickle(path)
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
        raise StyleFileError(f"{path.name} is not a StyleMamba style file (it looks like {what}); "
                             "load it with the matching loader, or pick a style trained with StyleMamba")
    try:
        meta = json.loads(header["stylemamba"])
    except json.JSONDecodeError as exc:
        raise StyleFileError(f"{path.name}: style metadata is damaged ({exc}); train or download the style again") from exc
    if meta.get("format") != FORMAT:
        raise StyleFileError(f"{path.name}: metadata format {meta.get('format')!r} is not a StyleMamba style; "
                             "pick a style trained with StyleMamba")
    try:
        version = int(meta.get("format_version", 0))
    except (TypeError, ValueError):
        raise StyleFileError(f"{path.name}: style metadata is damaged (format_version "
                             f"{meta.get('format_version')!r}); train or download the style again") from None
    if version > FORMAT_VERSION:
        raise StyleFileError(f"{path.name}: style format v{version} is newer than this StyleMamba ({__version__}) "
                             "understands; update the node pack")
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
    """What a style file holds, for ``stylemamba info`` and the UI."""
    from safetensors import safe_open

    meta = read_style_metadata(path)
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
              f"base VAE: {describe_vae(meta.get('base_vae_name'), meta.get('base_vae') or {})}"]
    if meta.get("losses_skipped"):
        lines.append("losses skipped (no network given): " + ", ".join(meta["losses_skipped"]))
    return "\n".join(lines)
