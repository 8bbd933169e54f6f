"""call AV: callAU showed the process's first CUDA graph replaying in ~162 us and identical later graphs in ~190 us,
and the first one slowing to ~190 us once the others exist. Does it come back when the others are deleted? Is a
graph sharing the first one's memory pool as slow? The same graph of small copies and kernels as callAU."""
import gc, json, statistics, torch
dev = torch.device("cuda", 0)
x = torch.randn(64, 256, device=dev)

def work(src):
    h = src
    for _ in range(40):
        c = h.clone()
        z = torch.empty_like(c); z.zero_()
        h = c * 1.0001 + z
    return h

def capture(pool=None):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            work(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, pool=pool):
        out = work(x)
    return g, out

def timed(g):
    for _ in range(20):
        g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(300):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b))
    return round(statistics.median(times) * 1e3, 1)

rows = []
def note(label, value):
    rows.append((label, value))
    print("RESULT", json.dumps({label: value}), flush=True)

g1, o1 = capture()
note("graph 1 alone", timed(g1))
g2, o2 = capture()
note("graph 2 (own pool)", timed(g2))
note("graph 1 with graph 2 alive", timed(g1))
del g2, o2
gc.collect(); torch.cuda.synchronize(); torch.cuda.empty_cache()
note("graph 1 after graph 2 deleted", timed(g1))
g3, o3 = capture(pool=g1.pool())
note("graph 3 (graph 1's pool)", timed(g3))
del g3, o3
gc.collect(); torch.cuda.synchronize(); torch.cuda.empty_cache()
note("graph 1 after graph 3 deleted", timed(g1))
del g1, o1
gc.collect(); torch.cuda.synchronize(); torch.cuda.empty_cache()
g4, o4 = capture()
note("graph 4 (all others deleted)", timed(g4))
g5 = torch.cuda.CUDAGraph()  # a second graph object that is never captured
note("graph 4 with an empty CUDAGraph object", timed(g4))
