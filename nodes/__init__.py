"""StyleMamba's ComfyUI nodes (classic V1 API): thin adapters over the ``stylemamba`` library.

``NODE_CLASS_MAPPINGS`` is built here: a node module that cannot be imported, or a node whose
``REQUIRED_PACKAGES`` are not installed, is left out with a log line saying what to pip install;
everything else still registers.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable

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


def build_mappings(available: Callable[[str], bool] = package_available) -> tuple[dict, dict]:
    """(NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS) of every node that can work here."""
    classes, names = {}, {}
    for module_name in NODE_MODULES:
        try:
            module = importlib.import_module(f".{module_name}", __name__)
        except ImportError as exc:
            log.error("StyleMamba: nodes in %s are disabled: %s (pip install -r requirements.txt in the "
                      "ComfyUI-StyleMamba folder)", module_name, exc)
            continue
        for cls in module.NODES:
            missing = [p for p in getattr(cls, "REQUIRED_PACKAGES", ()) if not available(p)]
            if missing:
                log.error("StyleMamba: node %s is disabled: missing %s; install with: pip install %s",
                          cls.NODE_ID, ", ".join(missing), " ".join(PIP_NAMES.get(p, p) for p in missing))
                continue
            classes[cls.NODE_ID] = cls
            names[cls.NODE_ID] = cls.DISPLAY_NAME
    for optional, why in (("sentencepiece", "SigLIP tokenizers (CLIP works without it)"),
                          ("google.protobuf", "SigLIP tokenizers (CLIP works without it)"),
                          ("lpips", "the LPIPS content loss (VGG-only training works without it)")):
        if not available(optional):
            log.warning("StyleMamba: %s is not installed; it is needed for %s: pip install %s",
                        optional, why, PIP_NAMES[optional])
    return classes, names


def _register_folders() -> None:
    from .comfy_helpers import register_model_folders

    register_model_folders()


_register_folders()
NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = build_mappings()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "build_mappings", "package_available"]
