"""Our Triton kernels inside a CUDA graph captured under torch's ``cudaMallocAsync`` allocator (ComfyUI's default).

Why: Triton's launcher checks every tensor argument with ``cuPointerGetAttribute``, which rejects the memory a
capture allocates under that allocator (a graph allocation, mapped only while the graph runs): "Pointer argument
cannot be accessed from Triton", and the training step could not replay as a graph inside ComfyUI unless it was
started with ``--disable-cuda-malloc`` (bench/results/steady_h200/callK). The launcher passes a Python ``int``
through unchecked, so while such a capture records, :func:`address_safe` kernels receive each tensor as a
:class:`DeviceAddress`: an ``int`` (the address) that still shows Triton the tensor's dtype and ``data_ptr()``, so
Triton compiles and picks the same kernel (a typed, aligned pointer). Everywhere else the tensors pass unchanged.
That relies on how Triton specialises arguments (by attributes, for a type it does not know), so
:func:`addresses_work` checks it once per GPU; where it fails, graphs stay off under that allocator.

Importing this module imports triton.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .cuda_graphs import uses_async_allocator
from .current_device import indexed, on_device


class DeviceAddress(int):
    """A device address as an ``int`` that keeps its tensor's ``dtype`` and answers ``data_ptr()``."""

    def __new__(cls, address: int, dtype: torch.dtype):
        obj = super().__new__(cls, address)
        obj.dtype = dtype
        return obj

    @classmethod
    def of(cls, tensor: torch.Tensor) -> DeviceAddress:
        return cls(tensor.data_ptr(), tensor.dtype)

    def __getnewargs__(self):  # copy and pickle rebuild it from both
        return int(self), self.dtype

    def data_ptr(self) -> int:
        return int(self)


def capturing_under_async_allocator() -> bool:
    """Whether the current stream records a CUDA graph whose allocations the launcher would reject."""
    return uses_async_allocator() and torch.cuda.is_current_stream_capturing()


class AddressSafeKernel:
    """``kernel[grid](*args, **kwargs)`` as Triton's, with tensors passed as :class:`DeviceAddress` while
    :func:`capturing_under_async_allocator`."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getattr__(self, name):  # the JITFunction's other attributes (fn, cache, warmup, ...)
        if name == "kernel":  # not set yet (an instance being copied or unpickled)
            raise AttributeError(name)
        return getattr(self.kernel, name)

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            if capturing_under_async_allocator():
                args = tuple(DeviceAddress.of(a) if isinstance(a, torch.Tensor) else a for a in args)
                kwargs = {k: DeviceAddress.of(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            return launch(*args, **kwargs)

        return run


def address_safe(kernel) -> AddressSafeKernel:
    """Decorator for a ``@triton.jit`` kernel launched from the host (see the module's docstring)."""
    return AddressSafeKernel(kernel)


@triton.jit
def _scaled_copy_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=mask) * 2, mask=mask)


_CHECKED: dict[str, str | None] = {}


def addresses_work(device: torch.device | str | None = None) -> str | None:
    """None when this Triton compiles a kernel given :class:`DeviceAddress` arguments as it does for tensors
    (typed pointers, bf16 kept) and runs it correctly on ``device``; else the reason. Checked once per device,
    outside any capture."""
    try:
        dev = indexed(device if device is not None else "cuda")
    except Exception as exc:  # noqa: BLE001 - no CUDA in this build or process
        return f"no CUDA device ({type(exc).__name__}: {exc})"
    key = str(dev)
    if key not in _CHECKED:
        try:
            with on_device(dev):  # Triton launches on the current device
                src = torch.arange(1, 17, device=dev, dtype=torch.bfloat16)
                dst = torch.zeros_like(src)
                _scaled_copy_kernel[(1,)](DeviceAddress.of(src), DeviceAddress.of(dst), src.numel(), BLOCK=16)
                ok = torch.equal(dst, src * 2)
            _CHECKED[key] = None if ok else "a kernel given device addresses computed a wrong result"
        except Exception as exc:  # noqa: BLE001 - any failure (this Triton types the address as an integer)
            _CHECKED[key] = f"Triton does not take device addresses as pointers ({type(exc).__name__}: " \
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"
    return _CHECKED[key]
