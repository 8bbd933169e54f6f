"""The only module that touches ComfyUI (``comfy.*``, ``folder_paths``, ``server``).

Every function degrades gracefully when ComfyUI is not importable (CI, scripts): model folders
fall back to ``$STYLEMAMBA_MODELS_DIR`` (default ``~/.cache/stylemamba/models``), progress is a
no-op, nothing is ever interrupted, and the device is CUDA when available. Imports of ComfyUI
happen inside the functions, so importing this module never needs ComfyUI.
"""
from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path
from typing import Any

import torch

from ..stylemamba.errors import is_out_of_memory as library_is_out_of_memory

log = logging.getLogger("stylemamba")

# Model folders this pack registers (ComfyUI/models/<name>), with the file extensions listed.
# "siglip" holds Hugging Face model FOLDERS (SigLIP or CLIP: config.json + model.safetensors + tokenizer).
MODEL_FOLDERS: dict[str, set[str]] = {
    "siglip": {".json"},  # entries are folders; the extension only keeps ComfyUI's own lists short
    "stylemamba": {".safetensors"},
    "perceptual": {".safetensors"},
}


class CancelledWithoutComfy(Exception):
    """Stands in for ComfyUI's InterruptProcessingException when ComfyUI is not there."""

    KEEP_TYPE = True  # raised as it is by the nodes (nodes/__init__.py: shown_as_builtin)


def comfy_available() -> bool:
    try:
        import comfy.model_management  # noqa: F401
        import folder_paths  # noqa: F401
    except Exception:
        return False
    return True


# ------------------------------------------------------------------------------------ folders
def _fallback_models_dir() -> Path:
    return Path(os.environ.get("STYLEMAMBA_MODELS_DIR") or Path.home() / ".cache" / "stylemamba" / "models")


def register_model_folders() -> None:
    """Register models/siglip, models/stylemamba, models/perceptual (extra_model_paths.yaml entries are kept)."""
    try:
        import folder_paths
    except Exception:
        return
    for name, exts in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        folder_paths.add_model_folder_path(name, default)
        paths, old_exts = folder_paths.folder_names_and_paths[name]
        merged = set(old_exts) | exts if old_exts else set(exts)
        folder_paths.folder_names_and_paths[name] = (paths, merged)


def folder_paths_for(kind: str) -> list[str]:
    """Every folder registered for ``kind`` (first = where new files are saved)."""
    try:
        import folder_paths
    except Exception:
        return [str(_fallback_models_dir() / kind)]
    try:
        return folder_paths.get_folder_paths(kind)
    except KeyError:
        register_model_folders()
        return folder_paths.get_folder_paths(kind)


def list_files(kind: str, extensions: tuple[str, ...] = (".safetensors",)) -> list[str]:
    """Files (relative names, sub-folders allowed) in the folders registered for ``kind``."""
    try:
        import folder_paths
        return [f for f in folder_paths.get_filename_list(kind) if f.lower().endswith(extensions)]
    except Exception:
        pass
    out: set[str] = set()
    for root in folder_paths_for(kind):
        base = Path(root)
        if base.is_dir():
            out.update(str(p.relative_to(base)).replace(os.sep, "/") for p in base.rglob("*")
                       if p.is_file() and p.name.lower().endswith(extensions))
    return sorted(out)


def list_model_dirs(kind: str) -> list[str]:
    """Sub-folders holding a ``config.json`` (Hugging Face model snapshots), one or two levels deep."""
    out: set[str] = set()
    for root in folder_paths_for(kind):
        base = Path(root)
        if not base.is_dir():
            continue
        for cfg in list(base.glob("*/config.json")) + list(base.glob("*/*/config.json")):
            out.add(str(cfg.parent.relative_to(base)).replace(os.sep, "/"))
    return sorted(out)


def resolve(kind: str, name: str, is_dir: bool = False) -> Path:
    """Full path of ``name`` inside the folders of ``kind``; refuses path escapes; clear error when absent."""
    clean = str(name).replace("\\", "/")
    if not clean or clean.startswith("/") or ".." in clean.split("/"):
        raise ValueError(f"invalid {kind} name {name!r}: pick an entry of the list")
    for root in folder_paths_for(kind):
        candidate = Path(root) / clean
        if candidate.is_dir() if is_dir else candidate.is_file():
            return candidate
    where = ", ".join(folder_paths_for(kind)) or f"models/{kind}"
    what = "folder" if is_dir else "file"
    raise FileNotFoundError(f"{kind} {what} '{name}' not found in {where}. Put it there (or pick another entry and "
                            "press R in ComfyUI to refresh the lists)")


