"""StyleMamba: text-driven style transfer nodes for ComfyUI (StyleMamba, arXiv 2405.05027).

This file only registers the nodes (``nodes/``); the method lives in the ``stylemamba`` library.
Importing the pack never raises: whatever fails is logged and ComfyUI keeps starting.
"""
import logging

try:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except Exception:  # never take ComfyUI down with us
    logging.getLogger("stylemamba").exception(
        "StyleMamba: the nodes could not be loaded. Run 'pip install -r requirements.txt' in the "
        "StyleMamba folder (custom_nodes/stylemamba) with ComfyUI's Python, then restart ComfyUI.")
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
