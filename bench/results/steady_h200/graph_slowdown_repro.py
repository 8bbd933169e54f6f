"""Plain PyTorch, no stylemamba: after eager work on a non-default stream, every CUDA graph of the process replays
slower per node, for good (callBB-BE: a few dozen eager operations on a side stream); its kernels take as long as
before, the GPU idles between them. PyTorch's documented whole-network capture warms up forward + backward on a side
stream, which is enough; the same warm-up on the default stream is not. A thread that launches only into a capture
(`cold_thread`) does not set it off; one that first ran the same launches eagerly on the side stream does.

    python graph_slowdown_repro.py none | backward | backward_default_stream | warm_thread | cold_thread

H100, driver 580.159.04, torch 2.11+cu130 (callBU, one fresh process per case): a 1,600-node graph of small kernels,
captured first, replays in 1,659-1,677 us; after `backward` in 2,236 us, after `warm_thread` in 2,229 us; after
`none` (1,661), `backward_default_stream` (1,667: the same warm-up on the default stream) and `cold_thread` (1,666:
the same launches from a thread with no launch before) as before. Further cases: callBO-BT."""
import queue, statistics, sys, threading, torch

x = torch.randn(64, 256, device="cuda")
outs = [torch.empty_like(x) for _ in range(1600)]


def chain():
    h = x
    for i, o in enumerate(outs):
        torch.add(h, 0.5, out=o) if i % 2 == 0 else torch.mul(h, 1.0001, out=o)
        h = o


def replay_us(graph):
    times = []
    for _ in range(100):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); graph.replay(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return round(statistics.median(times), 1)


chain()
torch.cuda.synchronize()
probe = torch.cuda.CUDAGraph()
with torch.cuda.graph(probe):
    chain()
before = replay_us(probe)
case = sys.argv[1] if len(sys.argv) > 1 else "backward"
graph, side, y = torch.cuda.CUDAGraph(), torch.cuda.Stream(), torch.empty_like(x)
if case in ("backward", "backward_default_stream"):  # eager warm-up, then forward + backward captured
    layer = torch.nn.Linear(256, 256).cuda()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side if case == "backward" else torch.cuda.current_stream()):  # the docs: a side stream
        layer(x).square().mean().backward()
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        layer(x).square().mean().backward()
elif case in ("warm_thread", "cold_thread"):  # no autograd: a worker thread launches into the main thread's capture
    jobs, done = queue.Queue(), queue.Queue()

    def worker():
        while jobs.get():
            with torch.cuda.stream(side):
                for _ in range(200):
                    torch.mul(x, 2.0, out=y)
            done.put(True)
    threading.Thread(target=worker, daemon=True).start()
    if case == "warm_thread":
        jobs.put(True); done.get()  # the worker's eager launches
        torch.cuda.synchronize()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        graph.capture_begin()
        jobs.put(True); done.get()
        graph.capture_end()
    torch.cuda.current_stream().wait_stream(side)
elif case != "none":
    raise SystemExit(f"unknown case {case!r}")
torch.cuda.synchronize()
print(f"{case}: the first graph replays in {before} us before, {replay_us(probe)} us after", flush=True)
