"""call AH: why the tiny graphed step measured 0.97x its kernels alone (callAF_tiny.py) and 1.14x inside
`bench --tiny` (call AG). The same measurement on a fresh trainer: first in a fresh process, then after the bench's
recipe runs in the same process, then with Python's garbage collector off."""
import copy, gc, statistics, sys, time, torch
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
    t = B.time_device(one_step, dev, warmup=B.STEP_WARMUP, repeat=40)
    host = []
    for _ in range(40):
        t0 = time.perf_counter(); one_step(); host.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    kern = B.kernel_time_ms(one_step, dev)
    print("%-34s step %.3f ms (p10 %.3f, p90 %.3f), kernels %.3f, ratio %.3f, host per step %.3f ms, gc counts %s" % (
        label, statistics.median(t), sorted(t)[4], sorted(t)[35], kern, statistics.median(t) / kern,
        statistics.median(host), gc.get_count()), flush=True)
measure("fresh process")
res = B.bench_stylemamba(m, sizes, dev, "mamba", "off", repeats=3, steps=20, full_parts=False, cuda_graphs="on")
print("bench_stylemamba in this process: step %s kernels %s ratio %s" % (
    res["step_ms"]["median"], res["kernel_ms_per_step"], res.get("step_over_kernels")), flush=True)
measure("after the bench's runs")
gc.disable()
measure("after, garbage collector off")
gc.enable()
gc.collect()
measure("after gc.collect()")
