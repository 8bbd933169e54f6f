"""Errors the library raises on purpose, with messages that say what to do."""
from __future__ import annotations

import torch


class OutOfMemory(torch.cuda.OutOfMemoryError):
    """Ran out of (GPU) memory; the message says what to lower.

    A subclass of torch's own OOM error, so callers that react to OOM (ComfyUI unloads its cached
    models on it) still do.
    """
