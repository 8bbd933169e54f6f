"""A trained style (and a universal model) as one shareable ``.safetensors`` file.

A style is what training changes: the fusion module's weights, the decoder as a *delta* on top of
the base VAE's decoder, and the style embedding e_t it was trained with (so stylising needs no
text model). Metadata (prompts, recipe, fusion config, base-VAE fingerprint, versions) travels in
the safetensors header as JSON. Only safetensors is read: a style file is never unpickled.
"""
from __future__ import annotations

import hashlib
import logging
import json
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .image_io import not_a_file, write_whole
from .vae import SDVAE, fingerprints_match, weights_id

log = logging.getLogger("stylemamba")

FORMAT = "stylemamba.style"
FORMAT_VERSION = 1
UNIVERSAL_FORMAT = "stylemamba.universal"  # a fusion module + decoder trained over a prompt bank (universal.py)
UNIVERSAL_FORMAT_VERSION = 1
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
        """Refuse to apply the decoder delta to a VAE other than the one the style was trained on (for a universal
        model's style of a prompt, the one that model was trained on: the error names the model)."""
        universal = self.metadata.get("universal_model")
        if universal and not self.metadata.get("steps"):
            _check_vae(self.metadata, vae, "universal model", str(universal))
        else:
            _check_vae(self.metadata, vae, "style", self.name)

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


def _check_vae(meta: dict[str, Any], vae: SDVAE, kind: str, name: str) -> None:
    base = meta.get("base_vae")
    if base and not fingerprints_match(base, vae.identity):
        trained_on = describe_vae(meta.get("base_vae_name"), base)
        connected = describe_vae(vae.name, vae.identity)
        raise StyleFileError(f"{kind} '{name}' was trained on the VAE {trained_on}, but the VAE given is {connected}. "
                             f"Use the VAE the {kind} was trained with (--vae on the command line, the vae input of a "
                             f"ComfyUI node), or train the {kind} again with this VAE.")


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
        _check_vae(self.metadata, vae, "universal model", self.name)

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


def describe_vae(name: str | None, identity: dict[str, Any]) -> str:
    """'vae-ft-mse.safetensors (weights 3f2a9c01b7de)': the file name when known and the weight fingerprint."""
    weights = weights_id(identity)
    name = str(name or "").strip()
    return f"'{name}' (weights {weights})" if name else f"with weights {weights} (file name unknown)"


def safe_style_filename(name: str) -> str:
    """A file name with no folders, no path escapes and the .safetensors extension.

    Letters and digits of every script are kept (a Japanese or accented name stays readable); only
    characters that are unsafe in file names on some system (path separators, ``<>:"|?*``, control
    characters) become ``_``, and names Windows reserves (``CON``, ``NUL``, ``COM1`` ...) get a ``_``. Folders
    join the name (``monet/v1`` -> ``monet_v1``: nothing typed is dropped) except ``.`` and ``..``.
    """
    parts = [p.strip() for p in str(name).replace("\\", "/").split("/")]
    base = "_".join(p for p in parts if p not in ("", ".", ".."))
    base = unicodedata.normalize("NFC", base)
    if base.lower().endswith(EXTENSION):
        base = base[: -len(EXTENSION)]
    base = "".join(c if (c.isalnum() or c in " ._-()[]+,&'!#@=~") else "_" for c in base)
    base = re.sub(r"_{2,}", "_", base).strip(" .") or "style"
    if base.split(".")[0].upper() in _WINDOWS_RESERVED:
        base = "_" + base
    return _cut_to_bytes(base[:120], NAME_BYTES) + EXTENSION


NAME_BYTES = 180  # of a style's file name before the extension: file systems take 255 bytes, and a Japanese name
# reaches that at 85 characters; room is left for the Save Style node's _00001 counter


