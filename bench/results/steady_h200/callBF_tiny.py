"""call BF (prepared 2026-12-05, not yet run): WHEN does a tiny-trainer process switch into slow graph replays?
callBA-BE: a process's CUDA graphs replay ~18 % slower once a few dozen operations ran eagerly on a non-default
stream; the first tiny trainer of a process is fast (x0.98 its kernels), later ones x1.14. A probe graph (callBA's
160 nodes, captured cold at start) is timed between the stages of trainer 1 and trainer 2: the first stage after
which the probe reads ~193 us instead of ~165 us is what to look at. Streams entered are logged with their caller."""
import copy, json, statistics, sys, traceback, torch
from stylemamba.experiments import bench as B
from stylemamba.train import StyleTrainer

dev = torch.device("cuda", 0)
x = torch.randn(64, 256, device=dev)
bufs = [[torch.empty_like(x) for _ in range(3)] for _ in range(40)]


def work():
    h = x
    for c, z, o in bufs:
        c.copy_(h); z.zero_(); torch.mul(c, 1.0001, out=o); o.add_(z); h = o


for _ in range(3):
    work()
torch.cuda.synchronize()
probe = torch.cuda.CUDAGraph()
with torch.cuda.graph(probe, stream=torch.cuda.Stream()):
    work()

entered = []
_enter = torch.cuda.StreamContext.__enter__


def logged_enter(self):
    s = self.stream
    if s is not None and s != torch.cuda.default_stream(dev):
        entered.append({"stream": hex(s.cuda_stream), "where": traceback.format_stack(limit=6)[-3].strip()[:300]})
    return _enter(self)


torch.cuda.StreamContext.__enter__ = logged_enter
_set_stream = torch.cuda.set_stream


def logged_set_stream(s):
    if s is not None and s != torch.cuda.default_stream(dev):
        entered.append({"stream": hex(s.cuda_stream), "where": "set_stream: " + traceback.format_stack(limit=4)[-2].strip()[:300]})
    return _set_stream(s)


torch.cuda.set_stream = logged_set_stream


def probe_us():
    torch.cuda.synchronize()
    times = []
    for _ in range(200):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); probe.replay(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b))
    return round(statistics.median(times) * 1e3, 1)


rows = [{"stage": "start", "probe_us": probe_us()}]


def stage(name, **extra):
    rows.append({"stage": name, "probe_us": probe_us(), "streams_entered_so_far": len(entered), **extra})
    print("RESULT", json.dumps(rows[-1]), flush=True)


m = B.build_tiny_bench_models(dev)
stage("models built")
sizes = B.Sizes(True)
for i in (1, 2):
    cfg = sizes.train_config("mamba", "off", "on")
    tr = StyleTrainer(m.vae, m.siglip, B.content_images(1, sizes.train, dev), B.PROMPT, copy.deepcopy(cfg),
                      vgg=m.vgg, lpips=m.lpips, device=dev)
    stage(f"trainer {i} built")
    for step in range(cfg.epochs):
        tr.step(step % cfg.epochs, keep_output=False)
        tr.end_epoch()
        if step in (0, 1, 2, 5):
            stage(f"trainer {i} after step {step + 1}", graphed=tr.graphs is not None)
    counter = [0]

    def one_step():
        tr.step(counter[0] % cfg.epochs, keep_output=False)
        tr.end_epoch()
        counter[0] += 1

    t = B.time_device(one_step, dev, warmup=2, repeat=20)
    stage(f"trainer {i} timed", step_ms=round(statistics.median(t), 3))
print("RESULT", json.dumps({"entered": entered[:40]}), flush=True)
json.dump({"rows": rows, "entered": entered}, open(sys.argv[1] if len(sys.argv) > 1 else "/dev/null", "w"), indent=1)
