"""call T (and W, Z: "compile:layout[:k]" variants, layout nchw or cl = channels_last, k = our Triton GroupNorm
kernels inside the compiled graph instead of Inductor's): the compiled step (torch.compile 'default' of decoder and image tower) replayed as CUDA graphs, against
the eager step replayed as graphs, in one process: first style (compiling), next styles in a workspace, step time
and its kernels' GPU time."""
import json, logging, statistics, sys, time, torch
from stylemamba.experiments.bench import build_full_models, content_images, kernel_time_ms, kernel_groups, time_device
from stylemamba.train import TrainConfig, TrainingWorkspace, train_style
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)
for n in ("httpx", "urllib3", "filelock", "torch"): logging.getLogger(n).setLevel(logging.WARNING)
dev = torch.device("cuda", 0)
m = build_full_models(dev, with_clip=False)
x = content_images(1, 512, dev)
out = {}
variants = [v.split(":") for v in (sys.argv[2].split(",") if len(sys.argv) > 2 else ["off:nchw", "default:nchw"])]
from stylemamba.precision import AutocastGroupNorm
for compile, layout, *kernels in variants:
    AutocastGroupNorm.kernels_when_compiled = bool(kernels)
    cfg = TrainConfig(compile=compile, cuda_graphs="on", channels_last=layout == "cl")
    compile = f"{compile}/{layout}" + ("/kernels" if kernels else "")
    ws = TrainingWorkspace()
    t = time.perf_counter()
    train_style(m.vae, m.siglip, x, "style 0", cfg, vgg=m.vgg, lpips=m.lpips, device=dev, workspace=ws)
    first = time.perf_counter() - t
    times = []
    for i in range(1, 5):
        t = time.perf_counter()
        train_style(m.vae, m.siglip, x, f"style {i}", cfg, vgg=m.vgg, lpips=m.lpips, device=dev, workspace=ws)
        torch.cuda.synchronize(); times.append(time.perf_counter() - t)
    tr = ws._trainer
    counter = [0]
    def one_step():
        e = 1 + counter[0] % 19
        counter[0] += 1
        tr.step(e, keep_output=False)
        tr.end_epoch()
    step = statistics.median(time_device(one_step, dev, warmup=3, repeat=20))
    kern = kernel_time_ms(one_step, dev)
    top = kernel_groups(one_step, dev, top=12)
    out[compile] = {"first_style_s": round(first, 2), "next_styles_s": [round(v, 3) for v in times],
                    "step_ms": round(step, 2), "kernel_ms": kern, "step_over_kernels": round(step / kern, 3) if kern else None,
                    "top_kernels": top}
    print("RESULT", compile, json.dumps({k: v for k, v in out[compile].items() if k != "top_kernels"}), flush=True)
    ws.release()
    json.dump(out, open(sys.argv[1], "w"), indent=1)
