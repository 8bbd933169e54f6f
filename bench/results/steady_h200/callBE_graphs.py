"""call BE (callBD_graphs.py with counts; callBD: one copy or one fill on a new stream: no effect; work() there: slow)
call BD (callBC_graphs.py with other actions; callBC: one kernel, an event wait, second captures: none slows it):
call BC: callBB found that eager work on another stream makes every graph of the process replay ~18 % slower
(164 -> 193 us), whatever stream replays it. Which action is enough? A cold graph (captured on s, nothing run
there) is timed, then ONE action, then timed again (fresh process per action)."""
import json, statistics, subprocess, sys, torch

ROWS = ["copies40_on_new", "zeros40_on_new", "kernels160_on_new", "work_on_new_sync_each"]


def run_one(name):
    x = torch.randn(64, 256, device="cuda")
    bufs = [[torch.empty_like(x) for _ in range(3)] for _ in range(40)]

    def work():
        h = x
        for c, z, o in bufs:
            c.copy_(h); z.zero_(); torch.mul(c, 1.0001, out=o); o.add_(z); h = o

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

    for _ in range(3):
        work()
    torch.cuda.synchronize()
    default, s = torch.cuda.current_stream(), torch.cuda.Stream()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        work()
    out = {"before": timed(g)}
    if name == "one_kernel_on_s":
        with torch.cuda.stream(s):
            x.add_(0)
    elif name == "one_kernel_on_new":
        with torch.cuda.stream(torch.cuda.Stream()):
            x.add_(0)
    elif name == "event_wait_only":
        r = torch.cuda.Stream()
        r.wait_stream(default); default.wait_stream(r)
    elif name == "second_capture_same_stream":
        g2 = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g2, stream=s):
            work()
    elif name == "second_capture_new_stream":
        g2 = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g2, stream=torch.cuda.Stream()):
            work()
    elif name == "copies40_on_new":
        with torch.cuda.stream(torch.cuda.Stream()):
            for c, z, o in bufs:
                c.copy_(x)
    elif name == "zeros40_on_new":
        with torch.cuda.stream(torch.cuda.Stream()):
            for c, z, o in bufs:
                z.zero_()
    elif name == "kernels160_on_new":
        with torch.cuda.stream(torch.cuda.Stream()):
            for _ in range(160):
                x.mul_(1.0)
    elif name == "work_on_new_sync_each":
        r = torch.cuda.Stream()
        with torch.cuda.stream(r):
            for c, z, o in bufs:
                c.copy_(x); r.synchronize()
    elif name == "copy_on_new":
        with torch.cuda.stream(torch.cuda.Stream()):
            bufs[0][0].copy_(x)
    elif name == "zero_on_new":
        with torch.cuda.stream(torch.cuda.Stream()):
            bufs[0][1].zero_()
    elif name == "work_on_new":
        with torch.cuda.stream(torch.cuda.Stream()):
            work()
    elif name == "work_on_default":
        work()
    elif name == "copy_on_default_then_new_kernel":
        bufs[0][0].copy_(x)
        with torch.cuda.stream(torch.cuda.Stream()):
            x.add_(0)
    elif name == "kernel_on_s_then_sync_and_delete":
        r = torch.cuda.Stream()
        with torch.cuda.stream(r):
            x.add_(0)
        torch.cuda.synchronize()
        del r
        torch.cuda.empty_cache()
    torch.cuda.synchronize()
    out["after"] = timed(g)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(run_one(sys.argv[1])))
        sys.exit(0)
    for name in ROWS:
        p = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True, timeout=60)
        lines = p.stdout.strip().splitlines()
        print("RESULT", name, lines[-1] if lines else json.dumps({"error": p.stderr[-300:]}), flush=True)
