"""call S: (1) does allocated GPU memory grow per style (callQ's free memory fell ~0.1 GB a style)? which tensors?
(2) the 8 GB 4-image capture OOM: its message and the memory left after it; 12 GB 1 image after it.
(3) a new style's phases."""
import gc, json, logging, sys, time, torch
from stylemamba.experiments.bench import build_full_models, content_images
from stylemamba.train import TrainConfig, train_style
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)
for n in ("httpx", "urllib3", "filelock"): logging.getLogger(n).setLevel(logging.WARNING)
dev = torch.device("cuda", 0)
m = build_full_models(dev, with_clip=False)
total = torch.cuda.get_device_properties(dev).total_memory
def census():
    gc.collect()
    out = {}
    for o in gc.get_objects():
        try:
            if isinstance(o, torch.Tensor) and o.is_cuda:
                s = o.untyped_storage()
                out[s.data_ptr()] = (tuple(o.shape), str(o.dtype), s.nbytes(), type(o).__name__)
        except Exception:
            pass
    return out
def mem(tag):
    gc.collect(); torch.cuda.empty_cache()
    print(f"MEM {tag}: allocated {torch.cuda.memory_allocated(dev)/1e9:.3f} GB, reserved {torch.cuda.memory_reserved(dev)/1e9:.3f} GB", flush=True)
x1 = content_images(1, 512, dev, seed=1)
x4 = content_images(4, 512, dev, seed=4)
mem("start")
before = census()
for i, graphs in enumerate(["auto"] * 4 + ["off"] * 2):
    t = time.perf_counter()
    r = train_style(m.vae, m.siglip, x1, f"style {i}", TrainConfig(cuda_graphs=graphs), vgg=m.vgg, lpips=m.lpips, device=dev)
    s = time.perf_counter() - t
    print("STYLE", i, graphs, f"{s:.3f} s", json.dumps({k: round(v, 4) for k, v in r.phases.items()}), flush=True)
    del r
    mem(f"after style {i} ({graphs})")
after = census()
new = [v for k, v in after.items() if k not in before]
print("NEW CUDA STORAGES", len(new), "bytes", sum(v[2] for v in new))
for v in sorted(new, key=lambda v: -v[2])[:15]:
    print("  ", v)
for cap, x, runs in ((8, x4, 1), (12, x1, 2), (8, x1, 1)):
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(cap * 1e9 / total, dev)
    for j in range(runs):
        t = time.perf_counter()
        try:
            r = train_style(m.vae, m.siglip, x, "style cap", TrainConfig(), vgg=m.vgg, lpips=m.lpips, device=dev)
            print("CAP", cap, x.shape[0], f"{time.perf_counter() - t:.3f} s", json.dumps(r.style.metadata["memory_plan"]), flush=True)
        except Exception as e:
            print("CAP FAIL", cap, type(e).__name__, str(e)[:400])
        r = None
        mem(f"after cap {cap} x{x.shape[0]} run {j}")
    torch.cuda.set_per_process_memory_fraction(1.0, dev)
