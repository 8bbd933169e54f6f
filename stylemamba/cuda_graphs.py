"""Replaying work as CUDA graphs: a training step or a stylising batch costs one launch instead of thousands.

Why: the default step launches ~3-4 thousand kernels (decoder, 66 image-tower views, 4 Mamba blocks,
VGG, LPIPS, Adam); when the host CPU is slow to launch them the GPU waits, so the same step took 68 ms
on one host and 103 ms on another. A graph records the launches once and replays them with
one call, so the step runs at the GPU's speed whatever the host.

What a graph needs (and what the callers guarantee): static shapes; inputs at fixed addresses (copied
in before a replay); no host syncs and no host-side branches on tensor values inside; random numbers
from generators registered with the graph; optimizer state on the device (Adam ``capturable=True``,
learning rate as a device tensor). Outputs live in the graph's memory pool and are overwritten by the
next replay, so callers clone what they keep. Anything that cannot be captured raises during capture;
callers then fall back to eager and log why.
"""
from __future__ import annotations

import ctypes
import logging
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Hashable
from typing import Any

import torch

from .current_device import runs_on_device_of

log = logging.getLogger("stylemamba")

# "auto": replay when the step is measured to be launch-bound; "on": always replay (where it can be captured);
# "off": eager
CUDA_GRAPH_OPTIONS = ("auto", "on", "off")


def check_cuda_graph_option(value: str) -> str:
    if value not in CUDA_GRAPH_OPTIONS:
        raise ValueError(f"cuda_graphs={value!r} is not one of {', '.join(CUDA_GRAPH_OPTIONS)}")
    return value


# the share of an eager call's time the host spends launching it above which the call counts as launch-bound:
# a GPU-bound step returns to the host while ~1000 queued launches still run (0.70-0.85 of the full-size
# training step on an H200; the tiny models' step: 0.999)
LAUNCH_BOUND = 0.9


def timed_call(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float]:
    """``fn()`` from an idle GPU -> (its result, seconds until the host had launched it, seconds until the GPU
    had run it). Two synchronisations: for a one-off decision, not for every call."""
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    launched = time.perf_counter() - t0
    torch.cuda.synchronize(device)
    return out, launched, time.perf_counter() - t0


def is_launch_bound(launched: float, ran: float) -> bool:
    """Whether the GPU waited for the host's launches (see :data:`LAUNCH_BOUND`)."""
    return launched >= LAUNCH_BOUND * ran


def uses_async_allocator() -> bool:
    """Whether torch's CUDA allocator is ``cudaMallocAsync`` (ComfyUI's default unless started with
    ``--disable-cuda-malloc``); False in a build without CUDA."""
    try:
        return torch.cuda.get_allocator_backend() == "cudaMallocAsync"
    except Exception:  # noqa: BLE001 - a build without CUDA
        return False


def why_the_allocator_forbids_graphs(compiled: bool = False, device: torch.device | None = None) -> str | None:
    """Why CUDA graphs must not be captured in this process, or None. ComfyUI starts torch with the
    ``cudaMallocAsync`` allocator by default; under it Triton's launcher refuses the memory a capture allocates
    ("Pointer argument cannot be accessed from Triton"; the failed capture then killed the server with a CUDA error:
    H200, ComfyUI 0.3.64, bench/results/steady_h200/callK). Our own kernels get their tensors as addresses there
    (:mod:`stylemamba.triton_addresses`, checked once on the device); torch.compile's kernels (``compiled``) do not."""
    if not uses_async_allocator():
        return None
    if compiled:
        return ("torch's CUDA allocator is cudaMallocAsync (ComfyUI's default), under which torch.compile's kernels "
                "cannot be captured; start ComfyUI with --disable-cuda-malloc to let compiled steps replay as CUDA "
                "graphs")
    try:
        from .triton_addresses import addresses_work
    except Exception:  # noqa: BLE001 - no triton: none of our kernels in the graph, nothing to refuse
        return None
    why = addresses_work(device)
    if why:
        return (f"torch's CUDA allocator is cudaMallocAsync (ComfyUI's default), under which Triton kernels cannot be "
                f"captured here ({why}); start ComfyUI with --disable-cuda-malloc to let steps replay as CUDA graphs")
    return None


# how torch's cudaMallocAsync allocator starts its warning when a tensor a capture allocated is freed outside captures
CAPTURED_FREE_WARNING = "Attempting uncaptured free of a captured allocation"


