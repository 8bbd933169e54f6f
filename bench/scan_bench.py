"""Selective-scan micro-benchmark: every backend side by side at the fusion module's real shapes.

    python bench/scan_bench.py [--sizes 512 1024] [--images 1 4] [--json scan.json] [--sweep]

Shapes come from the default ``FusionConfig`` (width 256 x expand 2 = 512 channels, d_state 16,
bidirectional scan = 2 sequences per image) at ``size/8`` x ``size/8`` latent tokens: 512 px ->
4096 tokens, 1024 px -> 16384. Inputs are bf16 on CUDA (as under autocast; ``--dtype``) with A,
D and delta_bias in fp32, as the MambaMixer passes them. For each backend available (chunked
PyTorch, Triton, the mamba-ssm kernel, and with ``--accelerated-scan`` the package
``accelerated-scan`` fed the scan expanded to d*n channels) it reports medians of CUDA-event
timings of the forward pass (no gradient) and of forward+backward (all eight gradients), the peak
memory the forward+backward adds, the largest relative error of the output and of the gradients
against a reference backend (mamba-ssm when present, else Triton, else chunked), and the ratios.

``--sweep`` first times the Triton kernels' tiles (channels per program, chunk length, warps,
unrolling of the state loop) at the first shape, checks each against the
reference, and with ``--tiles-out`` writes the fastest for ``STYLEMAMBA_SCAN_TILES``
(stylemamba/scan_triton.py ships the tiles this picked on an H200).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stylemamba import ssm  # noqa: E402
from stylemamba.experiments.bench import stats, sync, time_device  # noqa: E402
from stylemamba.fusion import FusionConfig  # noqa: E402

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
DIRECTIONS = {"forward": 1, "bidirectional": 2, "cross": 4}


def fusion_shapes(sizes: list[int], images: list[int]) -> list[dict[str, int]]:
    cfg = FusionConfig()
    out = []
    for size in sizes:
        for n_img in images:
            out.append({"size": size, "images": n_img, "batch": n_img * DIRECTIONS[cfg.scan],
                        "channels": cfg.width * cfg.expand, "state": cfg.d_state, "length": (size // 8) ** 2})
    return out


def make_inputs(shape: dict[str, int], dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict:
    b, d, n, length = shape["batch"], shape["channels"], shape["state"], shape["length"]
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(device)

    # delta around softplus^-1 of the mixer's initial steps (1e-3..1e-1) plus noise; A as S4D-real
    t = {"u": r(b, d, length), "delta": r(b, d, length, scale=0.5), "A": -torch.arange(1, n + 1.0).repeat(d, 1).to(device),
         "B": r(b, n, length), "C": r(b, n, length), "D": r(d), "z": r(b, d, length), "delta_bias": r(d, scale=0.5) - 4.0}
    return {k: v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v.float() for k, v in t.items()}


def accelerated_scan_expanded(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True):
    """The selective scan through accelerated-scan's first-order Triton scan: it scans one scalar
    per (batch, channel), so the (b, d, n, l) decays and inputs are materialised as d*n channels."""
    from accelerated_scan.scalar import scan

    b, d, length = u.shape
    n = A.shape[1]
    dt = delta.float() + delta_bias[:, None]
    dt = F.softplus(dt) if delta_softplus else dt
    gates = torch.exp(dt[:, :, None, :] * A[None, :, :, None]).reshape(b, d * n, length)
    tokens = ((dt * u.float())[:, :, None, :] * B.float()[:, None, :, :]).reshape(b, d * n, length)
    h = scan(gates.contiguous(), tokens.contiguous()).view(b, d, n, length)
    y = (h * C.float()[:, None]).sum(2) + D[:, None] * u.float()
    return (y * F.silu(z.float())).to(u.dtype)


def backends(device: torch.device, with_accelerated: bool) -> dict[str, Callable]:
    avail = ssm.available_backends() if device.type == "cuda" else ["chunked"]
    out = {}
    for name in ("mamba_ssm", "triton", "chunked"):
        if name in avail:
            out[name] = lambda name=name, **kw: ssm.selective_scan(**kw, delta_softplus=True, backend=name)
    if with_accelerated and device.type == "cuda":
        try:
            import accelerated_scan.scalar  # noqa: F401

            out["accelerated_scan"] = accelerated_scan_expanded
        except Exception as exc:  # not installed, or its triton code does not compile here
            print(f"accelerated-scan unavailable: {type(exc).__name__}: {exc}")
    return out


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def measure(fn: Callable, inputs: dict, device: torch.device, repeat: int, warmup: int) -> dict[str, Any]:
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    g = torch.Generator().manual_seed(1)
    cot = torch.randn(inputs["u"].shape, generator=g).to(device=device, dtype=inputs["u"].dtype)

    def fwd():
        with torch.no_grad():
            return fn(**leaves)

    def fwd_bwd():
        y = fn(**leaves)
        return y, torch.autograd.grad(y, list(leaves.values()), cot)

    t0 = time.perf_counter()
    y, grads = fwd_bwd()  # the first call: compilation, autotuning, self-checks
    sync(device)
    first_s = time.perf_counter() - t0
    out: dict[str, Any] = {"first_call_s": round(first_s, 3)}
    out["fwd_ms"] = stats(time_device(fwd, device, warmup=warmup, repeat=repeat), 4)
    out["fwd_bwd_ms"] = stats(time_device(fwd_bwd, device, warmup=warmup, repeat=repeat), 4)
    if device.type == "cuda":
        del y, grads
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        y, grads = fwd_bwd()
        sync(device)
        out["fwd_bwd_peak_mb"] = round((torch.cuda.max_memory_allocated(device) - before) / 2**20, 1)
        y, grads = fwd_bwd()
    out["_y"], out["_grads"] = y.detach(), [t.detach() for t in grads]
    return out


# ------------------------------------------------------------------------------------------ sweep
# (block_d, chunk, num_warps, unroll) tiles for the forward kernel (with and without stored states)
# and the backward kernel; about 8 tokens per thread, spills excluded by compiling for sm_90
# beforehand. Every backward chunk has a forward tile.
FWD_TILES = [(1, 128, 1, 2), (1, 256, 1, 1), (1, 256, 1, 2), (1, 256, 1, 4), (1, 512, 1, 2), (1, 512, 2, 2),
             (2, 256, 2, 2), (2, 512, 4, 2), (4, 256, 4, 2), (1, 1024, 4, 2), (1, 512, 4, 2)]
BWD_TILES = [(1, 128, 1, 1), (1, 256, 1, 1), (1, 512, 2, 1), (2, 256, 2, 1), (1, 1024, 4, 1)]


def sweep_configs() -> list[tuple[str, tuple]]:
    return [("fwd", t) for t in FWD_TILES] + [("bwd", t) for t in BWD_TILES]


def _fwd_tile_for(chunk: int) -> tuple:
    return next(t for t in FWD_TILES if t[1] == chunk)


def _run_tile(kind: str, tile: tuple, shape: dict, dtype_name: str) -> float:
    """One real call of a tile (compiles it into triton's on-disk cache); seconds. In a worker process."""
    from stylemamba import scan_triton as st

    device = torch.device("cuda")
    inputs = make_inputs(shape, getattr(torch, dtype_name), device)
    t0 = time.perf_counter()
    fwd = st.KernelConfig(*(tile if kind == "fwd" else _fwd_tile_for(tile[1])))
    bwd = st.KernelConfig(*tile) if kind == "bwd" else st.KernelConfig(*tile[:4])
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y = st.selective_scan_triton(**leaves, fwd_config=fwd, bwd_config=bwd, infer_config=fwd)
    if kind == "bwd":
        torch.autograd.grad(y, list(leaves.values()), torch.ones_like(y))
    else:
        with torch.no_grad():
            st.selective_scan_triton(**leaves, infer_config=fwd)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def precompile(shape: dict, dtype: torch.dtype, jobs: int) -> dict[str, Any]:
    """Compile every tile of the sweep in parallel processes (they share triton's cache)."""
    import concurrent.futures
    import multiprocessing

    tasks = sweep_configs()
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, min(jobs, len(tasks))), mp_context=ctx) as pool:
        futs = {pool.submit(_run_tile, kind, tile, shape, str(dtype).split(".")[-1]): (kind, tile)
                for kind, tile in tasks}
        for fut in concurrent.futures.as_completed(futs):
            kind, tile = futs[fut]
            try:
                out[f"{kind}{list(tile)}"] = round(fut.result(), 2)
            except Exception as exc:
                out[f"{kind}{list(tile)}"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def sweep(shape: dict[str, int], dtype: torch.dtype, device: torch.device, repeat: int, jobs: int) -> dict:
    """Times each tile (forward with stored states, forward without gradient, backward) and checks
    its output and gradients against the reference backend at the same inputs."""
    from stylemamba import scan_triton as st

    report: dict[str, Any] = {"shape": shape}
    if jobs > 1:
        try:
            report["precompile"] = precompile(shape, dtype, jobs)
        except Exception as exc:  # then each tile compiles on first use below
            report["precompile"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print("precompiled", json.dumps(report["precompile"]), flush=True)
    inputs = make_inputs(shape, dtype, device)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    g = torch.Generator().manual_seed(1)
    cot = torch.randn(inputs["u"].shape, generator=g).to(device=device, dtype=dtype)
    ref_name = "mamba_ssm" if "mamba_ssm" in ssm.available_backends() else "chunked"
    y_ref = ssm.selective_scan(**leaves, backend=ref_name)
    g_ref = torch.autograd.grad(y_ref, list(leaves.values()), cot)
    report["reference"] = ref_name
    rows = []
    for kind, tile in sweep_configs():
        row: dict[str, Any] = {"kind": kind, "tile": list(tile)}
        try:
            if kind == "fwd":
                cfg = st.KernelConfig(*tile)

                def fwd(cfg=cfg):
                    return st.selective_scan_triton(**leaves, fwd_config=cfg, bwd_config=cfg)

                def infer(cfg=cfg):
                    with torch.no_grad():
                        return st.selective_scan_triton(**leaves, infer_config=cfg)

                row["y_err"] = rel_err(infer(), y_ref)
                row["y_err_stored_states"] = rel_err(fwd(), y_ref)
                row["fwd_ms"] = stats(time_device(fwd, device, warmup=3, repeat=repeat), 4)["median"]
                row["infer_ms"] = stats(time_device(infer, device, warmup=3, repeat=repeat), 4)["median"]
            else:
                fcfg, bcfg = st.KernelConfig(*_fwd_tile_for(tile[1])), st.KernelConfig(*tile)
                y = st.selective_scan_triton(**leaves, fwd_config=fcfg, bwd_config=bcfg)

                def bwd(y=y):
                    return torch.autograd.grad(y, list(leaves.values()), cot, retain_graph=True)

                row["grad_err"] = max(rel_err(a, b) for a, b in zip(bwd(), g_ref))
                row["bwd_ms"] = stats(time_device(bwd, device, warmup=3, repeat=repeat), 4)["median"]
                del y
        except Exception as exc:  # a tile that does not compile or run here
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
        print("sweep", json.dumps(row), flush=True)
    report["rows"] = rows
    ok_f = [r for r in rows if r["kind"] == "fwd" and "fwd_ms" in r and max(r["y_err"], r["y_err_stored_states"]) < 2e-2]
    ok_b = [r for r in rows if r["kind"] == "bwd" and "bwd_ms" in r and r["grad_err"] < 5e-2]
    best: dict[str, Any] = {}
    if ok_f:
        best["infer"] = min(ok_f, key=lambda r: r["infer_ms"])["tile"]
        pairs = []  # the backward must use the forward's chunk: the best pair per chunk, then the best chunk
        for chunk in sorted({r["tile"][1] for r in ok_b}):
            fs = [r for r in ok_f if r["tile"][1] == chunk]
            bs = [r for r in ok_b if r["tile"][1] == chunk]
            if fs and bs:
                f, b = min(fs, key=lambda r: r["fwd_ms"]), min(bs, key=lambda r: r["bwd_ms"])
                pairs.append((f["fwd_ms"] + b["bwd_ms"], f["tile"], b["tile"]))
        if pairs:
            total, best["fwd"], best["bwd"] = min(pairs)
            best["fwd_bwd_ms"] = round(total, 4)
    report["best"] = best
    return report


# ------------------------------------------------------------------------------------------- main
def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as exc:
        env["triton"] = f"unavailable ({type(exc).__name__})"
    env["scan_backends"] = ssm.available_backends()
    if "triton" in env["scan_backends"]:
        from stylemamba import scan_triton as st

        env["triton_tiles"] = {k: vars(v) for k, v in st.configs().items()}
    return env


def ratio(a, b):
    return round(a / b, 2) if a and b else None


def run(args) -> dict[str, Any]:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype if device.type == "cuda" else "fp32"]
    shapes = fusion_shapes(args.sizes, args.images)
    report: dict[str, Any] = {"command": "python bench/scan_bench.py " + " ".join(args.argv), "dtype": str(dtype),
                              "repeat": args.repeat, "results": {}}
    if args.sweep and device.type == "cuda":
        report["sweep"] = sweep(shapes[0], dtype, device, repeat=args.repeat, jobs=args.jobs)
        best = report["sweep"]["best"]
        if args.tiles_out and "fwd" in best:
            tiles = {k: best[k] for k in ("fwd", "bwd", "infer")}
            Path(args.tiles_out).write_text(json.dumps(tiles))
            print(f"best tiles ({args.tiles_out}): {json.dumps(tiles)}; use them with "
                  f"{'STYLEMAMBA_SCAN_TILES'}='{json.dumps(tiles)}'", flush=True)
        if args.sweep_only:
            report["env"] = environment(device)
            return report
    report["env"] = environment(device)
    fns = backends(device, args.accelerated_scan)
    for shape in shapes:
        key = f"{shape['size']}px_x{shape['images']}"
        inputs = make_inputs(shape, dtype, device)
        res: dict[str, Any] = {"shape": shape}
        for name, fn in fns.items():
            if name in args.skip or (name == "accelerated_scan" and shape["size"] > args.accelerated_max_size):
                continue
            try:
                res[name] = measure(fn, inputs, device, args.repeat, args.warmup)
            except torch.cuda.OutOfMemoryError as exc:
                res[name] = {"error": f"out of memory: {str(exc)[:120]}"}
            except Exception as exc:
                res[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        ref_name = next((n for n in ("mamba_ssm", "triton", "chunked") if "_y" in res.get(n, {})), None)
        for name in fns:
            r = res.get(name)
            if not r or "_y" not in r:
                continue
            if ref_name:
                r["y_rel_err_vs_" + ref_name] = rel_err(r["_y"], res[ref_name]["_y"])
                r["grad_rel_err_vs_" + ref_name] = {k: rel_err(a, b) for k, a, b in
                                                    zip(NAMES, r["_grads"], res[ref_name]["_grads"])}
        for name in fns:
            if name in res and "_y" in res[name]:
                del res[name]["_y"], res[name]["_grads"]

        def med(name, what="fwd_bwd_ms"):
            return (res.get(name) or {}).get(what, {}).get("median") if isinstance(res.get(name), dict) else None

        res["ratios"] = {
            "triton_over_mamba_ssm_fwd_bwd": ratio(med("triton"), med("mamba_ssm")),
            "triton_over_mamba_ssm_fwd": ratio(med("triton", "fwd_ms"), med("mamba_ssm", "fwd_ms")),
            "chunked_over_triton_fwd_bwd": ratio(med("chunked"), med("triton")),
            "chunked_over_mamba_ssm_fwd_bwd": ratio(med("chunked"), med("mamba_ssm")),
            "accelerated_scan_over_triton_fwd_bwd": ratio(med("accelerated_scan"), med("triton")),
        }
        report["results"][key] = res
        print(f"{key}: " + json.dumps({n: (med(n, 'fwd_ms'), med(n)) for n in fns}), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return report


def format_sweep(sweep: dict[str, Any]) -> str:
    s = sweep["shape"]
    lines = [f"Triton tiles at ({s['batch']}, {s['channels']}, {s['state']}, {s['length']}), errors vs "
             f"{sweep.get('reference')}:", "| kernel | tile | fwd ms | no-grad fwd ms | bwd ms | max rel err |",
             "|---|---|---|---|---|---|"]
    for r in sweep["rows"]:
        if "error" in r:
            lines.append(f"| {r['kind']} | {r['tile']} | {r['error'][:80]} | | | |")
            continue
        err = max(r.get("y_err", 0), r.get("y_err_stored_states", 0), r.get("grad_err", 0))
        lines.append(f"| {r['kind']} | {r['tile']} | {r.get('fwd_ms', '')} | {r.get('infer_ms', '')} | "
                     f"{r.get('bwd_ms', '')} | {err:.2e} |")
    lines.append(f"best: {json.dumps(sweep['best'])}")
    return "\n".join(lines)


def format_table(report: dict[str, Any]) -> str:
    timer = "CUDA events" if report["env"]["device"].startswith("cuda") else "wall clock"
    lines = [f"Selective scan, {report['dtype']} inputs, medians of {report['repeat']} ({timer}), "
             f"{report['env'].get('gpu') or report['env']['device']}, torch {report['env']['torch']}, "
             f"triton {report['env'].get('triton')}",
             "| shape (b, d, n, l) | backend | fwd ms | fwd+bwd ms | peak MB fwd+bwd | max grad err vs ref |",
             "|---|---|---|---|---|---|"]
    for key, res in report["results"].items():
        s = res["shape"]
        label = f"{key} ({s['batch']}, {s['channels']}, {s['state']}, {s['length']})"
        for name, r in res.items():
            if name in ("shape", "ratios") or not isinstance(r, dict):
                continue
            if "error" in r:
                lines.append(f"| {label} | {name} | {r['error']} | | | |")
                continue
            gerr = next((v for k, v in r.items() if k.startswith("grad_rel_err_vs_")), {})
            lines.append(f"| {label} | {name} | {r['fwd_ms']['median']:.4g} | {r['fwd_bwd_ms']['median']:.4g} | "
                         f"{r.get('fwd_bwd_peak_mb', '-')} | {max(gerr.values()) if gerr else 0:.2e} |")
        ratios = ", ".join(f"{k} {v}" for k, v in res["ratios"].items() if v)
        if ratios:
            lines.append(f"| {label} | ratios: {ratios} | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--sizes", nargs="+", type=int, default=[512, 1024], help="image sizes (px)")
    p.add_argument("--images", nargs="+", type=int, default=[1, 4], help="content images per step")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="u/delta/B/C/z dtype on CUDA")
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--skip", nargs="*", default=[], help="backends to leave out")
    p.add_argument("--accelerated-scan", action="store_true", help="also time accelerated-scan (expanded)")
    p.add_argument("--accelerated-max-size", type=int, default=512)
    p.add_argument("--sweep", action="store_true", help="time (and check) the Triton tiles first, at the first shape")
    p.add_argument("--sweep-only", action="store_true", help="stop after the sweep")
    p.add_argument("--tiles-out", help="write the sweep's fastest tiles there (JSON for STYLEMAMBA_SCAN_TILES)")
    p.add_argument("--jobs", type=int, default=12, help="processes compiling the sweep's tiles in parallel")
    p.add_argument("--json", help="where to write the results")
    args = p.parse_args(argv)
    args.argv = argv
    report = run(args)
    if "sweep" in report:
        print(format_sweep(report["sweep"]))
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