def _cut_to_bytes(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, at a character boundary."""
    encoded = text.encode()
    return text if len(encoded) <= limit else encoded[:limit].decode("utf-8", "ignore").rstrip(" .") or "style"


_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def style_path(path: str | Path) -> Path:
    """Where :func:`save_style` writes ``path``: the .safetensors extension is added when missing, to the whole
    name (``monet_v1.5`` -> ``monet_v1.5.safetensors``: replacing what follows a dot would name another file).
    A pickled weight file's extension is replaced (``y.pt`` -> ``y.safetensors``, not ``y.pt.safetensors``): the
    user asked for a weight file by habit, and a style is always a safetensors one."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give the style a file name in it, e.g. {path / ('mystyle' + EXTENSION)}")
    if path.suffix.lower() in PICKLE_SUFFIXES and path.stem:
        return path.with_suffix(EXTENSION)
    return path if path.suffix.lower() == EXTENSION else path.with_name(path.name + EXTENSION)


def free_path(path: str | Path) -> Path:
    """``path`` when nothing is there, else the first of ``stem-2``, ``stem-3`` ... that is free: for a file
    the user did not name (a cancelled run's partial style), which must not replace an earlier one."""
    path = Path(path)
    candidate, n = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


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
    tensors = style_tensors(style, delta_dtype)
    return _write(tensors, {**style.metadata, "fusion": style.fusion_config}, path, FORMAT, FORMAT_VERSION,
                  delta_dtype)


def _write(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: str | Path, fmt: str, version: int,
           delta_dtype: torch.dtype) -> dict[str, Any]:
    """Write a StyleMamba weight file atomically (temporary name, then rename), readable by others."""
    from safetensors.torch import save_file

    path = style_path(path)
    meta = dict(meta)
    meta.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    meta.update(format=fmt, format_version=version, library_version=__version__,
                delta_dtype=str(delta_dtype).replace("torch.", ""), tensor_sha256=tensor_digest(tensors))
    meta.pop("file", None)
    header = {"stylemamba": json.dumps(meta, sort_keys=True, default=str), "format": fmt}
    path.parent.mkdir(parents=True, exist_ok=True)

    write_whole(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))  # readable by others (umask)
    return {"path": str(path), "bytes": path.stat().st_size}


def refuse_foreign(path: Path, kind: str) -> None:
    """From its first bytes: a pickled file (torch.save, .ckpt/.pt/.pth/.bin) is refused before anything reads it,
    and a picture renamed .safetensors is named as what it is, not as a corrupt weight file ("header too large")."""
    with open(path, "rb") as f:
        head = f.read(12)
    zipped_or_pickled = head[:2] == b"PK" or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05")
    if path.suffix.lower() in PICKLE_SUFFIXES or zipped_or_pickled:
        raise StyleFileError(f"{path.name} is a pickled PyTorch file: pickled files are not loaded (unpickling can "
                             "run any code). A StyleMamba style is a .safetensors file; pick one made by "
                             "StyleMamba's train command or Save Style node")
    for magic, what in _PICTURES:
        if head.startswith(magic):
            raise StyleFileError(f"{path.name} is {what}, not a {kind} file (renamed?): a {kind} is the "
                                 ".safetensors file StyleMamba's training wrote; a picture is an input to stylise, "
                                 "or a reference picture")
    video = _video_kind(head)
    if video:  # `info clip_styled.mp4` (as `info out.png`) was "not a readable .safetensors file ... corrupt"
        raise StyleFileError(f"{path.name} is {video}, not a {kind} file: a {kind} is the .safetensors file "
                             "StyleMamba's training wrote; a video is an input to stylise (--input), and `info` on a "
                             "video that stylize wrote (.mp4, .mov, .mkv) shows which style made it")


# the first bytes of the picture formats a user may rename by mistake
_PICTURES = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
             (b"RIFF", "a WebP image or other RIFF file"))


