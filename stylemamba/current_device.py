"""Work on a GPU runs with that GPU current.

Why: torch's own operations follow their tensors' device, but three things we use follow the CURRENT device
instead: CUDA graphs (captured and replayed on the current device's streams), our Triton kernels (launched on
the current device) and CUDA events. Training on ``cuda:1`` while ``cuda:0`` is current (``--device cuda:1``,
or a second GPU from Python) would capture nothing of the step or launch kernels on the wrong GPU. The jobs
(training, stylising) therefore enter their device; entering the device that is already current is free.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch


def on_device(device: torch.device | str | None) -> contextlib.AbstractContextManager:
    """``device`` made current for the ``with`` block when it is a GPU; nothing for the CPU or None."""
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def runs_on_device_of(argument: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the function runs with the device of its argument ``argument`` current (anything with a
    ``.device``: a VAE, a trainer as ``self``, a tensor)."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        position = list(inspect.signature(fn).parameters).index(argument)

        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            holder = args[position] if position < len(args) else kwargs[argument]
            with on_device(holder.device):
                return fn(*args, **kwargs)
        return guarded
    return wrap


def indexed(device: torch.device | str) -> torch.device:
    """``device`` with its GPU named: "cuda" is the current GPU, which the guards above must not take for
    whatever GPU is current when they are entered later."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether ``a`` and ``b`` name one device ("cuda" is the current GPU)."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.type != "cuda" or indexed(a) == indexed(b))


def check_device_exists(device: torch.device) -> torch.device:
    """``device`` itself, or an error naming the GPUs there are when its index is beyond them."""
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"{device} asked for, but PyTorch sees {count} GPU(s) (cuda:0"
                         f"{f' to cuda:{count - 1}' if count > 1 else ''}): pick one of those, or check "
                         "CUDA_VISIBLE_DEVICES")
    return device
