"""call AF: which operators launch the copy kernels of the compiled channels_last step. The step runs compiled
(decoder and image tower, our GroupNorm kernels inside) WITHOUT CUDA graphs, so that the profiler sees the CPU
operator behind each kernel: copy kernels grouped by the chain of operators above them and their input shapes."""
import json, logging, sys, torch
from stylemamba.experiments.bench import build_full_models, content_images
from stylemamba.precision import AutocastGroupNorm
from stylemamba.train import TrainConfig, TrainingWorkspace, train_style
logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
dev = torch.device("cuda", 0)
m = build_full_models(dev, with_clip=False)
x = content_images(1, 512, dev)
AutocastGroupNorm.kernels_when_compiled = True
cfg = TrainConfig(compile="default", cuda_graphs="off", channels_last=True)
ws = TrainingWorkspace()
train_style(m.vae, m.siglip, x, "style 0", cfg, vgg=m.vgg, lpips=m.lpips, device=dev, workspace=ws)
tr = ws._trainer
def one_step():
    tr.step(3, keep_output=False)
    tr.end_epoch()
for _ in range(3):
    one_step()
torch.cuda.synchronize()
from torch.profiler import ProfilerActivity, profile
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
    one_step(); torch.cuda.synchronize()
rows = {}
for evt in prof.events():
    for k in getattr(evt, "kernels", []):
        native = "copy_kernel" in k.name  # PyTorch's copy kernels (direct_copy, dtype copies)
        if not native and not ("triton" in k.name and "clone" in k.name):
            continue
        chain, p = [], evt
        while p is not None and len(chain) < 6:
            chain.append(p.name[:60]); p = p.cpu_parent
        kind = ("triton-clone" if not native else "strided" if "elementwise_kernel<128" in k.name
                else "vectorized" if "vectorized" in k.name else "unrolled")
        key = (kind, " < ".join(chain), str(evt.input_shapes)[:150])
        r = rows.setdefault(key, [0.0, 0]); r[0] += k.duration / 1e3; r[1] += 1
out = sorted(([v[0], v[1], *k] for k, v in rows.items()), key=lambda r: -r[0])
print("total copy-kernel ms: %.3f in %d launches" % (sum(r[0] for r in out), sum(r[1] for r in out)))
for ms, n, kind, chain, shapes in out[:45]:
    print("%7.3f ms %4d %-10s %s\n                      %s" % (ms, n, kind, chain, shapes))
json.dump(out, open(sys.argv[1], "w"), indent=1)