def _video_kind(head: bytes) -> str | None:
    """The video a file's first 12 bytes show (what stylize reads and writes), or None."""
    if head[4:8] == b"ftyp" and head[8:12] not in (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis"):
        return "an MP4 / QuickTime video"
    return "a Matroska / WebM video" if head.startswith(b"\x1a\x45\xdf\xa3") else None


def _read_metadata(path: str | Path, kind: str) -> dict[str, Any]:
    """The JSON metadata of a StyleMamba weight file of either kind, without loading its tensors.

    ``kind`` ("style" or "universal model") only words the errors; the callers check the format.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise not_a_file(path, f"{kind} file")
    refuse_foreign(path, kind)
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
    if not isinstance(meta, dict):
        raise StyleFileError(f"{path.name}: {kind} metadata is damaged (a JSON {type(meta).__name__}, not an object); "
                             "train or download it again")
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
        raise StyleFileError(f"{path.name}: {kind} format v{version} is newer than this StyleMamba ({__version__}) "
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
    path = Path(path)
    meta = read_style_metadata(path)
    tensors, fusion, delta = _read_weights(path, "style", ("embedding",), meta)
    meta["file"] = path.name
    return Style(meta.get("fusion", {}), fusion, delta, tensors["embedding"].float(), meta)


def _read_weights(path: Path, kind: str, required: tuple[str, ...], meta: dict[str, Any]):
    """A weight file's tensors, its fusion weights and its decoder delta; missing ``required`` tensors are an error.

    Tensors that differ from the checksum the file was saved with are said, not refused: safetensors checks no
    data, so a copy damaged in transit would load silently, but a style edited on purpose (merged by a script)
    is still the user's to use (~0.1 s for a 115 MB style)."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise StyleFileError(f"{path.name}: could not read the {kind} weights ({exc}); the file is damaged") from exc
    missing = [k for k in required if k not in tensors]
    if missing:
        raise StyleFileError(f"{path.name}: {kind} file has no {', '.join(missing)} tensor; it is damaged")
    if meta.get("tensor_sha256") and tensor_digest(tensors) != meta["tensor_sha256"]:
        log.warning("stylemamba: %s: its weights are not the ones it was saved with (checksum differs): damaged in a "
                    "copy or download (get it again), or edited by another tool", path.name)
    broken = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:  # one NaN in the decoder made every pixel NaN: pictures that came out black without a word
        raise StyleFileError(f"{path.name}: NaN or infinite values in {len(broken)} of its {kind} tensors (e.g. "
                             f"{broken[0]}), so every picture would come out black: the file was damaged (get it "
                             "again) or saved from a training run that diverged (train it again with a lower "
                             "learning rate)")
    fusion = {k[len("fusion."):]: v for k, v in tensors.items() if k.startswith("fusion.")}
    delta = {k[len("decoder_delta."):]: v.float() for k, v in tensors.items() if k.startswith("decoder_delta.")}
    return tensors, fusion, delta


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
              f"base VAE: {describe_vae(meta.get('base_vae_name'), meta.get('base_vae') or {})}"]
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
             f"base VAE: {describe_vae(meta.get('base_vae_name'), meta.get('base_vae') or {})}"]
    if meta.get("losses_skipped"):
        lines.append("losses skipped (no network given): " + ", ".join(meta["losses_skipped"]))
    return "\n".join(lines)


def save_universal(model: UniversalModel, path: str | Path, delta_dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """Write a universal model (same layout as a style, plus the source embeddings); returns {'path', 'bytes'}."""
    tensors = style_tensors(model.style(model.source_embedding), delta_dtype)  # fusion.*, decoder_delta.*
    tensors["source_embedding"] = tensors.pop("embedding")
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
    path = Path(path)
    meta = read_universal_metadata(path)
    tensors, fusion, delta = _read_weights(path, "universal model", ("source_embedding", "source_image_embedding"),
                                           meta)
    meta["file"] = path.name
    return UniversalModel(meta.get("fusion", {}), fusion, delta, tensors["source_embedding"].float(),
                          tensors["source_image_embedding"].float(), meta)


def file_kind(path: str | Path) -> str:
    """"style" or "universal" for a StyleMamba weight file (e.g. to pick the loader); other files raise."""
    return "universal" if _read_metadata(path, "style")["format"] == UNIVERSAL_FORMAT else "style"
