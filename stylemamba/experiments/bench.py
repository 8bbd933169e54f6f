"""``python -m stylemamba bench``: how fast StyleMamba trains a style and stylises, against CLIPstyler.

Real architectures at full size with RANDOM weights (no model hub is needed; FLOPs, memory and
time do not depend on the weights' values): the sd-vae-ft-mse ``AutoencoderKL``, SigLIP
base-patch16-224, CLIP ViT-B/32 (the CLIPstyler baseline), VGG19 and LPIPS-VGG. Building the
models is not timed; everything after it is. ``--tiny`` runs the same code on the tiny models of
:mod:`stylemamba.testing.tiny_models` at tiny sizes (the CPU test of this module).

What is measured, per fusion variant (Mamba, cross-attention) and per speed setting
(``--compile off`` = plain eager PyTorch, or a ``torch.compile`` mode):

(a) ``recipe``: the whole default recipe, from content tensors on the device to a ``Style`` on
    the CPU (``train_style``), medians over repeats; the first run is reported apart (warm-up,
    autotuning, compilation);
(b) ``step``: one training step (CUDA events around back-to-back steps) and a breakdown whose
    parts are timed IN ISOLATION with the step's shapes (each part forward + backward alone, so
    the parts need not add up to the step: the step overlaps launches with work);
(c) ``stylise``: latency of one image at 512 and 1024 (``stylize``: device input, CPU output);
(d) ``video``: frames per second for a batch of 512x512 frames already on the device;
(e) peak device memory of (a) and (c), including the resident frozen networks;
(f) FLOPs of one step / one stylisation (``torch.utils.flop_counter.FlopCounterMode``: matrix
    products, convolutions and attention; the selective scan's custom kernel is not counted)
    and the TFLOP/s achieved against the bf16 matrix peak measured in the same run;
(g) the GPU time of one step's kernels (profiler) and the step's time over it: 1 means GPU-bound,
    more means the GPU waits for the host's launches.

Speed settings: ``--compile`` modes times ``--cuda-graphs`` (``auto``, the library's default: steps
and video batches replay as CUDA graphs when the second step / batch is launch-bound (training steps also
when a trial replay beats the eager step); ``on``: they
always replay; ``off``: eager launches); a column is named by the compile mode, plus ``+graphs`` for ``on``
and ``+no-graphs`` for ``off`` (``off``, ``default+graphs``, ...).

CLIPstyler (:mod:`stylemamba.experiments.baselines.clipstyler`) gets the same per-step, per-image and
memory measurements; "100 new images with one style" is ``recipe + 100 x stylise`` for
StyleMamba and ``100 x per-image optimisation`` for CLIPstyler (extrapolated from the measured
per-image time). The selective scan is timed alone with every backend available.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger("stylemamba")

PROMPT = "a watercolor painting with bold ink outlines"
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense, vendor datasheets

# The speed and memory targets on one H200 (None: no fixed number); checked on the full-size run only.
TARGETS = {
    "step_ms": 50.0, "recipe_s": 2.0, "stylise_512_ms": 20.0, "stylise_1024_ms": 80.0, "video_fps": 60.0,
    "train_peak_gb": 12.0, "hundred_images_ratio": 50.0, "scan_vs_kernel": 2.0,
    "recipe_workspace_s": 1.5,  # a new style as the Train node runs it on a GPU (default settings, no mamba-ssm)
}


# ---------------------------------------------------------------------------------------------- timing
STEP_WARMUP = 5  # untimed training steps before the per-step timing (see bench_stylemamba)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stats(samples: list[float], digits: int = 3) -> dict[str, Any]:
    """Median, min, max and count of a list of samples."""
    if not samples:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": round(statistics.median(samples), digits), "min": round(min(samples), digits),
            "max": round(max(samples), digits), "n": len(samples)}


def time_device(fn: Callable[[], Any], device: torch.device, warmup: int = 2, repeat: int = 10) -> list[float]:
    """Milliseconds per call of ``fn``: CUDA events around each of back-to-back calls, or wall time on CPU."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeat)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in events]
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def time_wall(fn: Callable[[], Any], device: torch.device, warmup: int = 1, repeat: int = 5) -> tuple[list[float], Any]:
    """Seconds per call, host clock, device synchronised after each call; also returns the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    sync(device)
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out, result


@contextlib.contextmanager
def peak_memory(device: torch.device, box: dict):
    """Records into ``box`` the peak allocated bytes (GB) while the block runs, what was resident before, and the
    peak the caching allocator reserved (allocated + what it holds on top)."""
    if device.type != "cuda":
        yield
        box.update(peak_gb=None, resident_gb=None, reserved_peak_gb=None)
        return
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device)
    try:
        yield
    finally:
        sync(device)
        box.update(peak_gb=round(torch.cuda.max_memory_allocated(device) / 1e9, 3), resident_gb=round(resident / 1e9, 3),
                   reserved_peak_gb=round(torch.cuda.max_memory_reserved(device) / 1e9, 3))


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def count_syncs(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Host-device synchronisations inside ``fn`` (``torch.cuda.set_sync_debug_mode``), None on CPU."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def device_kernels(fn: Callable[[], Any], device: torch.device, repeat: int = 1) -> list[tuple[str, float]]:
    """(kernel name, GPU microseconds) of every kernel ``repeat`` calls of ``fn`` run, after one untimed call
    (the profiler's device events; CUDA only)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(repeat):
            fn()
        sync(device)
    return [(e.name, e.time_range.elapsed_us()) for e in prof.events() if e.device_type == DeviceType.CUDA]


def kernel_time_ms(fn: Callable[[], Any], device: torch.device, repeat: int = 5) -> float | None:
    """GPU time of the kernels one call of ``fn`` runs (the profiler's device events, summed; median of the
    per-call sums is not available, so the mean over ``repeat`` calls), None on CPU. Against the call's
    own time it says whether the GPU or the host's launches set the pace (GPU-bound: about equal)."""
    if device.type != "cuda":
        return None
    total_us = sum(us for _, us in device_kernels(fn, device, repeat))
    return round(total_us / 1e3 / repeat, 3) if total_us else None


def kernel_groups(fn: Callable[[], Any], device: torch.device, top: int = 25) -> list[dict[str, Any]]:
    """GPU time per kernel name over one call of ``fn``, largest first (what a step's time goes to; CUDA only)."""
    totals: dict[str, list[float]] = {}
    for name, us in device_kernels(fn, device):
        entry = totals.setdefault(name[:110], [0.0, 0])
        entry[0] += us
        entry[1] += 1
    rows = sorted(totals.items(), key=lambda kv: -kv[1][0])
    return [{"kernel": k, "ms": round(v[0] / 1e3, 3), "calls": v[1]} for k, v in rows[:top]]


def _layout(t: torch.Tensor) -> str:
    from ..group_norm import is_channels_last

    if is_channels_last(t):
        return "channels_last"
    return "contiguous" if t.is_contiguous() else "strided"


def _frame(f) -> str:
    """``file.py:line function`` (a package's file by its path inside site-packages)."""
    name = f.filename.split("site-packages/")[-1] if "site-packages" in f.filename else f.filename.rsplit("/", 1)[-1]
    return f"{name}:{f.lineno} {f.name}"


def copy_sources(fn: Callable[[], Any], top: int = 15, depth: int = 5) -> list[dict[str, Any]]:
    """Where one (eager) call of ``fn`` copies tensors: every copy operator PyTorch dispatches (``clone``, ``copy_``,
    ``_to_copy``; ``.contiguous()`` and ``.to()`` end in them), grouped by operator, shape, layouts and the last
    ``depth`` Python frames outside torch that called it, with the bytes it moved, largest first. Why: a GPU
    profile shows layout conversions only as anonymous ``direct_copy`` kernels. Copies made inside a native kernel
    (not dispatched from Python) are not seen."""
    import traceback

    from torch.utils._python_dispatch import TorchDispatchMode

    ops = {torch.ops.aten.clone.default, torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default}
    rows: dict[tuple, list[int]] = {}

    class Copies(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in ops and isinstance(out, torch.Tensor):
                src = args[1] if func is torch.ops.aten.copy_.default else args[0]
                frames = [_frame(f) for f in traceback.extract_stack()[:-1]
                          if "/torch/" not in f.filename and "_python_dispatch" not in f.filename]
                key = (str(func).split(".")[1], tuple(out.shape), f"{_layout(src)} -> {_layout(out)}",
                       tuple(frames[-depth:]))
                entry = rows.setdefault(key, [0, 0])
                entry[0] += out.numel() * out.element_size() * 2  # read + write
                entry[1] += 1
            return out

    with Copies():
        fn()
    ordered = sorted(rows.items(), key=lambda kv: -kv[1][0])[:top]
    return [{"op": k[0], "shape": list(k[1]), "layouts": k[2], "mb": round(v[0] / 2**20, 2), "calls": v[1],
             "stack": list(reversed(k[3]))} for k, v in ordered]


def matmul_peak_tflops(device: torch.device, n: int = 8192, repeat: int = 10) -> float | None:
    """bf16 matrix-product rate measured here (random data), the ceiling the TFLOP/s figures are read against."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = statistics.median(time_device(lambda: a @ b, device, warmup=3, repeat=repeat))
    return round(2 * n ** 3 / (ms * 1e-3) / 1e12, 1)


def tflops(flops: int | None, ms: float | None) -> float | None:
    if not flops or not ms:
        return None
    return float(f"{flops / (ms * 1e-3) / 1e12:.4g}")


# ---------------------------------------------------------------------------------------------- models
class Models:
    """The networks of one benchmark run (built, not timed)."""

    def __init__(self, vae, siglip, clip, vgg, lpips, kind: str):
        self.vae, self.siglip, self.clip, self.vgg, self.lpips, self.kind = vae, siglip, clip, vgg, lpips, kind


def word_tokenizer(max_length: int):
    """An offline word-level tokenizer (``tokenizers`` WordLevel in ``PreTrainedTokenizerFast``).

    The benchmark's models have random weights, so any tokenizer whose ids are in the vocabulary
    gives the real cost (the text tower runs once per style anyway).
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    from ..testing.tiny_models import style_corpus

    words = sorted({w for line in style_corpus() for w in line.lower().replace(".", " ").replace(",", " ").split()})
    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                                   model_max_length=max_length)


def build_full_models(device: torch.device, with_clip: bool = True) -> Models:
    """Full-size architectures with random weights, built directly on ``device``."""
    from diffusers import AutoencoderKL
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    from ..encoders import _NORMALISATION, TextImageEncoder
    from ..perceptual import LPIPSLoss, VGGFeatures
    from ..testing.tiny_models import sd_vae_config
    from ..vae import SDVAE

    torch.manual_seed(0)
    with torch.device(device):
        vae = SDVAE.from_diffusers(AutoencoderKL(**sd_vae_config()), name="sd-vae-ft-mse (random weights)")
        tower = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
        text = {**tower, "vocab_size": 32000, "max_position_embeddings": 64, "pad_token_id": 0, "eos_token_id": 2,
                "bos_token_id": None}
        vision = {**tower, "image_size": 224, "patch_size": 16}
        siglip_model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        siglip_model.config._attn_implementation = "sdpa"
        siglip = TextImageEncoder(siglip_model, word_tokenizer(64), "siglip", 224, *_NORMALISATION["siglip"],
                                  name="siglip-base-patch16-224 (random weights)")
        clip = None
        if with_clip:
            clip_model = CLIPModel(CLIPConfig())  # the default config is ViT-B/32
            clip_model.config._attn_implementation = "sdpa"
            clip = TextImageEncoder(clip_model, word_tokenizer(77), "clip", 224, *_NORMALISATION["clip"],
                                    name="clip-vit-base-patch32 (random weights)")
        vgg = VGGFeatures()
    lp = LPIPSLoss(net="vgg")  # the lpips package builds its VGG16 on the CPU
    return Models(vae.to(device), siglip.to(device), clip.to(device) if clip is not None else None,
                  vgg.to(device), lp.to(device), "full")


def build_tiny_bench_models(device: torch.device, folder: str | Path | None = None) -> Models:
    """The tiny models (built into ``folder``, or a temporary one removed once they are loaded: each run left
    one behind) through the real loaders."""
    if folder is None:
        # Windows refuses to delete a file still memory-mapped by the loaded weights: left there, not an error
        with tempfile.TemporaryDirectory(prefix="stylemamba_bench_", ignore_cleanup_errors=True) as tmp:
            return build_tiny_bench_models(device, tmp)
    from ..encoders import load_text_image_encoder
    from ..perceptual import LPIPSLoss, VGGFeatures
    from ..testing.tiny_models import build_tiny_models
    from ..vae import load_vae

    folder = Path(folder)
    paths = build_tiny_models(folder) if not (folder / "manifest.json").is_file() else {
        "vae": folder / "vae", "siglip": folder / "siglip", "clip": folder / "clip",
        "vgg19": folder / "vgg19_tiny.safetensors"}
    vae = load_vae(paths["vae"], device=device)
    siglip = load_text_image_encoder(paths["siglip"], device=device)
    clip = load_text_image_encoder(paths["clip"], device=device)
    vgg = VGGFeatures.from_safetensors(paths["vgg19"], device=device)
    lp = LPIPSLoss(net="vgg").to(device)
    return Models(vae, siglip, clip, vgg, lp, "tiny")


# ---------------------------------------------------------------------------------------------- settings
class Sizes:
    """Resolutions and recipe sizes of a run: the real ones, or tiny ones for ``--tiny``."""

    def __init__(self, tiny: bool, video_frames: int | None = None, video_batch: int | None = None):
        self.tiny = tiny
        self.train = 64 if tiny else 512
        self.stylise = (64, 128) if tiny else (512, 1024)
        self.video_frames = video_frames or (4 if tiny else 64)
        self.video_batch = video_batch or (2 if tiny else 16)
        self.warmup = 0 if tiny else 2  # untimed calls before timed ones
        self.part_repeat = 1 if tiny else 10  # timed calls of each step part / stylisation

    def train_config(self, kind: str = "mamba", compile: str = "off", cuda_graphs: str = "auto"):
        from ..fusion import FusionConfig
        from ..losses import LossConfig
        from ..train import TrainConfig

        if self.tiny:
            cfg = TrainConfig(epochs=2, resolution=64, lr_decay_epoch=2,
                              loss=LossConfig(n_crops=4, crop_fraction=0.5, so_interval=2),
                              fusion=FusionConfig(width=32, depth=2, d_state=4, heads=4, kind=kind))
        else:
            cfg = TrainConfig()
            cfg.fusion = copy.deepcopy(cfg.fusion)
            cfg.fusion.kind = kind
        if compile != "off":
            if "compile" not in TrainConfig.__dataclass_fields__:
                raise RuntimeError("this version of stylemamba.train has no TrainConfig.compile option")
            cfg.compile = compile
        cfg.cuda_graphs = cuda_graphs
        return cfg

    def clipstyler_config(self):
        from .baselines.clipstyler import ClipStylerConfig

        if self.tiny:
            return ClipStylerConfig(steps=3, resolution=64, n_crops=4, crop_fraction=0.5, base_channels=4,
                                    lr_decay_step=2)
        return ClipStylerConfig()


def content_images(n: int, size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0,1] (low-frequency noise upsampled, plus fine noise): not zeros, not flat."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(2, size // 32), max(2, size // 32), generator=g)
    img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    img = img + 0.05 * torch.randn(n, 3, size, size, generator=g)
    return img.clamp(0, 1).to(device)


# ---------------------------------------------------------------------------------------------- StyleMamba
def step_parts(trainer, device: torch.device, repeat: int, scan: bool, warmup: int = 2) -> dict[str, Any]:
    """Each part of a training step, forward + backward, timed alone with the step's shapes (ms)."""
    from .. import losses as L
    from ..precision import autocast
    from ..ssm import MambaMixer, available_backends
    from ..train import step_views

    tr, lc = trainer, trainer.cfg.loss

    def ac():
        return autocast(device, tr.cfg.precision)

    def params_free():
        tr.opt.zero_grad(set_to_none=True)

    parts: dict[str, Any] = {}
    z = tr.z

    def fusion_fb():
        params_free()
        with ac():
            m = tr.model.fuse(z)
        m.float().square().mean().backward()

    parts["fusion_fwd_bwd"] = stats(time_device(fusion_fb, device, warmup=warmup, repeat=repeat))
    mixers = [m for m in tr.model.fusion.modules() if isinstance(m, MambaMixer)]
    compiled_fusion = getattr(tr.model.fusion, "_compiled_call_impl", None) is not None
    if mixers and not compiled_fusion:  # switching a compiled module's backend would recompile it
        old = mixers[0].backend
        parts["fusion_backend"] = old
        for backend in available_backends():
            if backend == "sequential":
                continue
            tr.model.fusion.set_backend(backend)
            parts[f"fusion_fwd_bwd[{backend}]"] = stats(time_device(fusion_fb, device, warmup=warmup, repeat=repeat))
        tr.model.fusion.set_backend(old)

    with torch.no_grad(), ac():
        m0 = tr.model.fuse(z).detach()
    with ac():  # with grad enabled, as in the step (a compiled decoder would recompile for no_grad)
        y0 = tr.model.decoder(m0).detach()
    gy = torch.randn_like(y0)

    def decoder_fb():
        params_free()
        with ac():
            y = tr.model.decoder(m0)
        y.backward(gy)

    parts["decoder_fwd_bwd"] = stats(time_device(decoder_fb, device, warmup=warmup, repeat=repeat))
    if device.type == "cuda":
        from ..speed import enable_cudnn_autotune

        before = enable_cudnn_autotune(not torch.backends.cudnn.benchmark)
        key = "decoder_fwd_bwd[cudnn.benchmark=%s]" % ("on" if torch.backends.cudnn.benchmark else "off")
        parts[key] = stats(time_device(decoder_fb, device, warmup=warmup, repeat=repeat))
        enable_cudnn_autotune(before)

    enc = tr.text
    encode = tr.encode_image  # the step's own image tower (compiled when the step's is)

    def views(y):  # what a step builds (train.step_views), with the step's generator
        return step_views(y, lc, enc.image_size, tr.gen).images

    def crops_fb():
        y = y0.clone().requires_grad_(True)
        with ac():
            v = views(y)
        v.float().mean().backward()

    parts["views_crops_fwd_bwd"] = stats(time_device(crops_fb, device, warmup=warmup, repeat=repeat))
    with torch.no_grad(), ac():
        v0 = views(y0).detach()
    parts["siglip_batch"] = int(v0.shape[0])

    def siglip_fb():
        v = v0.clone().requires_grad_(True)
        with ac():
            emb = encode(v)
        emb.float().sum().backward()

    parts["siglip_fwd_bwd"] = stats(time_device(siglip_fb, device, warmup=warmup, repeat=repeat))
    vgg_net, lpips_net = tr.vgg, tr.lpips
    if tr.feats_x is not None:
        def vgg_fb():
            y = y0.clone().requires_grad_(True)
            with ac():
                loss = L.content_loss(vgg_net(y), tr.feats_x)
            loss.float().backward()

        parts["vgg_fwd_bwd"] = stats(time_device(vgg_fb, device, warmup=warmup, repeat=repeat))
    if tr.lpips is not None and lc.lpips > 0:
        def lpips_fb():
            y = y0.clone().requires_grad_(True)
            with ac():
                loss = lpips_net(y, target=tr.lpips_x) if tr.lpips_x is not None else lpips_net(y, tr.x)
            loss.float().backward()

        parts["lpips_fwd_bwd"] = stats(time_device(lpips_fb, device, warmup=warmup, repeat=repeat))

    # optimiser: Adam over decoder + fusion, gradients present (the plain/foreach and the fused kernel)
    params_free()
    tr.step(0)
    parts["optimizer"] = stats(time_device(tr.opt.step, device, warmup=warmup, repeat=repeat))
    if device.type == "cuda":  # the other Adam implementation, for comparison
        fused = bool(tr.opt.defaults.get("fused"))
        opt = torch.optim.Adam(tr.model.parameters(), lr=tr.cfg.lr, fused=not fused, foreach=True if fused else None)
        parts["optimizer[%s]" % ("foreach" if fused else "fused")] = stats(
            time_device(opt.step, device, warmup=warmup, repeat=repeat))
        del opt
    params_free()
    if scan and mixers:
        parts["scan"] = scan_bench(tr, device, repeat, warmup)
    return parts


def scan_bench(trainer, device: torch.device, repeat: int, warmup: int = 2) -> dict[str, Any]:
    """The selective scan alone at the fusion's shapes (bf16 inputs as under autocast), fwd and fwd+bwd."""
    from ..ssm import available_backends, selective_scan

    fc = trainer.model.fusion.config
    n_dirs = {"forward": 1, "bidirectional": 2, "cross": 4}[fc.scan]
    b = int(trainer.z.shape[0]) * n_dirs
    d, n = fc.width * fc.expand, fc.d_state
    length = int(trainer.z.shape[-1] * trainer.z.shape[-2])
    dt = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    inputs = {"u": r(b, d, length).to(dt), "delta": r(b, d, length, scale=0.5).to(dt),
              "A": -torch.exp(r(d, n, scale=0.5)), "B": r(b, n, length).to(dt), "C": r(b, n, length).to(dt),
              "D": r(d), "z": r(b, d, length).to(dt), "delta_bias": r(d, scale=0.5)}
    out: dict[str, Any] = {"shape": {"batch": b, "channels": d, "state": n, "length": length}, "dtype": str(dt)}
    ref = None
    for backend in available_backends():
        if backend == "sequential":
            continue
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}

        def fwd(leaves=leaves, backend=backend):
            with torch.no_grad():
                return selective_scan(**leaves, delta_softplus=True, backend=backend)

        def fwd_bwd(leaves=leaves, backend=backend):
            y = selective_scan(**leaves, delta_softplus=True, backend=backend)
            y.float().square().mean().backward()

        y = fwd().float()
        if ref is None:
            ref = y
        out[backend] = {"fwd_ms": stats(time_device(fwd, device, warmup=warmup, repeat=repeat)),
                        "fwd_bwd_ms": stats(time_device(fwd_bwd, device, warmup=warmup, repeat=repeat)),
                        "rel_err_vs_first": round(float((y - ref).norm() / ref.norm().clamp_min(1e-12)), 6)}
    return out


