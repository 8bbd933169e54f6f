"""call AU: does plain torch show the tiny trainers' pattern (the process's first CUDA graph replays faster than
later identical ones, callAT_cupti.py)? Graphs of many small copies (clone/zero_: memcpy and memset nodes) and
elementwise kernels, captured one after another; each replay timed with CUDA events. argv[1] "copies" or
"kernels" (the same work with the copies done by elementwise kernels instead)."""
import json, statistics, sys, torch
mode = sys.argv[1]
dev = torch.device("cuda", 0)
x = torch.randn(64, 256, device=dev)

def work(src):
    outs = []
    h = src
    for _ in range(40):
        c = h.clone() if mode == "copies" else torch.add(h, 0)
        if mode == "copies":
            z = torch.empty_like(c); z.zero_()
        else:
            z = torch.mul(c, 0)
        h = c * 1.0001 + z
        outs.append(h)
    return outs

rows = []
keep = []
for i in range(4):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            work(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = work(x)
    keep.append((g, out))
    for _ in range(20):
        g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(200):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b))
    rows.append(round(statistics.median(times) * 1e3, 1))
print("RESULT", json.dumps({"mode": mode, "graph_replay_us": rows}), flush=True)
# the first graph again, after the others exist
g = keep[0][0]
times = []
for _ in range(200):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(); g.replay(); b.record(); b.synchronize()
    times.append(a.elapsed_time(b))
print("RESULT", json.dumps({"mode": mode, "graph1_again_us": round(statistics.median(times) * 1e3, 1)}), flush=True)
