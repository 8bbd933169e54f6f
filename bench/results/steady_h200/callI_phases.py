"""call I: where a new style's time goes outside its 20 steps (setup, first steps, capture, result, cleanup),
and what the step's saved activations are (for the 8 GB plan). Full-size random-weight networks, default recipe."""
import copy
import json
import os
import re
import statistics
import sys
import time
from collections import defaultdict

import torch

from stylemamba.experiments.bench import PROMPT, Sizes, build_full_models, content_images
from stylemamba.precision import autocast
from stylemamba.style_model import StyleModel
from stylemamba.train import StyleTrainer, train_style

OUT = os.environ.get("OUT", "/tmp/out")
TINY = not torch.cuda.is_available()  # a CPU smoke run of this script with the tiny models
dev = torch.device("cpu" if TINY else "cuda")
if TINY:
    from stylemamba.experiments.bench import build_tiny_bench_models
    models = build_tiny_bench_models(dev)
else:
    models = build_full_models(dev, with_clip=False)
sizes = Sizes(TINY)
cfg = sizes.train_config()
x = content_images(1, sizes.train, dev)
kw = dict(vgg=models.vgg, lpips=models.lpips, device=dev)
report = {}


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, n=5):
    fn(); sync()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); sync(); ts.append(time.perf_counter() - t0)
    return round(statistics.median(ts) * 1e3, 2)


# 1. whole styles as bench times them (no syncs inside), warm process
whole = []
for i in range(4):
    t0 = time.perf_counter(); r = train_style(models.vae, models.siglip, x, PROMPT, copy.deepcopy(cfg), **kw); sync()
    whole.append(round(time.perf_counter() - t0, 3))
report["train_style_s"] = whole
print("train_style (s):", whole, flush=True)

# 2. phases of one style, synchronised between phases (3 repeats)
reps = []
for rep in range(3):
    ph = {}
    t0 = time.perf_counter()
    tr = StyleTrainer(models.vae, models.siglip, x, PROMPT, copy.deepcopy(cfg), **kw); sync()
    ph["init_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
    steps = []
    for epoch in range(cfg.epochs):
        t1 = time.perf_counter(); terms, y = tr.step_within_memory(epoch); tr.history.append(terms); sync()
        steps.append(round((time.perf_counter() - t1) * 1e3, 1))
        tr.end_epoch()
    ph["steps_ms"] = steps
    t1 = time.perf_counter(); res = tr.result(1.0, cfg.epochs); ph["result_ms"] = round((time.perf_counter() - t1) * 1e3, 1)
    t1 = time.perf_counter(); tr.graphs = None; tr.opt = None; tr.model = None; del tr; sync()
    ph["cleanup_ms"] = round((time.perf_counter() - t1) * 1e3, 1)
    ph["total_s"] = round(time.perf_counter() - t0, 3)
    reps.append(ph)
    print("phases:", json.dumps(ph), flush=True)
report["phases"] = reps

# 3. the parts of the setup, alone
tr = StyleTrainer(models.vae, models.siglip, x, PROMPT, copy.deepcopy(cfg), **kw)
parts = {}
parts["vae_encode_fp32_ms"] = timed(lambda: models.vae.encode(x))
def enc_bf16():
    with autocast(dev, "bf16"):
        return models.vae.encode(x)
parts["vae_encode_autocast_bf16_ms"] = timed(enc_bf16)
def tower1():
    with torch.no_grad(), autocast(dev, "auto"):
        return models.siglip.encode_image(x)
parts["siglip_one_view_ms"] = timed(tower1)
def vggf():
    with torch.no_grad(), autocast(dev, "auto"):
        return models.vgg(x)
parts["vgg_features_ms"] = timed(vggf)
parts["style_model_for_training_ms"] = timed(lambda: StyleModel.for_training(models.vae, tr.cfg.fusion, tr.direction.e_t))
parts["direction_encode_ms"] = timed(lambda: __import__("stylemamba.direction", fromlist=["x"]).TextDirection.encode(models.siglip, PROMPT, None, "a plain photo"))
parts["adam_ms"] = timed(lambda: torch.optim.Adam(tr.model.parameters(), lr=torch.tensor(5e-4, device=dev), fused=True, capturable=True))
parts["to_style_ms"] = timed(lambda: tr.model.to_style({}), n=3)
if dev.type == "cuda":
    parts["mem_get_info_ms"] = timed(lambda: torch.cuda.mem_get_info(dev))
report["setup_parts"] = parts
print("setup parts:", json.dumps(parts), flush=True)
del tr

# 4. a profile of one whole style (host side), top ops by self CPU time
from torch.profiler import ProfilerActivity, profile
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    train_style(models.vae, models.siglip, x, PROMPT, copy.deepcopy(cfg), **kw); sync()
table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=45, max_name_column_width=60)
open(f"{OUT}/profile_style.txt", "w").write(table)
print("\n".join(table.splitlines()[:30]), flush=True)


# 5. saved activations of one step by module (fast plan, 1 image): what a memory plan could drop
def saved_by_module(fn, roots):
    stack, handles, seen = [], [], {}
    params = {p.untyped_storage().data_ptr() for r in roots.values() for p in r.parameters()}
    for rname, root in roots.items():
        for n, m in root.named_modules():
            full = f"{rname}.{n}" if n else rname
            handles.append(m.register_forward_pre_hook(lambda mod, inp, full=full: stack.append(full)))
            handles.append(m.register_forward_hook(lambda mod, inp, out, full=full: (stack.pop(), None)[1]))

    def pack(t):
        st = t.untyped_storage()
        key = st.data_ptr()
        if key not in seen and key not in params:
            seen[key] = (stack[-1] if stack else "(outside modules)", st.nbytes())
        return t
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn()
    finally:
        for h in handles:
            h.remove()
    groups = defaultdict(float)
    for where, nbytes in seen.values():
        groups[re.sub(r"\.\d+(\.|$)", r".*\1", where)] += nbytes
    total = sum(groups.values())
    return out, total, sorted(groups.items(), key=lambda kv: -kv[1])


tr = StyleTrainer(models.vae, models.siglip, x, PROMPT, copy.deepcopy(cfg), **kw)
tr.prev_emb = torch.zeros(1, tr.emb_x.shape[-1], device=dev)
roots = {"model": tr.model, "tower": models.siglip, "vgg": models.vgg, "lpips": models.lpips}
before = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
def fwd():
    with autocast(dev, tr.cfg.precision):
        return tr._forward_terms(0, 1, 1, None, None)
out, total, groups = saved_by_module(fwd, roots)
held = (torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0) - before
saved = {"saved_total_gb": round(total / 1e9, 3), "allocated_after_forward_gb": round(held / 1e9, 3),
         "groups_mb": [(k, round(v / 1e6, 1)) for k, v in groups[:45]]}
report["saved_activations"] = saved
print("saved activations: total %.3f GB, allocated after forward %.3f GB" % (total / 1e9, held / 1e9))
for k, v in groups[:45]:
    print(f"  {v / 1e6:9.1f} MB  {k}")
json.dump(report, open(f"{OUT}/phases.json", "w"), indent=1)
