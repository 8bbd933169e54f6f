"""call AZ: callAY showed graphs captured by torch replay in ~188 us and the same work captured and instantiated
through the driver API in ~159 us. torch instantiates with AutoFreeOnLaunch | UseNodePriority (flags 1 | 8); the
driver runs used 0. Which flag costs the time, and does CUDA_GRAPHS_USE_NODE_PRIORITY=0 (CUDA 13: overrides that
flag) give torch's graphs the driver's speed, set before the process starts or set inside it after CUDA is up?
Same graph as callAY (40 x copy, zero, two elementwise kernels on preallocated buffers); fresh process each."""
import ctypes, json, os, statistics, subprocess, sys, torch

EXPERIMENTS = {  # name: (what, environment)
    "driver_f0": ("driver API, flags 0", {}),
    "driver_f1": ("driver API, AutoFreeOnLaunch", {}),
    "driver_f8": ("driver API, UseNodePriority", {}),
    "driver_f9": ("driver API, AutoFreeOnLaunch | UseNodePriority (torch's flags)", {}),
    "torch": ("torch.cuda.graph, g1 then g2 then g1", {}),
    "torch_env0": ("torch, CUDA_GRAPHS_USE_NODE_PRIORITY=0 in the environment", {"CUDA_GRAPHS_USE_NODE_PRIORITY": "0"}),
    "torch_late_env0": ("torch, the variable set by the process after CUDA is initialised", {}),
}


def run_one(name):
    dev = torch.device("cuda", 0)
    x = torch.randn(64, 256, device=dev)
    bufs = [[torch.empty_like(x) for _ in range(3)] for _ in range(40)]

    def work():
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

    one = torch.cuda.Stream()

    def driver_capture(flags):
        graph, exec_ = ctypes.c_void_p(), ctypes.c_void_p()
        torch.cuda.synchronize()
        with torch.cuda.stream(one):
            check(cuda.cuStreamBeginCapture_v2(ctypes.c_void_p(one.cuda_stream), 2), "begin")
            work()
            check(cuda.cuStreamEndCapture(ctypes.c_void_p(one.cuda_stream), ctypes.byref(graph)), "end")
        check(cuda.cuGraphInstantiateWithFlags(ctypes.byref(exec_), graph, ctypes.c_ulonglong(flags)), "inst")
        cur = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        return lambda: check(cuda.cuGraphLaunch(exec_, cur), "launch")

    def torch_capture():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                work()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=s):
            work()
        return g.replay, g

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

    for _ in range(3):
        work()
    torch.cuda.synchronize()
    out = {"env": os.environ.get("CUDA_GRAPHS_USE_NODE_PRIORITY")}
    if name == "torch_late_env0":
        os.environ["CUDA_GRAPHS_USE_NODE_PRIORITY"] = "0"
    if name.startswith("driver"):
        flags = int(name.split("_f")[1].split("_")[0])
        l1 = driver_capture(flags)
        out["g1 alone"] = timed(l1)
        l2 = driver_capture(flags)
        out["g2"] = timed(l2)
        out["g1 again"] = timed(l1)
        return out
    l1, g1 = torch_capture()
    out["g1 alone"] = timed(l1)
    l2, g2 = torch_capture()
    out["g2"] = timed(l2)
    out["g1 again"] = timed(l1)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(run_one(sys.argv[1])))
        sys.exit(0)
    results = {}
    for name, (what, extra) in EXPERIMENTS.items():
        env = {k: v for k, v in os.environ.items() if k != "CUDA_GRAPHS_USE_NODE_PRIORITY"}
        env.update(extra)
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
