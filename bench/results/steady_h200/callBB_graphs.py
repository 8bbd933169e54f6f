"""call BB: callBA's torch graph, captured on a stream that had run nothing, replayed as fast as the driver's
(164-168 us); callAY/AZ's, captured after a warm-up on a fresh side stream (torch's recipe), replayed in ~194 us.
Is it the stream the graph is replayed on (the legacy default stream after other streams have run work) or the
warm-up itself? Rows (fresh process each): warm-up on a side stream s, capture on s, replay on the default
stream / on s / on a third stream; no warm-up, replay on the default stream, before and after eager work on
another stream."""
import json, statistics, subprocess, sys, torch

ROWS = ["warm_default", "warm_on_s", "warm_on_third", "cold_default", "cold_then_side_work"]


def run_one(name):
    x = torch.randn(64, 256, device="cuda")
    bufs = [[torch.empty_like(x) for _ in range(3)] for _ in range(40)]

    def work():
        h = x
        for c, z, o in bufs:
            c.copy_(h); z.zero_(); torch.mul(c, 1.0001, out=o); o.add_(z); h = o

    def timed(launch, stream):
        with torch.cuda.stream(stream):
            for _ in range(20):
                launch()
            torch.cuda.synchronize()
            times = []
            for _ in range(300):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record(stream); launch(); b.record(stream); b.synchronize()
                times.append(a.elapsed_time(b))
        return round(statistics.median(times) * 1e3, 1)

    for _ in range(3):
        work()
    torch.cuda.synchronize()
    default = torch.cuda.current_stream()
    s = torch.cuda.Stream()
    g = torch.cuda.CUDAGraph()
    if name.startswith("warm"):
        s.wait_stream(default)
        with torch.cuda.stream(s):
            for _ in range(3):
                work()
        default.wait_stream(s)
    with torch.cuda.graph(g, stream=s):
        work()
    out = {}
    if name == "warm_on_s":
        out["replay on s"] = timed(g.replay, s)
    elif name == "warm_on_third":
        out["replay on a third stream"] = timed(g.replay, torch.cuda.Stream())
    else:
        out["replay on default"] = timed(g.replay, default)
    if name == "cold_then_side_work":
        r = torch.cuda.Stream()
        r.wait_stream(default)
        with torch.cuda.stream(r):
            work()
        default.wait_stream(r)
        torch.cuda.synchronize()
        out["replay on default after eager work on another stream"] = timed(g.replay, default)
        out["replay on that stream"] = timed(g.replay, r)
    if name.startswith("warm"):
        out["replay on default"] = out.get("replay on default") or timed(g.replay, default)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(run_one(sys.argv[1])))
        sys.exit(0)
    for name in ROWS:
        for _ in range(2):
            p = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True, timeout=60)
            lines = p.stdout.strip().splitlines()
            print("RESULT", name, lines[-1] if lines else json.dumps({"error": p.stderr[-300:]}), flush=True)
