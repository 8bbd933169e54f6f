#!/usr/bin/env python3
"""The decoder's attention as matrix products (stylemamba.decoder_attention) against the REAL ComfyUI VAE
``AttnBlock`` (CPU, in process, fp64): attention_by_matmul_ takes the block over and values and gradients are
unchanged.

    /opt/comfy-venv/bin/python tools/acceptance/check_comfy_attention.py [--comfy /opt/comfyui-src]

Prints one JSON line; exit code 0 when the block was taken over and matches.
"""
import argparse
import copy
import json
import os
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--comfy", default="/opt/comfyui-src")
args = ap.parse_args()
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.argv = ["main.py", "--cpu"]
sys.path.insert(0, args.comfy)
sys.path.insert(0, root)
import torch  # noqa: E402
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
from comfy.ldm.modules.diffusionmodules.model import AttnBlock, normal_attention, pytorch_attention  # noqa: E402
from stylemamba.decoder_attention import attention_by_matmul_  # noqa: E402

results, ok = {}, True
for reference in (pytorch_attention, normal_attention):  # ComfyUI's choice on CUDA (torch >= 2) / on this CPU
    torch.manual_seed(0)
    block = AttnBlock(64).double()
    with torch.no_grad():  # ComfyUI's ops skip weight initialisation
        for p in block.parameters():
            p.normal_(0.0, 0.2)
    block.optimized_attention = reference
    ours = copy.deepcopy(block)
    taken = attention_by_matmul_(ours)
    x = torch.randn(2, 64, 8, 6, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = block(xa), ours(xb)
    gy = torch.randn_like(ya)
    ya.backward(gy)
    yb.backward(gy)
    errors = {"y": float((ya - yb).abs().max()), "dx": float((xa.grad - xb.grad).abs().max()),
              "dparams": max(float((pa.grad - pb.grad).abs().max())
                             for pa, pb in zip(block.parameters(), ours.parameters()))}
    results[reference.__name__] = {"blocks_taken_over": taken, "max_abs_error": errors,
                                   "scale_of_y": float(ya.abs().max())}
    ok = ok and taken == 1 and all(e < 1e-9 for e in errors.values())
print(json.dumps({"ok": ok, "results": results}))
sys.exit(0 if ok else 1)
