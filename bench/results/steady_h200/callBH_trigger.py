"""call BH: which single action makes a process's CUDA graphs replay slower (callBG: the probe graph went 160 -> 188 us
when the tiny trainer captured its step; callBC-BE: a second capture of the probe's own work, which allocates
nothing, did not). One action per process (the effect stays): argv[1] names it; the probe is timed before and after."""
import json, os, statistics, sys, torch

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


def probe_us():
    torch.cuda.synchronize()
    times = []
    for _ in range(300):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); probe.replay(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b))
    return round(statistics.median(times) * 1e3, 1)


def capture(fn, pool=None):
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        g.capture_begin(pool=pool)
        out = fn()
        g.capture_end()
    torch.cuda.current_stream().wait_stream(s)
    g.replay()
    return g, out


keep = []
w = torch.randn(256, 256, device=dev)
img = torch.randn(1, 8, 64, 64, device=dev)
conv = torch.nn.Conv2d(8, 8, 3, padding=1).to(dev)
conv(img)  # warm cuDNN eagerly on the default stream
x @ w
torch.randn(4, device=dev)
torch.cuda.synchronize()
case = sys.argv[1]
before = probe_us()
if case == "none":
    pass
elif case == "malloc_big":  # a new segment (cudaMalloc), no graph involved
    keep.append(torch.empty(512 << 20, dtype=torch.uint8, device=dev))
elif case == "malloc_small":
    keep.append(torch.empty(64 << 10, dtype=torch.uint8, device=dev))
elif case == "capture_noalloc":  # writes only into existing tensors
    o = torch.empty_like(x)
    keep.append(capture(lambda: torch.mul(x, 2.0, out=o)))
elif case == "capture_alloc":  # allocates its output in a new private pool
    keep.append(capture(lambda: x * 2.0))
elif case == "capture_alloc_big":
    keep.append(capture(lambda: torch.zeros(64 << 20, device=dev)))
elif case == "capture_matmul":
    o = torch.empty(64, 256, device=dev)
    keep.append(capture(lambda: torch.matmul(x, w, out=o)))
elif case == "capture_conv":
    keep.append(capture(lambda: conv(img)))
elif case == "capture_randn":
    keep.append(capture(lambda: torch.randn(64, 256, device=dev)))
elif case == "capture_1000_nodes":  # a big graph of elementwise kernels into existing tensors
    big = [torch.empty_like(x) for _ in range(1000)]

    def many():
        for t in big:
            t.mul_(1.0001)
    keep.append(capture(many))
elif case == "capture_backward":
    p = torch.randn(256, 256, device=dev, requires_grad=True)
    (x @ p).sum().backward(); torch.cuda.synchronize()
    keep.append(capture(lambda: (x @ p).sum().backward()))
elif case == "capture_adam":
    ps = [torch.randn(256, 256, device=dev, requires_grad=True) for _ in range(4)]
    for p in ps:
        p.grad = torch.randn_like(p)
    opt = torch.optim.Adam(ps, lr=1e-3, fused=True, capturable=True)
    opt.step(); torch.cuda.synchronize()
    keep.append(capture(opt.step))
elif case == "second_pool_noalloc":  # a capture into a fresh pool that allocates nothing
    o = torch.empty_like(x)
    keep.append(capture(lambda: torch.mul(x, 2.0, out=o), pool=torch.cuda.graph_pool_handle()))
elif case == "capture_triton_gn":  # our Triton GroupNorm kernels (the trainer's graph holds Triton kernels)
    from stylemamba import group_norm_triton as gnt
    xi = torch.randn(1, 32, 32, 32, device=dev)
    wt, bs = torch.ones(32, device=dev), torch.zeros(32, device=dev)
    gnt.forward(xi, wt, bs, 8, 1e-5); torch.cuda.synchronize()
    keep.append(capture(lambda: gnt.forward(xi, wt, bs, 8, 1e-5)))
elif case == "eager_triton_gn":  # the same kernels run eagerly only
    from stylemamba import group_norm_triton as gnt
    xi = torch.randn(1, 32, 32, 32, device=dev)
    wt, bs = torch.ones(32, device=dev), torch.zeros(32, device=dev)
    for _ in range(3):
        gnt.forward(xi, wt, bs, 8, 1e-5)
elif case == "capture_compiled":  # a torch.compile'd (Inductor Triton) function
    f = torch.compile(lambda t: (t * 2).sin() + 1)
    f(x); torch.cuda.synchronize()
    keep.append(capture(lambda: f(x)))
elif case.startswith("capture_n"):  # capture_n5000: a graph of that many elementwise nodes
    n = int(case[len("capture_n"):])
    big = [torch.empty(64, device=dev) for _ in range(200)]

    def many():
        for i in range(n):
            big[i % 200].mul_(1.0001)
    keep.append(capture(many))
elif case == "capture_while_busy":  # as CapturedCalls._capture: no sync, the GPU still runs earlier work
    big_a = torch.randn(4096, 4096, device=dev)
    for _ in range(20):
        big_a = big_a @ big_a / 64
    o = torch.empty_like(x)
    keep.append(capture(lambda: torch.mul(x, 2.0, out=o)))
elif case == "destroy_graph":  # a second graph captured, replayed and freed
    g2 = capture(lambda: x * 2.0)
    torch.cuda.synchronize()
    del g2
