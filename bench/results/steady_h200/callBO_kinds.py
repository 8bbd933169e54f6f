"""call BO: after a process's second step graph, do ALL graphs replay slower per node, or only those with copies and
fills? Probes captured at process start: kernels only (160 and 1,600 nodes), and the old probe (40 x copy, fill,
mul, add). Each is timed (GPU, from an idle GPU) and its replay() call timed on the host, before any trainer, after
a first tiny trainer, after a second; the trainers' own graphs too."""
import copy, json, statistics, time, torch
from stylemamba.experiments import bench as B
from stylemamba.train import StyleTrainer

dev = torch.device("cuda", 0)
x = torch.randn(64, 256, device=dev)


def kernels_only(n):
    bufs = [torch.empty_like(x) for _ in range(n)]

    def work():
        h = x
        for i, o in enumerate(bufs):
            (torch.mul(h, 1.0001, out=o) if i % 2 else torch.add(h, 0.5, out=o))
            h = o
    return work


def copies_and_fills():
    bufs = [[torch.empty_like(x) for _ in range(3)] for _ in range(40)]

    def work():
        h = x
        for c, z, o in bufs:
            c.copy_(h); z.zero_(); torch.mul(c, 1.0001, out=o); o.add_(z); h = o
    return work


def graph_of(work):
    for _ in range(3):
        work()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=torch.cuda.Stream()):
        work()
    return g, work  # the work keeps the buffers the graph writes alive


def replay_times(replay, n=200):
    """(GPU us from an idle GPU, host us of the replay call), medians."""
    gpu, host = [], []
    for _ in range(n):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        t0 = time.perf_counter()
        replay()
        t1 = time.perf_counter()
        b.record(); b.synchronize()
        gpu.append(a.elapsed_time(b) * 1e3); host.append((t1 - t0) * 1e6)
    return round(statistics.median(gpu), 1), round(statistics.median(host), 1)


probes = {"k160": graph_of(kernels_only(160)), "k1600": graph_of(kernels_only(1600)),
          "copy40": graph_of(copies_and_fills())}
m = B.build_tiny_bench_models(dev)
sizes = B.Sizes(True)
cfg = sizes.train_config("mamba", "off", "on")
content = B.content_images(1, sizes.train, dev)
trainers = []


def trainer_graph(tr):
    (graph, _), = tr.graphs._graphs.values()
    return graph


def report(phase):
    out = {"phase": phase}
    for name, (g, _) in probes.items():
        out[name] = replay_times(g.replay)
    for i, tr in enumerate(trainers):
        out[f"trainer{i + 1}_graph"] = replay_times(trainer_graph(tr).replay, 60)
    print("RESULT", json.dumps(out), flush=True)


def new_trainer():
    tr = StyleTrainer(m.vae, m.siglip, content, B.PROMPT, copy.deepcopy(cfg), vgg=m.vgg, lpips=m.lpips, device=dev)
    for i in range(6):
        tr.step(i % cfg.epochs, keep_output=False)
        tr.end_epoch()
    trainers.append(tr)


report("start")
new_trainer()
report("after trainer 1")
new_trainer()
report("after trainer 2")