def save_folder(kind: str) -> Path:
    folder = Path(folder_paths_for(kind)[0])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ------------------------------------------------------------------------------------ devices
def torch_device() -> torch.device:
    """The device ComfyUI computes on (respects --cpu, --cuda-device ...)."""
    try:
        import comfy.model_management as mm
        return mm.get_torch_device()
    except Exception:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    """Where idle models wait (CPU): cached node outputs must not pin GPU memory between queues."""
    return torch.device("cpu")


def prepare_vae(vae: Any, memory_required: float = 0.0, name: str = "", load: bool = True):
    """ComfyUI's ``VAE`` (or anything with ``first_stage_model``, or an SDVAE) -> SDVAE on the compute device.

    Asks ComfyUI to load the VAE fully onto its device first (freeing ``memory_required`` bytes for
    what we allocate ourselves; ``load=False`` only wraps it, e.g. to read its fingerprint). The
    modules stay shared and unmodified; training copies the decoder. ``name`` (the VAE's file name,
    see :func:`linked_file_name`) is what styles record and error messages show.
    """
    from ..stylemamba.vae import SDVAE

    if isinstance(vae, SDVAE):
        return vae
    if hasattr(vae, "throw_exception_if_invalid"):
        vae.throw_exception_if_invalid()
    model = getattr(vae, "first_stage_model", None)
    if model is None:
        raise TypeError("the 'vae' input is not a VAE: connect Load VAE (or the VAE output of a checkpoint loader)")
    if getattr(vae, "latent_dim", 2) != 2:
        raise TypeError("StyleMamba needs an image VAE (SD 1.x/2.x, SDXL, SD3, Flux); this one is a video/audio VAE")
    ratio = getattr(vae, "downscale_ratio", 8)
    if ratio != 8:
        raise TypeError(f"StyleMamba needs a VAE that shrinks images 8x (SD 1.x/2.x, SDXL, SD3, Flux); this one "
                        f"shrinks them {ratio}x. Connect an SD-style VAE.")
    patcher = getattr(vae, "patcher", None)
    if patcher is not None and load:
        try:
            import comfy.model_management as mm
            mm.load_models_gpu([patcher], memory_required=memory_required, force_full_load=True)
        except ImportError:
            pass
    sdvae = _wrapped_vaes.get(model)
    if sdvae is None:
        sdvae = _wrapped_vaes[model] = SDVAE.from_ldm(model)
    sdvae.name = name or getattr(vae, "name", "") or sdvae.name  # a caller that does not know it keeps the last
    return sdvae


# ComfyUI's autoencoder -> its SDVAE wrapper: one wrapper per VAE, so its fingerprint (read by the caches and
# every style check) is computed once, and training's per-process decisions see the same VAE each prompt;
# dropped with the VAE
_wrapped_vaes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def managed_model(module: torch.nn.Module, device: torch.device, whole: bool = False):
    """Hand ``module`` to ComfyUI's model management (a ``ModelPatcher``), or None without ComfyUI.

    ComfyUI then counts its memory, moves it off the GPU when other models need the room, and drops
    it when the last reference (our cache entry) goes. ``whole``: never only part of it (ComfyUI's partial
    unload moves leaf modules one by one, smallest first: a text model split between devices breaks the nodes
    that call it without loading it first, e.g. Text Conditioning); it is then moved off all at once.
    """
    try:
        import comfy.model_management as mm
        import comfy.model_patcher
    except ImportError:
        return None
    patcher = comfy.model_patcher.ModelPatcher(module, load_device=device, offload_device=mm.unet_offload_device())
    if whole:  # frees nothing partially, so ComfyUI's LoadedModel.model_unload detaches the whole model
        patcher.partially_unload = lambda *args, **kwargs: 0
    return patcher


def load_on_device(patchers: list, module: torch.nn.Module, device: torch.device, memory_required: float = 0.0) -> None:
    """Make sure ``module`` (and the models of ``patchers``) sit on ``device``, through ComfyUI when it is there."""
    patchers = [p for p in patchers if p is not None]
    if patchers:
        try:
            import comfy.model_management as mm
            mm.load_models_gpu(patchers, memory_required=memory_required, force_full_load=True)
        except ImportError:
            pass
    module.to(device)  # a no-op when ComfyUI already loaded it there


MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


