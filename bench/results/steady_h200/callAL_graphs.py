"""call AL: plain torch, no stylemamba: do D2D copies and zero-fills captured in a process's later CUDA graphs
replay as copy-engine operations where the first graph's ran as kernels (calls AJ/AK: the first trainer's graphs
had memcpy32_post/memset32 kernels, later trainers' Memcpy DtoD / Memset nodes)? Graphs 1, 2 (own pools), 3 in graph
1's pool, 4 after graph 1 is deleted."""
import torch
from torch.profiler import ProfilerActivity, profile
dev = torch.device("cuda", 0)
s = torch.cuda.Stream()
def capture(pool=None):
    g = torch.cuda.CUDAGraph()
    a = torch.randn(1 << 20, device=dev)
    with torch.cuda.stream(s):
        torch.cuda.current_stream().wait_stream(torch.cuda.default_stream())
        g.capture_begin(pool=pool)
        b = a.clone()
        c = torch.zeros(1 << 20, device=dev)
        d = b.mul(2).add(c)
        e = d.clone()
        g.capture_end()
    torch.cuda.default_stream().wait_stream(s)
    return g, (a, b, c, d, e)
def kinds(g, label):
    g.replay(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        g.replay(); torch.cuda.synchronize()
    names = sorted(e.name[:40] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    print("%-28s %s" % (label, names), flush=True)
g1, t1 = capture(); kinds(g1, "graph 1")
g2, t2 = capture(); kinds(g2, "graph 2 (own pool)")
g3, t3 = capture(g1.pool()); kinds(g3, "graph 3 (graph 1's pool)")
del g1, t1
g4, t4 = capture(); kinds(g4, "graph 4 (after 1 deleted)")
kinds(g2, "graph 2 again")