def setting_name(compile: str, cuda_graphs: str) -> str:
    """A speed setting's column name: the compile mode; "+graphs" / "+no-graphs" when CUDA graphs are forced
    on / off (the library's "auto" is the plain name)."""
    return compile + {"auto": "", "on": "+graphs", "off": "+no-graphs"}[cuda_graphs]


def bench_stylemamba(models: Models, sizes: Sizes, device: torch.device, kind: str, compile: str,
                     repeats: int, steps: int, full_parts: bool, res: dict[str, Any] | None = None,
                     progress: Callable[[], None] = lambda: None, cuda_graphs: str = "auto") -> dict[str, Any]:
    """(a)-(f) for one fusion variant under one speed setting, filled into ``res`` as measured."""
    from ..style_model import StyleModel
    from ..stylize import stylize
    from .metrics import count_parameters
    from ..train import StyleTrainer, TrainingWorkspace, train_style

    res = {} if res is None else res
    res.update(fusion=kind, compile=compile, cuda_graphs=cuda_graphs)
    cfg = sizes.train_config(kind, compile, cuda_graphs)
    x = content_images(1, sizes.train, device)
    args = (models.vae, models.siglip, x, PROMPT)
    kw = {"vgg": models.vgg, "lpips": models.lpips, "device": device}

    # (a) the whole recipe, cold then warm; side by side, the next style in a TrainingWorkspace (the last style's
    # trainer restarted: what the Train node does on a GPU) after its first, untimed, style
    runs, loops, mem, kept_runs, phases = [], [], {}, [], []
    workspace = TrainingWorkspace()
    result = None
    for i in range(repeats + 1):
        box: dict = {}
        with peak_memory(device, box):
            t0 = time.perf_counter()
            result = train_style(*args, copy.deepcopy(cfg), **kw)
            sync(device)
            seconds = time.perf_counter() - t0
        if i == 0:
            res["recipe_first_s"] = round(seconds, 3)
        else:
            runs.append(seconds)
            loops.append(result.seconds)
        mem = box if i == 1 or not mem else mem
        t0 = time.perf_counter()
        kept = train_style(*args, copy.deepcopy(cfg), workspace=workspace, **kw)
        sync(device)
        if i:
            kept_runs.append(time.perf_counter() - t0)
            phases.append(kept.phases)
    workspace.release()
    res["recipe_s"] = stats(runs)
    res["recipe_loop_only_s"] = stats(loops)
    res["recipe_workspace_s"] = stats(kept_runs)
    res["recipe_workspace_phases_s"] = {k: round(statistics.median(p[k] for p in phases), 4) for k in phases[0]}
    res["recipe_steps"] = result.steps
    res["train_peak_gb"], res["resident_gb"] = mem.get("peak_gb"), mem.get("resident_gb")
    res["final_losses"] = {k: round(v, 4) for k, v in (result.history[-1] if result.history else {}).items()}
    style = result.style
    progress()

    # (b) per step
    trainer = StyleTrainer(*args, copy.deepcopy(cfg), **kw)
    epochs = cfg.epochs

    def one_step(counter=[0]):  # noqa: B006 - a counter across calls
        e = counter[0] % epochs
        counter[0] += 1
        trainer.step(e, keep_output=False)  # as a run without previews
        trainer.end_epoch()

    # a new trainer's first steps run eagerly, try a replay and capture a graph per kind of step (with and without
    # the second-order term): timed after them (with 1 untimed step the tiny run's median of 10 included them)
    res["step_ms"] = stats(time_device(one_step, device, warmup=STEP_WARMUP, repeat=steps))
    res["syncs_per_step"] = count_syncs(one_step, device)
    res["kernel_ms_per_step"] = kernel_time_ms(one_step, device)
    if res["kernel_ms_per_step"]:  # the step's time over its kernels' GPU time: 1 = GPU-bound
        res["step_over_kernels"] = round(res["step_ms"]["median"] / res["kernel_ms_per_step"], 3)
        res["step_kernels"] = kernel_groups(one_step, device, top=30)  # where the step's GPU time goes
    if compile == "off" and trainer.graphs is None:  # a graph replay runs no operator the counter could see
        res["step_flops"] = count_flops(one_step)
    res["parts_ms"] = step_parts(trainer, device, repeat=sizes.part_repeat, scan=full_parts, warmup=sizes.warmup)
    res["fusion_params"] = count_parameters(trainer.model.fusion)
    res["decoder_params"] = count_parameters(trainer.model.decoder)
    progress()
    trainer = None  # free its memory before stylising
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # (c) stylise latency, (d) video, (e) memory
    from ..speed import prepare_for_inference

    model = prepare_for_inference(models.vae, StyleModel.from_styles(models.vae, [style]), compile=compile)
    lat: dict[str, Any] = {}
    for size in sizes.stylise:
        img = content_images(1, size, device, seed=size)
        box = {}
        t_first = time.perf_counter()
        stylize(img, models.vae, model)
        sync(device)
        lat[f"first_call_s_{size}"] = round(time.perf_counter() - t_first, 3)
        with peak_memory(device, box):
            times, _ = time_wall(lambda img=img: stylize(img, models.vae, model), device, warmup=sizes.warmup,
                                 repeat=sizes.part_repeat)
        lat[f"{size}_ms"] = stats([t * 1e3 for t in times])
        lat[f"peak_gb_{size}"] = box.get("peak_gb")
        progress()
        if compile == "off" and size == sizes.stylise[0]:
            lat[f"flops_{size}"] = count_flops(lambda img=img: stylize(img, models.vae, model))
    res["stylise"] = lat
    progress()
    if full_parts or sizes.tiny:
        frames = content_images(sizes.video_frames, sizes.stylise[0], device, seed=7)
        bs = sizes.video_batch
        stylize(frames[:bs], models.vae, model, batch_size=bs)  # warm-up / compile for this batch size
        times, _ = time_wall(lambda: stylize(frames, models.vae, model, batch_size=bs, cuda_graphs=cuda_graphs), device,
                             warmup=0, repeat=1 if sizes.tiny else 3)
        res["video"] = {"frames": sizes.video_frames, "batch_size": bs, "size": sizes.stylise[0],
                        "seconds": stats(times), "fps": round(sizes.video_frames / statistics.median(times), 1)}
    model = None
    return res


