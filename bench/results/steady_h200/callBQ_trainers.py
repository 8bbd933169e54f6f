"""call BQ: training-step captures begun on autograd's own thread (cuda_graphs.on_autograd_thread) against captures
begun on the caller's thread (CONTROL=1, as before): fresh trainers, the workspace's restarts, and a 1,600-node
kernels-only probe captured at process start, all in one process (callBO-BP3: a capture fed by a second thread that
had launched eagerly slowed every graph ~0.35 us per node). Ran on c392f2f, whose on_autograd_thread was reverted
after this call measured no gain; CONTROL=1 is what main does."""
import copy, json, os, statistics, torch
import stylemamba.cuda_graphs as cuda_graphs
from stylemamba.experiments import bench as B
from stylemamba.train import StyleTrainer

if os.environ.get("CONTROL"):
    cuda_graphs.on_autograd_thread = lambda fn, device: fn()
dev = torch.device("cuda", 0)
x = torch.randn(64, 256, device=dev)
bufs = [torch.empty_like(x) for _ in range(1600)]


def probe_work():
    h = x
    for i, o in enumerate(bufs):
        (torch.mul(h, 1.0001, out=o) if i % 2 else torch.add(h, 0.5, out=o))
        h = o


for _ in range(3):
    probe_work()
torch.cuda.synchronize()
probe = torch.cuda.CUDAGraph()
with torch.cuda.graph(probe, stream=torch.cuda.Stream()):
    probe_work()


def probe_us():
    times = []
    for _ in range(50):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); probe.replay(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b))
    return round(statistics.median(times) * 1e3, 1)


m = B.build_tiny_bench_models(dev)
sizes = B.Sizes(True)
cfg = sizes.train_config("mamba", "off", "on")
content = B.content_images(1, sizes.train, dev)
mode = "control (caller's thread)" if os.environ.get("CONTROL") else "autograd's thread"


def timed(tr, label):
    counter = [0]

    def one_step():
        tr.step(counter[0] % cfg.epochs, keep_output=False)
        tr.end_epoch()
        counter[0] += 1
    for _ in range(4):
        one_step()
    t = B.time_device(one_step, dev, warmup=2, repeat=30)
    print("RESULT", json.dumps({"mode": mode, "trainer": label, "graphs": len(tr.graphs or ()),
                                "step_ms": round(statistics.median(t), 3), "probe_us": probe_us()}), flush=True)


print("RESULT", json.dumps({"mode": mode, "probe_us_at_start": probe_us()}), flush=True)
first = StyleTrainer(m.vae, m.siglip, content, B.PROMPT, copy.deepcopy(cfg), vgg=m.vgg, lpips=m.lpips, device=dev)
timed(first, "fresh 1")
for prompt in ("a watercolor painting", "a pencil sketch"):
    first.record_restart_step()
    first.restart(content, prompt, copy.deepcopy(cfg))
    timed(first, f"restart ({prompt})")
second = StyleTrainer(m.vae, m.siglip, content, B.PROMPT, copy.deepcopy(cfg), vgg=m.vgg, lpips=m.lpips, device=dev)
timed(second, "fresh 2")
third = StyleTrainer(m.vae, m.siglip, content, B.PROMPT, copy.deepcopy(cfg), vgg=m.vgg, lpips=m.lpips, device=dev)
timed(third, "fresh 3")