def ignore_captured_free_warnings() -> None:
    """Stop torch's warning for each graph-allocated tensor freed outside a capture, process-wide, once. Under
    cudaMallocAsync every tensor a capture allocated (the gradients a replay writes, its outputs) belongs to the graph,
    and freeing it elsewhere warns ("technically allowed"): 184 warnings per new style in ComfyUI's log (callAP), for
    the gradients the next step or a restart sets to None, which nothing reads again while the graph keeps its memory.
    Called whenever a graph is captured under that allocator (a no-op once the filter is there). One filter, not a ``catch_warnings`` around each
    step: that is not thread-safe and makes Python forget which other warnings it has shown once. Frees outside any
    torch call (a plain ``del``) are printed by torch itself on stderr and not filtered (hence ``_free`` in stylemamba/train.py sets the gradients to None first)."""
    if not any(f[0] == "ignore" and getattr(f[1], "pattern", None) == CAPTURED_FREE_WARNING for f in warnings.filters):
        warnings.filterwarnings("ignore", message=CAPTURED_FREE_WARNING)


def trim_graph_memory(device: torch.device | int | None = None) -> bool:
    """Give the memory of destroyed CUDA graphs back to the device; True when trimmed. Under cudaMallocAsync a graph's
    memory comes from the driver's graph pool, which keeps it after the graph is gone until trimmed, and
    ``torch.cuda.empty_cache`` trims only the default pool. (With torch's caching allocator a graph's pool is torch's
    and ``empty_cache`` returns it: nothing to do.)"""
    if not uses_async_allocator():
        return False
    try:
        driver = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
        handle = ctypes.c_int()
        index = torch.cuda._utils._get_device_index(device, optional=True)
        if driver.cuDeviceGet(ctypes.byref(handle), index) != 0:
            return False
        torch.cuda.synchronize(index)
        return driver.cuDeviceGraphMemTrim(handle) == 0
    except (OSError, AttributeError) as exc:  # no driver library by that name, or one without graph memory nodes
        log.debug("stylemamba: could not trim the CUDA graphs' memory (%s)", exc)
        return False


class GraphCaptureError(RuntimeError):
    """Capturing failed (an operation that cannot be recorded, or memory): the caller runs eagerly."""


_capture_streams: dict[int, torch.cuda.Stream] = {}


def capture_stream() -> torch.cuda.Stream:
    """The side stream captures record on, ONE per device for the whole process. torch gives every (cuBLAS
    handle, stream) pair its own cuBLAS workspace and keeps it until the process ends, so a new stream per
    capture leaked 32 MiB per graph: 68 MB of GPU memory per style on an H200 (call S, 2 graphs a style)."""
    device = torch.cuda.current_device()
    stream = _capture_streams.get(device)
    if stream is None:
        stream = _capture_streams[device] = torch.cuda.Stream(device)
    return stream


