"""call AF: where the host's time goes in the tiny run's graphed step (step 4.44 ms against 3.91 ms of kernels in
call AC): host time of a step while the GPU runs behind (no sync), then cProfile of 200 steps, top by own time."""
import cProfile, copy, io, pstats, statistics, sys, time, torch
from stylemamba.experiments.bench import Sizes, build_tiny_bench_models, content_images, kernel_time_ms, time_device
from stylemamba.train import StyleTrainer
dev = torch.device("cuda", 0)
m = build_tiny_bench_models(dev)
sizes = Sizes(True)
cfg = sizes.train_config("mamba", "off", "on")
tr = StyleTrainer(m.vae, m.siglip, content_images(1, sizes.train, dev), "a watercolor painting", copy.deepcopy(cfg),
                  vgg=m.vgg, lpips=m.lpips, device=dev)
counter = [0]
def one_step():
    e = counter[0] % cfg.epochs
    counter[0] += 1
    tr.step(e, keep_output=False)
    tr.end_epoch()
for _ in range(5):
    one_step()
torch.cuda.synchronize()
step = statistics.median(time_device(one_step, dev, warmup=2, repeat=50))
kern = kernel_time_ms(one_step, dev)
host = []
for _ in range(50):
    t = time.perf_counter(); one_step(); host.append((time.perf_counter() - t) * 1e3)
torch.cuda.synchronize()
print("step %.3f ms, kernels %.3f ms, ratio %.3f, host per step (no sync) median %.3f ms" % (
    step, kern, step / kern, statistics.median(host)))
pr = cProfile.Profile()
pr.enable()
for _ in range(200):
    one_step()
torch.cuda.synchronize()
pr.disable()
s = io.StringIO()
pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(28)
print(s.getvalue()[:7000])
s = io.StringIO()
pstats.Stats(pr, stream=s).sort_stats("cumtime").print_stats(30)
print(s.getvalue()[:7000])
