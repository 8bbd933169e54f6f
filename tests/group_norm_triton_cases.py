"""The Triton GroupNorm kernels against PyTorch's fp64 GroupNorm, run by Triton's CPU interpreter.

Not a test module: ``tests/test_group_norm.py`` runs it in a subprocess (``TRITON_INTERPRET=1`` must be set
before triton is imported). Chunk and tile sizes are shrunk so that small inputs still span several
statistics chunks, gradient chunks and tiles. ``python tests/group_norm_triton_cases.py`` prints, per case,
the largest error of y, dx, dw, db relative to the largest reference value, and what the kernels' self-check
says with working and with broken kernels.
"""
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (n, c, h, w, groups, affine, channels_last); 24 channels: a channel count that is not a power of two
CASES = {"one image": (1, 16, 20, 12, 4, True, False), "batch of 3": (3, 32, 9, 7, 8, True, False),
         "no affine": (2, 8, 6, 6, 2, False, False), "channels_last one image": (1, 16, 20, 12, 4, True, True),
         "channels_last batch of 3": (3, 24, 9, 7, 8, True, True),
         "channels_last no affine": (2, 8, 6, 6, 2, False, True)}


def main() -> dict:
    from stylemamba import group_norm_triton as k

    k.STATS_CHUNK, k.GRAD_CHUNK, k.BLOCK, k.TILE, k.CHUNKS = 64, 32, 16, 64, 3
    torch.manual_seed(0)
    out = {}
    for name, (n, c, h, w, groups, affine, channels_last) in CASES.items():
        x = (torch.randn(n, c, h, w, dtype=torch.float64) * 2 + 5).float()  # an offset mean
        weight, bias = (torch.randn(c), torch.randn(c)) if affine else (None, None)
        gy = torch.randn_like(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            y, mean, rstd = k.forward_channels_last(x, weight, bias, groups, 1e-5)
            dx, dw, db = k.backward_channels_last(gy, x, weight, mean, rstd, groups, affine)  # gy NCHW: converted
            assert y.is_contiguous(memory_format=torch.channels_last), "y lost the channels_last layout"
            assert dx.is_contiguous(memory_format=torch.channels_last), "dx lost the channels_last layout"
        else:
            y, mean, rstd = k.forward(x, weight, bias, groups, 1e-5)
            dx, dw, db = k.backward(gy, x, weight, mean, rstd, groups, affine)
        ref = [t.double().requires_grad_(True) if t is not None else None for t in (x, weight, bias)]
        yr = F.group_norm(ref[0], groups, ref[1], ref[2], 1e-5)
        yr.backward(gy.double())

        def rel(a, r):
            return float((a.double() - r).abs().max() / r.abs().max())

        errors = {"y": rel(y, yr.detach()), "dx": rel(dx, ref[0].grad)}
        if affine:
            errors.update(dw=rel(dw, ref[1].grad), db=rel(db, ref[2].grad))
        out[name] = errors
    # the self-check that decides whether CUDA tensors use the kernels (here on the interpreter's CPU tensors),
    # and what it says when the kernels are broken
    from stylemamba import group_norm

    group_norm._KERNELS[:] = [k]
    checks = {"working": group_norm._self_check(torch.device("cpu"))}
    real, k.backward = k.backward, lambda *a: (_ for _ in ()).throw(RuntimeError("no C compiler"))
    checks["broken"] = group_norm._self_check(torch.device("cpu"))
    k.backward = real
    return {"cases": out, "self_check": checks}


if __name__ == "__main__":
    print(json.dumps(main()))
