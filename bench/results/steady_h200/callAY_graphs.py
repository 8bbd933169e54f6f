"""call AY: what makes every CUDA graph of a process replay ~15 % slower once a second graph exists (callAU/AV)?
Each experiment runs in a fresh process (the effect is process-wide). The graph: 40 x (copy, zero, two
elementwise kernels) on preallocated buffers, so the driver-API capture needs no allocation either."""
import ctypes, json, os, statistics, subprocess, sys, torch

EXPERIMENTS = {
    "torch": "g1; g2 captured (own stream); g1 again",
    "torch_one_stream": "all captures on one stream",
    "torch_same_pool": "g2 captured in g1's memory pool (as one trainer's graphs are)",
    "alloc_own_pool": "graphs that allocate their tensors (callAV's), g2 in its own pool",
    "alloc_same_pool": "graphs that allocate their tensors, g2 in g1's pool",
    "torch_unreplayed": "g2 captured and instantiated, never replayed; g1 again",
    "torch_keep_graph": "g2 captured with keep_graph=True (not instantiated); g1; g2 instantiated; g1",
    "driver": "driver API (cuStreamBeginCapture, cuGraphInstantiate) for both graphs",
    "driver_upload": "driver API; both graphs uploaded (cuGraphUpload) before timing",
    "torch_max_conn_1": "torch, CUDA_DEVICE_MAX_CONNECTIONS=1",
    "torch_max_conn_32": "torch, CUDA_DEVICE_MAX_CONNECTIONS=32",
}

def run_one(name):
    dev = torch.device("cuda", 0)
    n = 40
    x = torch.randn(64, 256, device=dev)
    bufs = [[torch.empty_like(x) for _ in range(3)] for _ in range(n)]

    def work():
        if name.startswith("alloc"):
            h = x
            for _ in range(n):
                c = h.clone()
                z = torch.empty_like(c); z.zero_()
                h = c * 1.0001 + z
            return h
        h = x
        for c, z, o in bufs:
            c.copy_(h)
            z.zero_()
            torch.mul(c, 1.0001, out=o)
            o.add_(z)
            h = o
    cuda = ctypes.CDLL("libcuda.so.1")

    def check(r, what):
        if r != 0:
            raise RuntimeError(f"{what} returned {r}")

    def driver_capture(stream):
        graph, exec_ = ctypes.c_void_p(), ctypes.c_void_p()
        torch.cuda.synchronize()
        with torch.cuda.stream(stream):
            check(cuda.cuStreamBeginCapture_v2(ctypes.c_void_p(stream.cuda_stream), 2), "begin")
            work()
            check(cuda.cuStreamEndCapture(ctypes.c_void_p(stream.cuda_stream), ctypes.byref(graph)), "end")
        check(cuda.cuGraphInstantiateWithFlags(ctypes.byref(exec_), graph, ctypes.c_ulonglong(0)), "inst")
        cur = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        return lambda: check(cuda.cuGraphLaunch(exec_, cur), "launch"), exec_

    one = torch.cuda.Stream()

    def torch_capture(stream=None, keep=False, pool=None):
        s = stream or torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                work()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph(keep_graph=keep) if keep else torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=s, pool=pool):
            work()
        return g

    def timed(launch):
        for _ in range(20):
            launch()
        torch.cuda.synchronize()
        times = []
        for _ in range(300):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); launch(); b.record(); b.synchronize()
            times.append(a.elapsed_time(b))
        return round(statistics.median(times) * 1e3, 1)

    out = {}
    for _ in range(3):
        work()
    torch.cuda.synchronize()
    if name.startswith("driver"):
        l1, e1 = driver_capture(one)
        out["g1 alone"] = timed(l1)
        l2, e2 = driver_capture(one)
        if name == "driver_upload":
            cur = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
            check(cuda.cuGraphUpload(e1, cur), "upload"); check(cuda.cuGraphUpload(e2, cur), "upload")
        out["g2"] = timed(l2)
        out["g1 again"] = timed(l1)
        return out
    stream = one if name == "torch_one_stream" else None
    g1 = torch_capture(stream)
    out["g1 alone"] = timed(g1.replay)
    if name == "torch_keep_graph":
        g2 = torch_capture(stream, keep=True)
        out["g1 after g2 captured (not instantiated)"] = timed(g1.replay)
        g2.instantiate()
        out["g1 after g2 instantiated"] = timed(g1.replay)
        out["g2"] = timed(g2.replay)
        out["g1 again"] = timed(g1.replay)
        return out
    g2 = torch_capture(stream, pool=g1.pool() if name.endswith("same_pool") else None)
    if name != "torch_unreplayed":
        out["g2"] = timed(g2.replay)
    out["g1 again"] = timed(g1.replay)
    if name == "torch_unreplayed":
        out["g2"] = timed(g2.replay)
        out["g1 after g2 replayed"] = timed(g1.replay)
    return out

if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(run_one(sys.argv[1])))
        sys.exit(0)
    results = {}
    for name, what in EXPERIMENTS.items():
        env = dict(os.environ)
        if name.startswith("torch_max_conn_"):
            env["CUDA_DEVICE_MAX_CONNECTIONS"] = name.rsplit("_", 1)[1]
        for attempt in range(2):
            p = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True, env=env, timeout=120)
            last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
            try:
                row = json.loads(last)
            except ValueError:
                row = {"error": (p.stderr or p.stdout)[-400:]}
            results.setdefault(name, {"what": what, "runs": []})["runs"].append(row)
            print("RESULT", name, json.dumps(row), flush=True)
    print(json.dumps(results, indent=1))
