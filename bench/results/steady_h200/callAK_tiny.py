"""call AK (after AJ): trainers 1 and 2, then 3 capturing on a NEW capture stream, then 4 on the shared one again.
call AJ: is it the first trainer of a process that is fast? (call AI: after the bench's runs the tiny graphed
step picks other cuDNN kernels, nhwcAddPaddingKernel instead of tensorTransformGeneric, and its GPU timeline has
0.8 ms more idle per step.) New trainers one after another in a fresh process, graphed then eager: step time,
kernel count and the kernel names that differ from the first trainer's."""
import copy, statistics, sys, torch
from torch.profiler import ProfilerActivity, profile
from stylemamba.experiments import bench as B
dev = torch.device("cuda", 0)
m = B.build_tiny_bench_models(dev)
sizes = B.Sizes(True)
first = {}
def measure(label, graphs):
    from stylemamba.train import StyleTrainer
    cfg = sizes.train_config("mamba", "off", graphs)
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
        for _ in range(2):
            one_step()
        torch.cuda.synchronize()
    names = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            names[e.name[:70]] = names.get(e.name[:70], 0) + 1
    ref = first.setdefault(graphs, names)
    fmt = {str(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous())
           for p in tr.model.decoder.parameters() if p.dim() == 4}
    print("%-22s graphs=%-3s step %.3f ms, %d kernels/2 steps, decoder weights channels_last: %s" % (
        label, graphs, statistics.median(t), sum(names.values()), fmt), flush=True)
    diff = {k: (names.get(k, 0), ref.get(k, 0)) for k in set(names) | set(ref) if names.get(k, 0) != ref.get(k, 0)}
    for k, v in sorted(diff.items(), key=lambda kv: -abs(kv[1][0] - kv[1][1]))[:8]:
        print("      %4d (first trainer %4d) %s" % (v[0], v[1], k))
from stylemamba import cuda_graphs as CG
measure("trainer 1", "on")
measure("trainer 2", "on")
CG._capture_streams.clear()
measure("trainer 3, new stream", "on")
measure("trainer 4", "on")
import gc; gc.collect(); torch.cuda.synchronize(); torch.cuda.empty_cache()
CG._capture_streams.clear()
measure("trainer 5, new stream+gc", "on")