def linked_file_name(prompt: dict | None, unique_id: str | None, input_name: str) -> str:
    """The model file behind input ``input_name`` of node ``unique_id``, read from the prompt (ComfyUI's
    VAE object does not know its file): 'vae-ft-mse.safetensors' from Load VAE, 'x.safetensors
    (checkpoint's VAE)' from a checkpoint loader, '' when the graph does not tell."""
    try:
        link = prompt[str(unique_id)]["inputs"][input_name]
        source = prompt[str(link[0])]
        inputs = source.get("inputs", {})
    except (KeyError, IndexError, TypeError):
        return ""
    for key, suffix in (("vae_name", ""), ("ckpt_name", " (checkpoint's VAE)")):
        if isinstance(inputs.get(key), str):
            return inputs[key] + suffix
    for value in inputs.values():
        if isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS):
            return f"{value} ({source.get('class_type', 'node')})"
    return ""


def free_memory(memory_required: float, device: torch.device) -> None:
    """Ask ComfyUI to unload cached models until ``memory_required`` bytes are free on ``device``."""
    if device.type == "cpu":
        return
    try:
        import comfy.model_management as mm
        mm.free_memory(memory_required, device)
    except ImportError:
        pass


def free_memory_now(device: torch.device) -> float | None:
    """Bytes free on ``device`` as ComfyUI counts them (its cache included), for training's memory plan; None
    on CPU or without ComfyUI (the library then asks torch)."""
    if device.type == "cpu":
        return None
    try:
        import comfy.model_management as mm
        return float(mm.get_free_memory(device))
    except ImportError:
        return None


def empty_cache() -> None:
    """Give freed GPU memory back (ComfyUI's soft_empty_cache, or torch's). Without Python's cycle collector:
    one ``gc.collect()`` took ~256 ms in a process holding the pack's models (2.4x a whole Stylize of one image
    on the CPU), and ComfyUI's prompt loop collects and empties the cache between prompts itself."""
    try:
        import comfy.model_management as mm
        mm.soft_empty_cache()
    except ImportError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    if library_is_out_of_memory(exc):  # the GPU's, or the CPU allocator's (a plain RuntimeError)
        return True
    try:
        import comfy.model_management as mm
        return isinstance(exc, mm.OOM_EXCEPTION)
    except Exception:
        return False


# ------------------------------------------------------------------------------------ progress / cancel
def interrupted() -> bool:
    """Whether the user pressed Cancel (does not reset the flag)."""
    try:
        import comfy.model_management as mm
        return bool(mm.processing_interrupted())
    except ImportError:
        return False


def raise_interrupted() -> None:
    """Raise ComfyUI's own interrupt exception, so the UI shows the prompt as cancelled (not failed)."""
    try:
        import comfy.model_management as mm
    except ImportError:
        raise CancelledWithoutComfy("cancelled") from None
    mm.throw_exception_if_processing_interrupted()  # raises and resets the flag when it is set
    raise mm.InterruptProcessingException()


def is_interrupt(exc: BaseException) -> bool:
    if isinstance(exc, CancelledWithoutComfy):
        return True
    try:
        import comfy.model_management as mm
        return isinstance(exc, mm.InterruptProcessingException)
    except ImportError:
        return False


class Progress:
    """ComfyUI's progress bar (with preview images) and the text line under a node; no-ops without ComfyUI.

    Updating the bar also raises ComfyUI's interrupt exception when the user pressed Cancel.
    """

    def __init__(self, total: int, node_id: str | None = None):
        self.total = max(1, int(total))
        self.node_id = node_id
        try:
            import comfy.utils
            self._bar = comfy.utils.ProgressBar(self.total, node_id=node_id)
        except ImportError:
            self._bar = None

    def update(self, value: int, preview: torch.Tensor | None = None, max_size: int = 512) -> None:
        """``preview``: (3,H,W) image in [0,1] shown on the node while it runs."""
        if self._bar is None:
            return
        image = None
        if preview is not None:
            image = ("JPEG", tensor_to_pil(preview), max_size)
        self._bar.update_absolute(int(value), self.total, image)

    def text(self, message: str) -> None:
        """Show ``message`` under the node (ComfyUI's progress text); also logged at debug level."""
        log.debug("%s", message)
        if self.node_id is None:
            return
        try:
            from server import PromptServer
            PromptServer.instance.send_progress_text(message, self.node_id)
        except Exception:  # older ComfyUI without progress text, or no server (scripts)
            pass


def tensor_to_pil(image: torch.Tensor):
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype("uint8")
    return Image.fromarray(arr)
