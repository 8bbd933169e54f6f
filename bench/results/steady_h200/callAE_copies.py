"""call AE: where the step copies tensors. The eager step (no graphs, no compile), NCHW and channels_last, after one
style in a workspace: every dispatched copy grouped by operator/shape/layouts/Python frames (bench.copy_sources),
and the GPU time of the step's copy kernels (the compiled step kept ~2 ms of strided direct_copy kernels)."""
import json, logging, sys, torch
from stylemamba.experiments.bench import build_full_models, content_images, copy_sources, kernel_groups
from stylemamba.train import TrainConfig, TrainingWorkspace, train_style
logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
dev = torch.device("cuda", 0)
m = build_full_models(dev, with_clip=False)
x = content_images(1, 512, dev)
out = {}
for layout in sys.argv[2].split(","):
    cfg = TrainConfig(compile="off", cuda_graphs="off", channels_last=layout == "cl")
    ws = TrainingWorkspace()
    train_style(m.vae, m.siglip, x, "style 0", cfg, vgg=m.vgg, lpips=m.lpips, device=dev, workspace=ws)
    tr = ws._trainer
    def one_step():
        tr.step(3, keep_output=False)
        tr.end_epoch()
    one_step(); torch.cuda.synchronize()
    rows = copy_sources(one_step, top=40, depth=7)
    kern = [g for g in kernel_groups(one_step, dev, top=400) if "copy" in g["kernel"].lower() or "elementwise_kernel" in g["kernel"]]
    out[layout] = {"copies": rows, "copy_kernels": kern}
    print("=====", layout, "copy kernels (GPU ms, calls):")
    for g in kern[:12]:
        print("   %7.3f %5d %s" % (g["ms"], g["calls"], g["kernel"][:100]))
    print("=====", layout, "dispatched copies:")
    for r in rows:
        print("%8.1f MB %4d %-8s %-18s %s" % (r["mb"], r["calls"], r["op"], str(r["shape"]), r["layouts"]))
        for f in r["stack"][:7]:
            print("              ", f)
    ws.release()
    json.dump(out, open(sys.argv[1], "w"), indent=1)
