"""Opt-in speed-ups for the GPU: ``torch.compile`` of the heavy networks and cuDNN autotuning.

Why opt-in: compiling costs tens of seconds the first time a shape is seen (Inductor then caches
it for the process and on disk), which pays back only when several styles are trained or many
images stylised in one process. Nothing here changes the arithmetic: compiled modules run the
same operations, fused (bf16 rounding may differ in the last bits), and the tests compare each
option with the plain path. The plain path is untouched when an option is "off".

Modules are compiled IN PLACE (``nn.Module.compile``), so their ``state_dict`` keys stay the same
(``torch.compile(module)`` would return a wrapper whose keys gain an ``_orig_mod.`` prefix).
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("stylemamba")

# "off" = plain eager PyTorch; the others are torch.compile modes ("default" = mode None).
# CUDA-graph modes ("reduce-overhead", "max-autotune") are left out on purpose: the training step
# is not launch-bound at 512 px and graphs would pin the step's activations in a private pool.
COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs")

# Inductor on the GPU; tests set "aot_eager" (traces and runs autograd like Inductor, no C++/Triton
# build: Inductor on 2 CPU cores takes minutes for the tiny VAE).
COMPILE_BACKEND = "inductor"


def check_compile_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r} is not one of {COMPILE_MODES}")
    return mode


def _compile_kwargs(mode: str, dynamic: bool | None) -> dict:
    kw: dict = {"backend": COMPILE_BACKEND, "dynamic": dynamic}
    if COMPILE_BACKEND == "inductor" and mode != "default":
        kw["mode"] = mode
    return kw


def persistent_cache_dir() -> Path:
    """Where compiled kernels are kept between processes and reboots: the user's cache folder
    (``$XDG_CACHE_HOME`` or ``~/.cache``; ``%LOCALAPPDATA%`` on Windows) / stylemamba / torchinductor."""
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "stylemamba" / "torchinductor"


def use_persistent_compile_cache() -> str:
    """Point Inductor's on-disk cache (compiled graphs, autograd graphs, autotuning) at
    :func:`persistent_cache_dir` unless the user chose one (``TORCHINDUCTOR_CACHE_DIR``): its default
    lives in the temporary folder, which reboots empty, so every boot would pay the first style's
    compilation again. Triton keeps its kernels in ``~/.triton`` already. Returns the folder used."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen:
        return chosen
    folder = persistent_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only home, ...: keep torch's default, say why
        log.warning("stylemamba: cannot create the compile cache %s (%s); torch's temporary cache is used", folder, exc)
        return ""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    log.info("stylemamba: compiled kernels are cached in %s (set TORCHINDUCTOR_CACHE_DIR to change it)", folder)
    return str(folder)


def compile_callable(fn: Callable, mode: str = "off", dynamic: bool | None = False) -> Callable:
    """``fn`` itself when ``mode == "off"``, else ``torch.compile(fn)`` (a function or a bound method)."""
    if check_compile_mode(mode) == "off":
        return fn
    use_persistent_compile_cache()
    return torch.compile(fn, **_compile_kwargs(mode, dynamic))


def compile_module_(module: nn.Module, mode: str = "off", dynamic: bool | None = False) -> nn.Module:
    """Compile ``module`` in place (its forward; parameters and state-dict keys unchanged); returns it."""
    if check_compile_mode(mode) != "off":
        use_persistent_compile_cache()
        module.compile(**_compile_kwargs(mode, dynamic))
    return module


def holds_compiled(*modules: nn.Module) -> bool:
    """Whether any of ``modules`` or their submodules runs through torch.compile (compiled in place, as
    :func:`compile_module_` does, or wrapped by ``torch.compile``; ours or another node pack's). Its kernels cannot be
    captured in a CUDA graph under cudaMallocAsync (stylemamba.cuda_graphs.why_the_allocator_forbids_graphs)."""
    return any(getattr(sub, "_compiled_call_impl", None) is not None or type(sub).__name__ == "OptimizedModule"
               for module in modules for sub in module.modules())


def enable_cudnn_autotune(on: bool = True) -> bool:
    """Let cuDNN time its convolution algorithms once per shape (``torch.backends.cudnn.benchmark``).

    A process-wide switch; returns the previous value. Pays for fixed shapes (training steps,
    video frames); a stream of new image sizes pays the search each time.
    """
    previous = bool(torch.backends.cudnn.benchmark)
    torch.backends.cudnn.benchmark = bool(on)
    return previous


def silu_out_of_place_(module: nn.Module) -> int:
    """Make every in-place SiLU under ``module`` compute out of place (in place; returns how many).

    Why: ComfyUI's VAE decoder (the one the Train node trains inside ComfyUI) runs ``nn.SiLU(inplace=True)``. In a
    decoder being trained autograd then copies each SiLU's input before overwriting it, because the backward needs
    it: one full-size copy per SiLU, 28 per step in the SD decoder. Out of place autograd saves that input itself:
    the same memory, no copy. (``python -m stylemamba.experiments.decoder_speed``'s ``silu_inplace`` variant: the
    decoder's forward + backward took 70.0 instead of 46.0 ms on an H200, bench/results/tower_h200/callE.)
    """
    count = 0
    for m in module.modules():
        if isinstance(m, nn.SiLU) and m.inplace:
            m.inplace = False
            count += 1
    return count


def train_in_channels_last_(decoder: nn.Module) -> int:
    """Put a decoder that is being trained in channels_last (in place); returns how many residual blocks were
    put in the form that keeps that layout.

    Why the blocks: diffusers' ``ResnetBlock2D`` copies its input to NCHW before the 1x1 shortcut convolution
    while training (against a DDP gradient-stride warning) and not in inference; in a channels_last decoder that
    is a full-size copy forward and backward (the SD decoder's 512-channel block at 256 px and 256-channel block
    at 512 px). The two forms differ in nothing else but dropout, so blocks whose dropout is 0 (every SD VAE)
    are switched to the inference form.
    """
    decoder.to(memory_format=torch.channels_last)
    count = 0
    for block in decoder.modules():
        dropout = getattr(block, "dropout", None)
        if (type(block).__name__ == "ResnetBlock2D" and getattr(block, "conv_shortcut", None) is not None
                and isinstance(dropout, nn.Dropout) and dropout.p == 0):
            block.train(False)
            count += 1
    return count


def prepare_for_inference(vae, model, compile: str = "off", channels_last: bool = True,
                          dynamic: bool | None = False):
    """Speed up :func:`stylemamba.stylize.stylize` for ``model`` (a ``StyleModel``): channels-last
    weights for the VAE encoder and the style's decoder (what cuDNN's fast bf16 kernels read) and,
    when ``compile`` is a mode, ``torch.compile`` of both (in place). The fusion module stays eager:
    compiled around the mamba-ssm kernel's opaque call it ran twice as slow (graph breaks), and our
    chunked scan's Python loops would unroll into a huge graph.

    The VAE encoder is SHARED (every style uses it; ComfyUI caches the VAE): compiling it changes
    nothing it computes, only how. ``dynamic=False`` (default) compiles once per image size (about
    20 s each on an H200): measured there, the static 512x512 graph ran in 15 ms where the
    dynamic-shape graph (``dynamic=None`` after a second size) took 35 ms. Returns ``model``.
    """
    on_cuda = vae.device.type == "cuda"
    if channels_last and on_cuda:
        vae.encoder.to(memory_format=torch.channels_last)
        model.decoder.to(memory_format=torch.channels_last)
    compile_module_(vae.encoder, compile, dynamic=dynamic)
    compile_module_(model.decoder, compile, dynamic=dynamic)
    return model