class CapturedCalls:
    """``body()`` captured once per ``key`` as a CUDA graph, then replayed.

    ``body`` reads its inputs from tensors that stay at the same addresses (the caller copies new values
    into them before :meth:`__call__`) and returns its outputs (any structure of tensors), which stay
    valid until the next replay of ANY key: all keys' graphs share one memory pool, so the working memory of
    a second key (a training step with the second-order term, the first step of a restarted style) reuses
    the first's instead of adding its own. That is safe because callers keep nothing a replay writes past the
    next replay (they copy outputs out first) and replays never overlap. ``generators``: the non-default CUDA
    generators the body draws from (registered so each replay draws fresh numbers, as eager calls would).
    """

    def __init__(self, generators: tuple[torch.Generator, ...] = ()):
        self.generators = tuple(g for g in generators if g is not None and g.device.type == "cuda")
        self._graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, Any]] = {}
        self._pool = None  # the shared pool, from the first graph captured

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._graphs

    def __call__(self, key: Hashable, body: Callable[[], Any]) -> Any:
        self.record(key, body)
        graph, outputs = self._graphs[key]
        graph.replay()
        return outputs

    def entry(self, key: Hashable) -> tuple[torch.cuda.CUDAGraph, Any]:
        """``key``'s graph and the outputs it wrote (to keep those of a graph that never ran: train._never_free)."""
        return self._graphs[key]

    def record(self, key: Hashable, body: Callable[[], Any]) -> None:
        """Capture ``body`` for ``key`` without replaying it (a capture runs nothing on the GPU)."""
        if key not in self._graphs:
            self._graphs[key] = self._capture(body)

    def _capture(self, body: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
        """Record ``body`` on a side stream WITHOUT waiting for the GPU (``torch.cuda.graph`` would synchronise,
        collect garbage and empty the cache first): the host records while the GPU still runs the previous
        step, so capturing costs the GPU almost nothing. Replays are ordered after that step on the caller's
        stream; the graph's memory comes from its own pool."""
        if uses_async_allocator():
            ignore_captured_free_warnings()
        graph = torch.cuda.CUDAGraph()
        for g in self.generators:
            graph.register_generator_state(g)
        caller = torch.cuda.current_stream()
        side = capture_stream()
        side.wait_stream(caller)
        failure: Exception | None = None
        outputs = None
        with torch.cuda.stream(side):
            graph.capture_begin(pool=self._pool)
            try:
                outputs = body()
            except Exception as exc:  # noqa: BLE001 - any failure to record means: run eagerly
                failure = exc
            finally:
                try:
                    graph.capture_end()
                except Exception as exc:  # noqa: BLE001
                    failure = failure or exc
        caller.wait_stream(side)
        if failure is not None:
            # the failure's traceback holds the body's frames, whose locals (activations) sit in the graph's pool
            chain: BaseException | None = failure
            cleared: set[int] = set()
            while chain is not None and id(chain) not in cleared:  # the chain too (raised while handling another)
                cleared.add(id(chain))
                traceback.clear_frames(chain.__traceback__)
                chain = chain.__cause__ or chain.__context__
            del graph, outputs
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # the failed graph's pool: an eager retry may need that memory
            raise GraphCaptureError(f"{type(failure).__name__}: {failure}".splitlines()[0][:300]) from failure
        if self._pool is None:
            self._pool = graph.pool()
        return graph, outputs


class GraphedForward:
    """A gradient-free ``fn(x)`` replayed as a CUDA graph per input shape/dtype (stylising batch after batch
    of video frames of one size). The first call of a shape runs ``fn`` eagerly (it warms up cuDNN and
    Triton, whose first calls are not capturable). ``mode="auto"``: the second call is timed and the shape
    is graphed from the third call only if that call was launch-bound (:func:`is_launch_bound`), else it
    stays eager; ``"on"``: the second call captures. Each call returns a fresh tensor."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], mode: str = "auto", compiled: bool = False):
        self.fn = fn
        self.mode = check_cuda_graph_option(mode)
        self.compiled = compiled  # fn runs torch.compile'd modules (see why_the_allocator_forbids_graphs)
        self._calls = CapturedCalls()
        self._inputs: dict[Hashable, torch.Tensor] = {}
        self._calls_seen: dict[Hashable, int] = {}
        self._eager: set[Hashable] = set()  # shapes measured GPU-bound
        self.failed: str | None = None

    @runs_on_device_of("x")
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device)
        seen = self._calls_seen[key] = self._calls_seen.get(key, 0) + 1
        if self.failed is not None or self.mode == "off" or x.device.type != "cuda" or key in self._eager or seen == 1:
            return self.fn(x)
        forbidden = why_the_allocator_forbids_graphs(self.compiled, x.device)
        if forbidden:
            self.failed = forbidden
            log.info("stylemamba: stylising without CUDA graphs: %s", forbidden)
            return self.fn(x)
        if self.mode == "auto" and seen == 2:
            out, launched, ran = timed_call(lambda: self.fn(x), x.device)
            if not is_launch_bound(launched, ran):
                self._eager.add(key)
            log.info("stylemamba: stylising %s batches %s (launched in %.1f of %.1f ms)", tuple(x.shape),
                     "stays eager: GPU-bound" if key in self._eager else "replays as a CUDA graph: launch-bound",
                     launched * 1e3, ran * 1e3)
            return out
        static = self._inputs.get(key)
        if static is None:
            static = self._inputs[key] = torch.empty_like(x)
        static.copy_(x)
        try:
            out = self._calls(key, lambda: self.fn(static))
        except GraphCaptureError as exc:
            self.failed = str(exc)
            log.warning("stylemamba: CUDA graph capture failed, stylising eagerly (%s)", exc)
            return self.fn(x)
        return out.clone()