# ---------------------------------------------------------------------------------------------- small GPUs
def parse_caps(text: str) -> list[float]:
    """``"8,12"`` -> [8.0, 12.0] (GB cards to emulate)."""
    try:
        caps = [float(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--memory-caps {text!r}: give card sizes in GB, e.g. 8,12") from None
    if not caps or any(c <= 0 for c in caps):
        raise argparse.ArgumentTypeError(f"--memory-caps {text!r}: give positive card sizes in GB, e.g. 8,12")
    return caps


def bench_memory_caps(models: Models, sizes: Sizes, device: torch.device, caps_gb: list[float],
                      images: tuple[int, ...] = (1, 4), repeats: int = 2) -> dict[str, Any]:
    """The default recipe (memory_plan "auto") on 1 and 4 content images, uncapped and on emulated small cards.

    A card of C GB is emulated with ``torch.cuda.set_per_process_memory_fraction(C / total)``: the frozen
    networks count against it, as on a real card (the CUDA context, ~0.5 GB on a real card, does not).
    Each setting: one untimed warm-up run, then ``repeats`` timed runs (median). CPU: caps cannot be
    emulated; the uncapped rows run and every capped row says so.
    """
    from ..train import train_style

    out: dict[str, Any] = {"caps_gb": caps_gb, "images": list(images), "repeats": repeats, "rows": []}
    if device.type == "cuda" and device.index is None:  # set_per_process_memory_fraction needs an index
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    if total is None:
        out["note"] = (f"memory caps cannot be emulated on {device.type}: torch.cuda.set_per_process_memory_fraction "
                       "needs a CUDA device; only the uncapped runs were measured")
        log.warning("bench: %s", out["note"])
    base: dict[int, float] = {}
    for cap in [None, *caps_gb]:
        for n in images:
            row: dict[str, Any] = {"cap_gb": cap, "images": n}
            out["rows"].append(row)
            if cap is not None and total is None:
                row.update(status="not emulated", reason=out["note"])
                continue
            if cap is not None and cap * 1e9 > total:
                row.update(status="not emulated", reason=f"the card has only {total / 1e9:.1f} GB")
                continue
            x = content_images(n, sizes.train, device, seed=n)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.set_per_process_memory_fraction(1.0 if cap is None else cap * 1e9 / total, device)
            try:
                times, peak, result = [], None, None
                for i in range(repeats + 1):
                    box: dict = {}
                    with peak_memory(device, box):
                        t0 = time.perf_counter()
                        result = train_style(models.vae, models.siglip, x, PROMPT, sizes.train_config(), vgg=models.vgg,
                                             lpips=models.lpips, device=device)
                        sync(device)
                        seconds = time.perf_counter() - t0
                    if i:
                        times.append(seconds)
                    peak = max(peak or 0.0, box.get("peak_gb") or 0.0) if box.get("peak_gb") is not None else None
                row.update(status="pass", recipe_s=stats(times), peak_gb=peak,
                           plan=result.style.metadata.get("memory_plan"))
                if cap is None:
                    base[n] = row["recipe_s"]["median"]
                elif n in base:
                    row["ratio_to_uncapped"] = round(row["recipe_s"]["median"] / base[n], 3)
            except torch.cuda.OutOfMemoryError as exc:  # the library's OutOfMemory is one too
                row.update(status="fail", reason=f"out of memory: {str(exc)[:300]}")
            finally:
                result = None
                if device.type == "cuda":
                    torch.cuda.set_per_process_memory_fraction(1.0, device)
                    torch.cuda.empty_cache()
            log.info("bench: memory cap %s GB, %d image(s): %s", cap, n, row.get("status"))
    return out


def format_memory_caps(section: dict[str, Any]) -> str:
    """The emulated-small-GPU table: pass/fail, time per style, peak, ratio to the uncapped run."""
    lines = ["| card | content images | result | per style (s) | x uncapped | peak (GB) | plan |", "|---|---|---|---|---|---|---|"]
    for r in section["rows"]:
        plan = r.get("plan") or {}
        plan_text = (f"micro_batch {plan['micro_batch']}, view_chunk {plan['view_chunk'] or 'all'}, "
                     f"checkpointing {'on' if plan['checkpointing'] else 'off'}"
                     + (", tower layers recomputed" if plan.get("tower_checkpointing") else "")) if plan else r.get("reason", "")
        card = "uncapped" if r["cap_gb"] is None else f"{r['cap_gb']:g} GB"
        lines.append(f"| {card} | {r['images']} | {r['status']} | {_fmt(r.get('recipe_s'))} | "
                     f"{_fmt(r.get('ratio_to_uncapped'))} | {_fmt(r.get('peak_gb'))} | {plan_text} |")
    if section.get("note"):
        lines.append("")
        lines.append(section["note"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLIPstyler
def bench_clipstyler(models: Models, sizes: Sizes, device: torch.device, steps: int, full_run: bool) -> dict[str, Any]:
    """Per-step and per-image cost of the CLIPstyler baseline (CLIP ViT-B/32, its 200-step recipe)."""
    from .baselines.clipstyler import ClipStylerRun, stylize_clipstyler
    from .metrics import count_parameters

    cfg = sizes.clipstyler_config()
    x = content_images(1, sizes.train, device)
    res: dict[str, Any] = {"recipe_steps": cfg.steps, "text_model": models.clip.name}
    t0 = time.perf_counter()
    run = ClipStylerRun(x, PROMPT, models.clip, models.vgg, cfg, device=device)
    sync(device)
    res["setup_s"] = round(time.perf_counter() - t0, 3)
    counter = [0]

    def one_step():
        run.step(counter[0] % cfg.steps)
        counter[0] += 1

    res["step_ms"] = stats(time_device(one_step, device, warmup=sizes.warmup + 1, repeat=steps))
    res["syncs_per_step"] = count_syncs(one_step, device)
    res["step_flops"] = count_flops(one_step)
    res["unet_params"] = count_parameters(run.unet)
    run = None
    est = res["setup_s"] + cfg.steps * res["step_ms"]["median"] / 1e3
    res["per_image_estimate_s"] = round(est, 3)
    if full_run:
        box: dict = {}
        with peak_memory(device, box):
            t0 = time.perf_counter()
            stylize_clipstyler(x, PROMPT, models.clip, models.vgg, cfg, device=device)
            sync(device)
            res["per_image_s"] = round(time.perf_counter() - t0, 3)
        res["peak_gb"] = box.get("peak_gb")
    return res


# ---------------------------------------------------------------------------------------------- the run
def run_bench(models: Models, sizes: Sizes, device: torch.device, compile_modes: list[str], variants: list[str],
              repeats: int, steps: int, json_path: Path | None = None, clipstyler_full: bool = True,
              memory_caps: list[float] | None = None, caps_repeats: int = 2,
              cuda_graphs: tuple[str, ...] = ("auto",)) -> dict[str, Any]:
    """All measurements; writes ``json_path`` after every section (a cut-short run keeps what it measured).

    ``memory_caps``: GB cards to emulate (:func:`bench_memory_caps`), measured first; ``variants`` may be
    empty to measure only those."""
    from ..train import TrainingCancelled

    report: dict[str, Any] = {"env": environment(device), "models": models.kind,
                              "sizes": {"train": sizes.train, "stylise": list(sizes.stylise),
                                        "video_frames": sizes.video_frames, "video_batch": sizes.video_batch},
                              "prompt": PROMPT, "results": {}}

    def save():
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            from ..image_io import write_text_whole
            write_text_whole(json_path, json.dumps(report, indent=1, default=str))

    report["env"]["matmul_bf16_tflops"] = matmul_peak_tflops(device)
    save()
    if memory_caps:
        log.info("bench: memory caps %s GB", memory_caps)
        t0 = time.perf_counter()
        report["memory_caps"] = bench_memory_caps(models, sizes, device, memory_caps, repeats=caps_repeats)
        report["memory_caps"]["bench_wall_s"] = round(time.perf_counter() - t0, 1)
        save()
    graph_options = list(dict.fromkeys(cuda_graphs if device.type == "cuda" else ["auto"]))  # none on a CPU
    settings = [(mode, graphs) for mode in compile_modes for graphs in graph_options]
    for i, (mode, graphs) in enumerate(settings):
        for kind in [v for v in variants if v in ("mamba", "cross_attention")]:
            key = f"{'stylemamba' if kind == 'mamba' else 'cross_attention'}/{setting_name(mode, graphs)}"
            log.info("bench: %s", key)
            t0 = time.perf_counter()
            partial: dict[str, Any] = {}
            report.setdefault("partial", {})[key] = partial  # saved as it fills (a run cut short keeps it)
            try:
                report["results"][key] = bench_stylemamba(models, sizes, device, kind, mode, repeats, steps,
                                                          full_parts=(kind == "mamba"), res=partial, progress=save,
                                                          cuda_graphs=graphs)
                del report["partial"][key]
            except TrainingCancelled:  # a Ctrl-C (train_style's answer to it) stops the bench, as before
                raise
            except Exception as exc:  # keep the other measurements; the JSON says what failed
                if sizes.tiny:
                    raise
                log.exception("bench: %s failed", key)
                report.setdefault("errors", {})[key] = f"{type(exc).__name__}: {exc}"[:2000]
                save()
                continue
            report["results"][key]["bench_wall_s"] = round(time.perf_counter() - t0, 1)
            save()
        if i == 0 and "clipstyler" in variants:  # before the (slow to compile) other settings
            log.info("bench: clipstyler")
            t0 = time.perf_counter()
            report["results"]["clipstyler"] = bench_clipstyler(models, sizes, device, steps, clipstyler_full)
            report["results"]["clipstyler"]["bench_wall_s"] = round(time.perf_counter() - t0, 1)
            save()
    report["summary"] = summarize(report)
    save()
    return report


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    try:
        import diffusers
        import transformers

        env.update(diffusers=diffusers.__version__, transformers=transformers.__version__)
    except ImportError:
        pass
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        env["gpu"] = name
        env["datasheet_bf16_tflops"] = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)
    else:
        env["cpu"] = platform.processor() or platform.machine()
        env["threads"] = torch.get_num_threads()
    from ..ssm import available_backends

    env["scan_backends"] = available_backends()
    return env


def _best(report: dict[str, Any], variant: str) -> tuple[str | None, dict[str, Any] | None]:
    """The fastest measured speed setting of a variant (by per-step median)."""
    found = [(k, v) for k, v in report["results"].items() if k.startswith(variant + "/")]
    if not found:
        return None, None
    return min(found, key=lambda kv: kv[1]["step_ms"]["median"])


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Headline figures, ratios to the baseline and the target check."""
    out: dict[str, Any] = {}
    peak = report["env"].get("matmul_bf16_tflops")
    for name, res in report["results"].items():
        if name == "clipstyler":
            continue
        # the same arithmetic in every setting of a variant: counted where the step ran eagerly
        same = [r for k, r in report["results"].items() if k.split("/")[0] == name.split("/")[0]]
        flops = res.get("step_flops") or next((r["step_flops"] for r in same if r.get("step_flops")), None)
        res["step_tflops"] = tflops(flops, res["step_ms"]["median"])
        skey = f"flops_{report['sizes']['stylise'][0]}"
        sflops = res["stylise"].get(skey) or next((r["stylise"][skey] for r in same if r["stylise"].get(skey)), None)
        res["stylise"]["tflops"] = tflops(sflops, res["stylise"][f"{report['sizes']['stylise'][0]}_ms"]["median"])
        if peak:
            res["step_fraction_of_matmul_peak"] = round(res["step_tflops"] / peak, 3) if res["step_tflops"] else None
    cs = report["results"].get("clipstyler")
    if cs:
        cs["step_tflops"] = tflops(cs["step_flops"], cs["step_ms"]["median"])
    key, best = _best(report, "stylemamba")
    if best is None:
        return out
    s0 = report["sizes"]["stylise"][0]
    s1 = report["sizes"]["stylise"][1]
    stylise_ms = best["stylise"][f"{s0}_ms"]["median"]
    recipe = best["recipe_s"]["median"]
    out["best_setting"] = key
    ours_100 = recipe + 100 * stylise_ms / 1e3
    out["hundred_images"] = {"stylemamba_s": round(ours_100, 3),
                             "stylemamba_first_style_s": round(best["recipe_first_s"] + 100 * stylise_ms / 1e3, 3)}
    if cs:
        per_image = cs.get("per_image_s") or cs["per_image_estimate_s"]
        out["hundred_images"]["clipstyler_s"] = round(100 * per_image, 3)
        out["hundred_images"]["ratio"] = round(100 * per_image / ours_100, 1)
        out["hundred_images"]["ratio_first_style"] = round(100 * per_image / out["hundred_images"][
            "stylemamba_first_style_s"], 1)
        out["per_style_ratio"] = round(per_image / recipe, 1)
    scan = None
    for res in report["results"].values():
        if isinstance(res, dict) and "scan" in res.get("parts_ms", {}):
            scan = res["parts_ms"]["scan"]
            step_ms = res["step_ms"]["median"]
            break
    if scan:
        ours = scan.get("chunked", {}).get("fwd_bwd_ms", {}).get("median")
        kernel = scan.get("mamba_ssm", {}).get("fwd_bwd_ms", {}).get("median")
        triton = scan.get("triton", {}).get("fwd_bwd_ms", {}).get("median")
        best_ours = min(t for t in (ours, triton) if t) if (ours or triton) else None
        out["scan"] = {"chunked_fwd_bwd_ms": ours, "triton_fwd_bwd_ms": triton, "mamba_ssm_fwd_bwd_ms": kernel,
                       "chunked_over_kernel": round(ours / kernel, 2) if ours and kernel else None,
                       "ours_over_kernel": round(best_ours / kernel, 2) if best_ours and kernel else None,
                       "chunked_share_of_step": round(ours / step_ms, 3) if ours else None,
                       "triton_share_of_step": round(triton / step_ms, 3) if triton else None,
                       "kernel_share_of_step": round(kernel / step_ms, 3) if kernel else None}
    if best.get("recipe_workspace_s", {}).get("median"):
        out["recipe_workspace_s"] = best["recipe_workspace_s"]["median"]
    measured = {
        "step_ms": best["step_ms"]["median"], "recipe_s": recipe, "stylise_512_ms": stylise_ms,
        "recipe_workspace_s": out.get("recipe_workspace_s"),
        "stylise_1024_ms": best["stylise"][f"{s1}_ms"]["median"],
        "video_fps": best.get("video", {}).get("fps"), "train_peak_gb": best.get("train_peak_gb"),
        "hundred_images_ratio": out["hundred_images"].get("ratio"),
        "scan_vs_kernel": (out.get("scan") or {}).get("ours_over_kernel"),  # our fastest scan (Triton on CUDA)
    }
    checks = {}
    for name, target in TARGETS.items():
        value = measured.get(name)
        higher_is_better = name in ("video_fps", "hundred_images_ratio")
        met = None if value is None else (value >= target if higher_is_better else value <= target)
        if report.get("models") != "full":
            met = None  # the targets are about the real networks on the GPU
        checks[name] = {"target": target, "measured": value, "met": met}
    out["targets"] = checks
    return out


# ---------------------------------------------------------------------------------------------- table
def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        if v.get("median") is None:
            return "-"
        return f"{v['median']:.4g}{unit} [{v['min']:.4g}-{v['max']:.4g}]"
    if isinstance(v, float):
        return f"{v:.4g}{unit}"
    return f"{v}{unit}"


def format_table(report: dict[str, Any]) -> str:
    """A markdown table: one column per (variant, setting) plus CLIPstyler; medians [min-max]."""
    res = report["results"]
    s0, s1 = report["sizes"]["stylise"]
    cols = [k for k in res if k != "clipstyler"]
    header = ["measure"] + cols + (["clipstyler"] if "clipstyler" in res else [])
    rows = []

    def row(label, fn, cs=None):
        rows.append([label] + [fn(res[c]) for c in cols] + ([cs] if "clipstyler" in res else []))

    cs = res.get("clipstyler", {})
    row("(a) new style, first run incl. warm-up/compile (s)", lambda r: _fmt(r.get("recipe_first_s")),
        _fmt(cs.get("per_image_s") or cs.get("per_image_estimate_s")) + " per image")
    row("(a) new style, default recipe (s)", lambda r: _fmt(r["recipe_s"]), "-")
    row("(a) next style in the last one's workspace, as the Train node on a GPU (s)",
        lambda r: _fmt(r.get("recipe_workspace_s")), "-")
    row("(b) one training step (ms)", lambda r: _fmt(r["step_ms"]), _fmt(cs.get("step_ms")))
    row("    steps per style", lambda r: _fmt(r.get("recipe_steps")), _fmt(cs.get("recipe_steps")))
    row(f"(c) stylise {s0}x{s0} (ms)", lambda r: _fmt(r["stylise"][f"{s0}_ms"]), "= per image")
    row(f"(c) stylise {s1}x{s1} (ms)", lambda r: _fmt(r["stylise"][f"{s1}_ms"]), "-")
    row(f"(d) video {s0}x{s0} (frames/s)", lambda r: _fmt(r.get("video", {}).get("fps")), "-")
    row("(e) training peak memory (GB)", lambda r: _fmt(r.get("train_peak_gb")), _fmt(cs.get("peak_gb")))
    row(f"(e) stylise {s1} peak memory (GB)", lambda r: _fmt(r["stylise"].get(f"peak_gb_{s1}")), "-")
    row("(f) step GFLOP (counted)", lambda r: _fmt(round(r["step_flops"] / 1e9, 1) if r.get("step_flops") else None),
        _fmt(round(cs["step_flops"] / 1e9, 1) if cs.get("step_flops") else None))
    row("(f) step TFLOP/s", lambda r: _fmt(r.get("step_tflops")), _fmt(cs.get("step_tflops")))
    row(f"(f) stylise {s0} TFLOP/s", lambda r: _fmt(r["stylise"].get("tflops")), "-")
    row("host syncs per step", lambda r: _fmt(r.get("syncs_per_step")), _fmt(cs.get("syncs_per_step")))
    row("(g) GPU kernel time per step (ms)", lambda r: _fmt(r.get("kernel_ms_per_step")), "-")
    row("(g) step / kernel time (1 = GPU-bound)", lambda r: _fmt(r.get("step_over_kernels")), "-")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    summary = report.get("summary", {})
    hundred = summary.get("hundred_images")
    if hundred:
        lines.append("")
        lines.append(f"100 new images, one style ({summary['best_setting']}): StyleMamba {hundred['stylemamba_s']:.3g} s "
                     f"(first style incl. compile {hundred['stylemamba_first_style_s']:.3g} s)"
                     + (f", CLIPstyler {hundred['clipstyler_s']:.4g} s (100 x measured per-image time): "
                        f"{hundred['ratio']}x less ({hundred['ratio_first_style']}x with the first style)"
                        if "clipstyler_s" in hundred else ""))
    parts = [(k, v) for k, v in res.items() if "parts_ms" in v]
    for name, r in parts:
        lines.append("")
        lines.append(f"Step parts of {name}, each forward+backward timed ALONE with the step's shapes, ms:")
        for part, v in r["parts_ms"].items():
            if isinstance(v, dict) and "median" in v:
                lines.append(f"  {part:40s} {_fmt(v)}")
            elif part == "siglip_batch":
                lines.append(f"  {'image-tower batch (views)':40s} {v}")
    if summary.get("scan"):
        sc = summary["scan"]
        lines.append("")
        lines.append(f"Selective scan fwd+bwd alone: chunked {sc['chunked_fwd_bwd_ms']} ms, Triton "
                     f"{sc.get('triton_fwd_bwd_ms')} ms, mamba-ssm kernel {sc['mamba_ssm_fwd_bwd_ms']} ms (ours / kernel "
                     f"{sc.get('ours_over_kernel')}); share of the step: chunked {sc['chunked_share_of_step']}, Triton "
                     f"{sc.get('triton_share_of_step')}, kernel {sc['kernel_share_of_step']}")
    if summary.get("targets") and report.get("models") == "full":  # the targets are for the full-size run only
        lines.append("")
        lines.append("Targets: " + "; ".join(
            f"{k} {v['measured']} vs {v['target']} {'MET' if v['met'] else ('missed' if v['met'] is False else 'n/a')}"
            for k, v in summary["targets"].items()))
    env = report["env"]
    lines.append("")
    lines.append(f"torch {env.get('torch')}, {env.get('gpu') or env.get('cpu')}, bf16 matmul peak measured "
                 f"{env.get('matmul_bf16_tflops')} TFLOP/s (datasheet {env.get('datasheet_bf16_tflops')})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="benchmark training and stylisation speed against CLIPstyler",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--tiny", action="store_true", help="tiny models and sizes (CPU smoke run / test)")
    p.add_argument("--models-dir", help="with --tiny: folder of (or for) the tiny models")
    p.add_argument("--compile", nargs="+", default=["off"], choices=["off", "default", "max-autotune-no-cudagraphs"],
                   help="speed settings to measure: off (plain eager) and/or torch.compile modes")
    p.add_argument("--cuda-graphs", nargs="+", default=["auto"], choices=["auto", "on", "off"],
                   help="CUDA graphs for training steps and video batches: auto (the library's default), on, off; "
                        "several values measure each")
    p.add_argument("--variants", nargs="+", default=["mamba", "cross_attention", "clipstyler"],
                   choices=["mamba", "cross_attention", "clipstyler"])
    p.add_argument("--repeats", type=int, help="whole-recipe repeats after the first run (default 3; tiny 1)")
    p.add_argument("--steps", type=int, help="timed training steps (default 20; tiny 3)")
    p.add_argument("--video-frames", type=int)
    p.add_argument("--video-batch", type=int)
    p.add_argument("--no-clipstyler-full-run", action="store_true",
                   help="estimate CLIPstyler's per-image time from its steps instead of running all of them")
    p.add_argument("--json", default="bench_results.json", help="where to write the results")
    p.add_argument("--overwrite", action="store_true", help="replace --json if it exists (default: refuse)")
    p.add_argument("--memory-caps", type=parse_caps, metavar="GB,GB",
                   help="also run the default recipe (1 and 4 content images) on emulated cards of these sizes "
                        "(e.g. 8,12) with torch.cuda.set_per_process_memory_fraction; CUDA only (on a CPU the "
                        "capped rows say they were not emulated)")
    p.add_argument("--memory-caps-only", action="store_true", help="with --memory-caps: measure nothing else")
    p.add_argument("--caps-repeats", type=int, default=2, help="timed runs per memory-cap setting (after a warm-up)")
    p.set_defaults(func=cmd_bench)
    return p


def check_options(args) -> None:
    """Every flag, before any model is built: found later, a mistake was a traceback mid-run (--steps -1, --json a
    folder) or lost the results of an earlier run (its --json written over)."""
    from ..cli import flags_at_least, refuse_existing, refuse_unwritable

    flags_at_least(args, ("--steps", "--repeats", "--video-frames", "--video-batch", "--caps-repeats"), 1)
    if args.memory_caps_only and not args.memory_caps:
        raise ValueError("--memory-caps-only needs --memory-caps (e.g. --memory-caps 8,12)")
    if args.models_dir and Path(args.models_dir).is_file():
        raise ValueError(f"--models-dir {args.models_dir} is a file: give a folder (the tiny models are built there "
                         "when it holds none)")
    if args.models_dir and not (Path(args.models_dir) / "manifest.json").is_file():
        from ..testing.tiny_models import existing_outputs

        taken = existing_outputs(args.models_dir)
        if taken:  # not tiny models (no manifest): building them there would write over these
            raise ValueError(f"--models-dir {args.models_dir} holds {', '.join(p.name for p in taken)} but no "
                             "manifest.json of tiny models: building them there would replace those; give the folder "
                             "of `python -m stylemamba tiny-models`, or an empty one")
    refuse_unwritable(Path(args.json), "--json")
    refuse_existing(Path(args.json), args.overwrite, "--json")


def cmd_bench(args) -> int:
    from ..cli import pick_device

    check_options(args)
    device = pick_device(args.device)
    sizes = Sizes(args.tiny, args.video_frames, args.video_batch)
    t0 = time.perf_counter()
    if args.tiny:
        models = build_tiny_bench_models(device, args.models_dir)
    else:
        models = build_full_models(device, with_clip="clipstyler" in args.variants and not args.memory_caps_only)
    sync(device)
    log.info("bench: models built in %.1f s (not timed)", time.perf_counter() - t0)
    report = run_bench(models, sizes, device, [] if args.memory_caps_only else args.compile,
                       [] if args.memory_caps_only else args.variants,
                       repeats=args.repeats or (1 if args.tiny else 3), steps=args.steps or (3 if args.tiny else 20),
                       json_path=Path(args.json), clipstyler_full=not args.no_clipstyler_full_run,
                       memory_caps=args.memory_caps, caps_repeats=args.caps_repeats,
                       cuda_graphs=tuple(args.cuda_graphs))
    report["command"] = "python -m stylemamba bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else [])
    from ..image_io import write_text_whole
    write_text_whole(args.json, json.dumps(report, indent=1, default=str))
    if report["results"]:
        print(format_table(report))
    if "memory_caps" in report:
        print("\nEmulated small GPUs (default recipe, memory_plan auto):\n" + format_memory_caps(report["memory_caps"]))
    print(f"\nwritten: {args.json}")
    return 0
