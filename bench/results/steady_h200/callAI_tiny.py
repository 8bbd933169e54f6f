"""call AI: where the tiny graphed step's extra 0.7 ms goes after the bench's runs (call AH: 3.84 ms fresh, 4.61
after; kernels 3.95 / 4.02): the GPU timeline of 5 replays, fresh and after, as kernel time, idle time inside a
step and between steps, and the largest idle gaps with the kernels around them."""
import copy, statistics, sys, torch
from torch.profiler import ProfilerActivity, profile
from stylemamba.experiments import bench as B
dev = torch.device("cuda", 0)
m = B.build_tiny_bench_models(dev)
sizes = B.Sizes(True)
cfg = sizes.train_config("mamba", "off", "on")
def measure(label):
    from stylemamba.train import StyleTrainer
    tr = StyleTrainer(m.vae, m.siglip, B.content_images(1, sizes.train, dev), B.PROMPT, copy.deepcopy(cfg),
                      vgg=m.vgg, lpips=m.lpips, device=dev)
    counter = [0]
    def one_step():
        e = counter[0] % cfg.epochs
        counter[0] += 1
        tr.step(e, keep_output=False)
        tr.end_epoch()
    t = B.time_device(one_step, dev, warmup=B.STEP_WARMUP, repeat=20)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(6):
            one_step()
        torch.cuda.synchronize()
    ks = sorted(((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                 if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda k: k[0])
    span = (ks[-1][1] - ks[0][0]) / 1e3
    busy = sum(e - s for s, e, _ in ks) / 1e3
    gaps = sorted(((ks[i + 1][0] - ks[i][1], ks[i][2][:60], ks[i + 1][2][:60]) for i in range(len(ks) - 1)),
                  reverse=True)
    print("%-26s step %.3f ms; 6 steps: span %.3f ms, kernels %.3f ms, idle %.3f ms, %d kernels; graph %s" % (
        label, statistics.median(t), span, busy, span - busy, len(ks),
        [len(g) if hasattr(g, '__len__') else g for g in [tr.graphs]]), flush=True)
    for g, a, b in gaps[:10]:
        print("      gap %8.1f us after %-60s before %s" % (g, a, b))
    by_gap = {}
    for g, a, b in gaps:
        if g > 2:
            by_gap.setdefault(a, [0.0, 0]); by_gap[a][0] += g; by_gap[a][1] += 1
    print("      idle > 2 us summed by the kernel before it:",
          sorted(((round(v[0]), v[1], k) for k, v in by_gap.items()), reverse=True)[:8])
measure("fresh process")
res = B.bench_stylemamba(m, sizes, dev, "mamba", "off", repeats=3, steps=20, full_parts=False, cuda_graphs="on")
print("bench_stylemamba: step %s kernels %s" % (res["step_ms"]["median"], res["kernel_ms_per_step"]), flush=True)
measure("after the bench")
torch.cuda.empty_cache()
measure("after empty_cache")