elif case == "capture_twice_no_replay":  # two graphs recorded ahead, never replayed before the probe
    o = torch.empty_like(x)
    for _ in range(2):
        g = torch.cuda.CUDAGraph()
        s2 = torch.cuda.Stream()
        with torch.cuda.stream(s2):
            g.capture_begin()
            torch.mul(x, 2.0, out=o)
            g.capture_end()
        keep.append(g)
elif case == "capture_with_generator":  # a registered non-default CUDA generator (the trainer's crops)
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    g = torch.cuda.CUDAGraph()
    g.register_generator_state(gen)
    s2 = torch.cuda.Stream()
    with torch.cuda.stream(s2):
        g.capture_begin()
        out = torch.rand(64, device=dev, generator=gen)
        g.capture_end()
    g.replay()
    keep.append((g, out))
elif case.split(":")[0] in ("copies", "copies_odd", "memsets", "clones"):  # callBJ: "copies:200" ... graphs of the
    # trainer's other node kinds (callAJ/AL: its copies and fills ran as copy-engine operations in later graphs)
    kind, n = case.split(":")[0], int(case.split(":")[1])
    size = 4097 if kind == "copies_odd" else 4096
    src = [torch.randn(size + 1, device=dev)[1:] if kind == "copies_odd" else torch.randn(size, device=dev)
           for _ in range(n)]
    dst = [torch.empty(size, device=dev) for _ in range(n)]

    def nodes():
        if kind == "clones":
            return [t.clone() for t in src]
        for a, b in zip(dst, src):
            if kind == "memsets":
                a.zero_()
            else:
                a.copy_(b)
    keep.append(capture(nodes))
elif case == "empty_cache":  # callBK: the trainer empties torch's cache before its first capture (cudaFree)
    held = [torch.empty(2**18, device=dev) for _ in range(100)] + [torch.empty(2**24, device=dev) for _ in range(8)]
    del held
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
elif case == "empty_cache_then_capture":  # callBK: the cache emptied, then a capture that allocates (as the trainer)
    held = [torch.empty(2**24, device=dev) for _ in range(8)]
    del held
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    keep.append(capture(lambda: [x * 2.0 for _ in range(50)]))
elif case.split(":")[0] in ("h2d", "d2h", "fork"):  # callBL: node kinds a linear graph of device work lacks
    kind, n = case.split(":")[0], int(case.split(":")[1])
    dev_t = [torch.empty(4096, device=dev) for _ in range(n)]
    host_t = [torch.randn(4096).pin_memory() for _ in range(n)]
    branch = torch.cuda.Stream()

    def nodes():
        if kind == "fork":  # two branches that join: a graph with parallel paths
            here = torch.cuda.current_stream()
            branch.wait_stream(here)
            with torch.cuda.stream(branch):
                for t in dev_t[: n // 2]:
                    t.mul_(1.0001)
            for t in dev_t[n // 2:]:
                t.mul_(1.0001)
            here.wait_stream(branch)
        for d, h in zip(dev_t, host_t):
            if kind == "h2d":
                d.copy_(h, non_blocking=True)
            elif kind == "d2h":
                h.copy_(d, non_blocking=True)
    keep.append(capture(nodes))
elif case.split(":")[0] in ("trainer_step", "trainer_step_keep_cache"):  # the tiny trainer; ":{json}" overrides
    # its recipe; trainer_step_keep_cache (callBK): torch.cuda.empty_cache does nothing while it trains
    if case.startswith("trainer_step_keep_cache"):
        torch.cuda.empty_cache = lambda: None
    import copy
    from stylemamba.experiments import bench as B
    from stylemamba.train import StyleTrainer
    m = B.build_tiny_bench_models(dev)
    sizes = B.Sizes(True)
    overrides = json.loads(case.split(":", 1)[1]) if ":" in case else {}
    cfg = sizes.train_config(overrides.pop("kind", "mamba"), "off", "on")
    for k, v in overrides.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                setattr(getattr(cfg, k), kk, vv)
        else:
            setattr(cfg, k, v)
    if os.environ.get("DUMP_GRAPHS"):  # callBL: keep each graph's topology to write it out as DOT
        dumped = []

        class DebugGraph(torch.cuda.CUDAGraph):
            def __init__(self, *a, **k):
                super().__init__()
                self.enable_debug_mode()
                dumped.append(self)
        torch.cuda.CUDAGraph = DebugGraph
    tr = StyleTrainer(m.vae, m.siglip, B.content_images(1, sizes.train, dev), B.PROMPT, copy.deepcopy(cfg),
                      vgg=m.vgg, lpips=m.lpips, device=dev)
    for i in range(3):
        tr.step(i % cfg.epochs, keep_output=False)
    keep.append(tr)
    if os.environ.get("DUMP_GRAPHS"):
        for i, g in enumerate(dumped):
            g.debug_dump(os.path.join(os.environ["DUMP_GRAPHS"], f"graph{i}.dot"))
    case += f" graphed={tr.graphs is not None}"
else:
    raise SystemExit(f"unknown case {case}")
torch.cuda.synchronize()
after = probe_us()
after2 = probe_us()
print("RESULT", json.dumps({"case": case, "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
                            "before_us": before, "after_us": after, "again_us": after2}), flush=True)
