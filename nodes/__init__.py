"""StyleMamba's ComfyUI nodes (classic V1 API): thin adapters over the ``stylemamba`` library.

``NODE_CLASS_MAPPINGS`` is built here: a node module that cannot be imported, or a node whose
``REQUIRED_PACKAGES`` are not installed, is left out with a log line saying what to pip install;
everything else still registers.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections.abc import Callable

import torch

log = logging.getLogger("stylemamba")

NODE_MODULES = ("loaders", "conditioning", "train_node", "stylize_nodes", "universal_nodes")

# import name -> pip name, for the log message
PIP_NAMES = {"transformers": "transformers", "sentencepiece": "sentencepiece", "google.protobuf": "protobuf",
             "lpips": "lpips",
             "safetensors": "safetensors", "huggingface_hub": "huggingface_hub"}


def package_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def shown_as_builtin(exc: BaseException) -> BaseException:
    """The exception to hand to ComfyUI so that its UI shows the message without our install path.

    ComfyUI prints ``module.ClassName`` for exception types outside ``builtins``; a pack is imported
    under its folder path, so our own classes (StyleFileError, ModelFileError ...) would read
    ``/home/.../custom_nodes/stylemamba.stylemamba.style_file.StyleFileError``. They are re-raised as
    their nearest built-in base (ValueError, FileNotFoundError ...), chained to the original. Our OOM
    error becomes torch's own OOM type (ComfyUI unloads its models on it); every other exception
    (torch's, ComfyUI's interrupt) passes unchanged.
    """
    cls = type(exc)
    if not cls.__module__.startswith(__name__.rsplit(".", 1)[0] + ".") or getattr(cls, "KEEP_TYPE", False):
        return exc
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        new = torch.cuda.OutOfMemoryError(str(exc))
    else:
        base = next(c for c in cls.__mro__ if c.__module__ == "builtins")
        try:
            new = base(*exc.args) if base is not BaseException else RuntimeError(str(exc))
        except Exception:
            new = RuntimeError(str(exc))
    new.__cause__ = exc
    return new


def with_builtin_errors(function):
    """Wrap a node function so our exceptions reach ComfyUI as built-in types (see :func:`shown_as_builtin`)."""
    if getattr(function, "_stylemamba_wrapped", False):
        return function

    @functools.wraps(function)
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            shown = shown_as_builtin(exc)
            if shown is exc:
                raise
            raise shown from exc

    run._stylemamba_wrapped = True
    return run


def build_mappings(available: Callable[[str], bool] = package_available) -> tuple[dict, dict]:
    """(NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS) of every node that can work here."""
    classes, names = {}, {}
    for module_name in NODE_MODULES:
        try:
            module = importlib.import_module(f".{module_name}", __name__)
        except ImportError as exc:
            log.error("nodes in %s are disabled: %s (pip install -r requirements.txt in the "
                      "pack's folder)", module_name, exc)
            continue
        for cls in module.NODES:
            missing = [p for p in getattr(cls, "REQUIRED_PACKAGES", ()) if not available(p)]
            if missing:
                log.error("node %s is disabled: missing %s; install with: pip install %s",
                          cls.NODE_ID, ", ".join(missing), " ".join(PIP_NAMES.get(p, p) for p in missing))
                continue
            setattr(cls, cls.FUNCTION, with_builtin_errors(getattr(cls, cls.FUNCTION)))
            classes[cls.NODE_ID] = cls
            names[cls.NODE_ID] = cls.DISPLAY_NAME
    for optional, why in (("sentencepiece", "SigLIP tokenizers (CLIP works without it)"),
                          ("google.protobuf", "SigLIP tokenizers (CLIP works without it)"),
                          ("lpips", "the LPIPS content loss (VGG-only training works without it)")):
        if not available(optional):
            log.warning("%s is not installed; it is needed for %s: pip install %s",
                        optional, why, PIP_NAMES[optional])
    return classes, names


def _register_folders() -> None:
    from .comfy_helpers import register_model_folders

    register_model_folders()


def _one_log_prefix() -> None:
    from ..stylemamba.logs import install_prefix

    install_prefix("StyleMamba:")  # ComfyUI's console prints bare messages


_one_log_prefix()
_register_folders()
NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = build_mappings()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "build_mappings", "package_available"]
