"""call AP: the default recipe (full-size random-weight networks, 512 px, 20 steps) in a process whose CUDA allocator is
whatever PYTORCH_CUDA_ALLOC_CONF says (run it with backend:cudaMallocAsync, ComfyUI's default): new styles in one
workspace with cuda_graphs 'auto' and 'off' side by side, the step's median time and its kernels' GPU time, and
the first losses of both (graphs must not change them beyond rounding)."""
import json, logging, statistics, sys, time, torch
from stylemamba.experiments.bench import build_full_models, content_images, kernel_time_ms, time_device
from stylemamba.train import TrainConfig, TrainingWorkspace, train_style
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)
for n in ("httpx", "urllib3", "filelock", "torch"): logging.getLogger(n).setLevel(logging.WARNING)
print("allocator", torch.cuda.get_allocator_backend(), "triton", __import__("triton").__version__, flush=True)
dev = torch.device("cuda", 0)
m = build_full_models(dev, with_clip=False)
x = content_images(1, 512, dev)
out = {}
for graphs in sys.argv[2].split(","):
    cfg = TrainConfig(cuda_graphs=graphs)
    ws = TrainingWorkspace()
    times, losses = [], []
    for i in range(5):
        torch.cuda.synchronize(); t = time.perf_counter()
        r = train_style(m.vae, m.siglip, x, f"style {i % 2}", cfg, vgg=m.vgg, lpips=m.lpips, device=dev, workspace=ws)
        torch.cuda.synchronize(); times.append(time.perf_counter() - t)
        if i == 0:
            losses = [round(float(h["total"]), 5) for h in r.history[:6]] if hasattr(r, "history") else None
    tr = ws._trainer
    counter = [0]
    def one_step():
        e = 1 + counter[0] % 19
        counter[0] += 1
        tr.step(e, keep_output=False)
        tr.end_epoch()
    step = statistics.median(time_device(one_step, dev, warmup=5, repeat=20))
    kern = kernel_time_ms(one_step, dev)
    free, total = torch.cuda.mem_get_info(dev)
    out[graphs] = {"styles_s": [round(v, 3) for v in times], "step_ms": round(step, 2), "kernel_ms": kern,
                   "step_over_kernels": round(step / kern, 3) if kern else None, "graphs": tr.graphs is not None,
                   "first_losses": losses, "device_used_gb": round((total - free) / 1e9, 2)}
    print("RESULT", graphs, json.dumps(out[graphs]), flush=True)
    ws.release()
    json.dump(out, open(sys.argv[1], "w"), indent=1)
