"""call BH: which single action makes a process's CUDA graphs replay slower (callBG: the probe graph went 160 -> 188 us
when the tiny trainer captured its step; callBC-BE: a second capture of the probe's own work, which allocates
nothing, did not). One action per process (the effect stays): argv[1] names it; the probe is timed before and after."""
import json, os, statistics, sys, torch

dev = torch.device("cuda", 0)
if os.environ.get("NO_CUDNN"):  # callBL: is cuDNN (its handle on the autograd thread, its kernels) the trigger?
    torch.backends.cudnn.enabled = False
if os.environ.get("NO_CUDNN_SDP"):
    torch.backends.cuda.enable_cudnn_sdp(False)
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
suffix = ""
if case.startswith("trainer_part:"):  # callBL: the trainer's step captured only up to forward / backward
    part = case.split(":")[1]
    from stylemamba import losses as L
    from stylemamba import train as T
    full = T.StyleTrainer._step_body

    def partial_step(self, epoch, weights):
        if part == "full":
            return full(self, epoch, weights)
        self.opt.zero_grad(set_to_none=True)
        with T.autocast(self.device, self.cfg.precision):
            y, emb_y, terms, _ = self._forward_terms(0, self.x.shape[0], epoch, None, None)
            total = L.total_loss(terms, weights)
        if part == "backward":
            self.scaler.scale(total).backward()
        logged = {k: v.detach().float() for k, v in terms.items()}
        logged["total"] = total.detach().float()
        return logged, y.detach(), emb_y.detach().float()
    T.StyleTrainer._step_body = partial_step
    case, suffix = "trainer_step:{}", f" part={part}"
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
elif case.split(":")[0] in ("bf16_matmul", "bf16_conv", "cudnn_sdpa"):  # callBL: the sm90 kernels in the trainer's
    # graph (DOT: cuBLAS nvjet_sm90 with 164-213 KB of shared memory, cuDNN sm90_xmma convolutions with 226 KB, cuDNN
    # flash attention), captured after one eager warm-up; ":eager" runs them eagerly only
    kind, eager_only = case.split(":")[0], case.endswith(":eager")
    bf = dict(device=dev, dtype=torch.bfloat16)
    if kind == "bf16_matmul":
        a, b = torch.randn(64, 256, **bf), torch.randn(256, 256, **bf)
        op = lambda: a @ b  # noqa: E731
    elif kind == "bf16_conv":
        c = torch.nn.Conv2d(64, 64, 3, padding=1).to(**bf).to(memory_format=torch.channels_last)
        im = torch.randn(1, 64, 32, 32, **bf).to(memory_format=torch.channels_last)
        op = lambda: c(im)  # noqa: E731
    else:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        q = torch.randn(1, 4, 256, 64, **bf)

        def op():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(q, q, q)
    with torch.no_grad():
        op()
        torch.cuda.synchronize()
        keep.append(op() if eager_only else capture(op))
elif case.startswith("bwd_"):  # callBL: the trainer's graph slows the probe only with its backward pass in it;
    # which backward? each captured as forward + backward after one eager warm-up (grads kept, as a trainer's)
    import torch.nn.functional as F
    bf = dict(device=dev, dtype=torch.bfloat16)
    kind = case[4:]
    if kind == "conv":
        mod = torch.nn.Conv2d(64, 64, 3, padding=1).to(**bf).to(memory_format=torch.channels_last)
        inp = torch.randn(1, 64, 32, 32, **bf).to(memory_format=torch.channels_last)
        loss = lambda: mod(inp).float().square().mean()  # noqa: E731
    elif kind == "sdpa":
        q = torch.randn(1, 4, 256, 64, **bf, requires_grad=True)
        loss = lambda: F.scaled_dot_product_attention(q, q, q).float().square().mean()  # noqa: E731
    elif kind == "gn":
        mod = torch.nn.GroupNorm(8, 64).to(dev)
        inp = torch.randn(1, 64, 32, 32, device=dev)
        loss = lambda: mod(inp).square().mean()  # noqa: E731
    elif kind == "upsample":
        inp = torch.randn(1, 64, 16, 16, **bf, requires_grad=True)
        loss = lambda: F.interpolate(inp, scale_factor=2.0, mode="nearest").float().square().mean()  # noqa: E731
    elif kind == "linear":
        mod = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)]).to(**bf)
        inp = torch.randn(64, 256, **bf)
        loss = lambda: mod(inp).float().square().mean()  # noqa: E731
    elif kind == "many":  # a long backward of small elementwise nodes
        p_ = torch.randn(4096, device=dev, requires_grad=True)

        def loss():
            h = p_
            for _ in range(300):
                h = torch.tanh(h) * 1.01
            return h.square().mean()
    else:
        raise SystemExit(f"unknown case {case}")
    loss().backward()
    torch.cuda.synchronize()
    keep.append(capture(lambda: loss().backward()))
elif case == "distinct_kernels":  # callBL: a graph of ~150 different kernel functions (the trainer's has many)
    ts = {dt: torch.rand(4096, device=dev, dtype=dt) + 0.5 for dt in (torch.float32, torch.float16, torch.bfloat16,
                                                                     torch.float64)}
    fns = [torch.sin, torch.cos, torch.exp, torch.log, torch.tanh, torch.sigmoid, torch.abs, torch.neg, torch.sqrt,
           torch.rsqrt, torch.erf, torch.atan, torch.floor, torch.ceil, torch.round, torch.reciprocal, torch.relu,
           torch.nn.functional.gelu, torch.nn.functional.silu, torch.cumsum, torch.sum, torch.amax, torch.softmax,
           torch.sort, torch.log_softmax, torch.square, torch.expm1, torch.log1p, torch.sinh, torch.cosh,
           torch.asin, torch.trunc, torch.sign, torch.frac, torch.lgamma, torch.digamma, torch.erfinv, torch.logit]
    ops = []
    for f in fns:
        for t in ts.values():
            call = (lambda f=f, t=t: f(t, 0)) if f in (torch.cumsum, torch.softmax, torch.log_softmax) \
                else (lambda f=f, t=t: f(t))
            try:
                call()
                ops.append(call)
            except RuntimeError:
                pass
    torch.cuda.synchronize()
    keep.append(capture(lambda: [op() for op in ops]))
    case += f" ops={len(ops)}"
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
        begin = torch.cuda.CUDAGraph.capture_begin

        new = torch.cuda.CUDAGraph.__new__

        def debug_capture_begin(self, *a, **k):
            dumped.append(self)
            return begin(self, *a, **k)
        torch.cuda.CUDAGraph.capture_begin = debug_capture_begin
        # the cudaGraph_t must outlive capture_end (enable_debug_mode alone did not keep it in torch 2.11)
        # (torch 2.11's pybind __init__ takes keep_graph: __new__ alone did not keep it either)
        init = torch.cuda.CUDAGraph.__init__
        torch.cuda.CUDAGraph.__new__ = staticmethod(lambda cls, keep_graph=False: new(cls, True))
        torch.cuda.CUDAGraph.__init__ = lambda self, keep_graph=False: init(self, True)
    tr = StyleTrainer(m.vae, m.siglip, B.content_images(1, sizes.train, dev), B.PROMPT, copy.deepcopy(cfg),
                      vgg=m.vgg, lpips=m.lpips, device=dev)
    profiling = os.environ.get("PROFILE_STREAMS")  # callBL: the GPU work of the trainer's steps by stream
    if profiling:
        from torch.profiler import ProfilerActivity, profile
        prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
        prof.__enter__()
    for i in range(3):
        if profiling:
            torch.cuda.synchronize()
            with torch.profiler.record_function(f"STEP{i}"):
                tr.step(i % cfg.epochs, keep_output=False)
                torch.cuda.synchronize()
        else:
            tr.step(i % cfg.epochs, keep_output=False)
    if profiling:
        prof.__exit__(None, None, None)
        import collections
        prof.export_chrome_trace("/tmp/trace.json")
        events = json.load(open("/tmp/trace.json"))["traceEvents"]
        by_stream = collections.Counter()
        names = collections.defaultdict(collections.Counter)
        for e in events:
            if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
                st = (e.get("args") or {}).get("stream")
                by_stream[st] += 1
                names[st][e["name"][:90]] += 1
        print("STREAMS", dict(by_stream), flush=True)
        for st, c in names.items():
            print("STREAM", st, c.most_common(8), flush=True)
        apis = collections.Counter(e["name"] for e in events if e.get("cat") == "cuda_runtime" or
                                   e.get("cat") == "cuda_driver")
        print("APIS", apis.most_common(40), flush=True)
        spans = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("user_annotation", "cpu_op",
                                                                              "python_function")]
        odd = [e for e in events if e.get("name") in ("cudaStreamCreateWithFlags", "cudaHostAlloc",
                                                      "cudaHostGetDevicePointer", "cudaStreamCreate",
                                                      "cudaStreamCreateWithPriority")
               or (e.get("name") == "cudaMemsetAsync" and (e.get("args") or {}).get("stream") not in (None, 7))]
        launches = {(e.get("args") or {}).get("correlation"): e for e in events
                    if e.get("cat") in ("cuda_runtime", "cuda_driver")}
        for e in events:
            if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and (e.get("args") or {}).get("stream") != 7:
                odd.append(launches.get(e["args"].get("correlation"), e))
        for e in odd[:40]:
            inside = [sp["name"][:60] for sp in spans if sp["ts"] <= e["ts"] <= sp["ts"] + sp.get("dur", 0)
                      and (sp["tid"] == e["tid"] or sp["name"].startswith("STEP"))]
            print("ODD", e["name"], e.get("args", {}).get("stream"), "tid", e["tid"], inside[-6:], flush=True)
    keep.append(tr)
    if os.environ.get("DUMP_GRAPHS"):
        for i, g in enumerate(dumped):
            g.enable_debug_mode()
            g.debug_dump(os.path.join(os.environ["DUMP_GRAPHS"], f"graph{i}.dot"))
        print("DUMP", len(dumped), os.listdir(os.environ["DUMP_GRAPHS"]), flush=True)
    case += f" graphed={tr.graphs is not None}"
else:
    raise SystemExit(f"unknown case {case}")
torch.cuda.synchronize()
after = probe_us()
after2 = probe_us()
suffix += "".join(f" {k}" for k in ("NO_CUDNN", "NO_CUDNN_SDP") if os.environ.get(k))
print("RESULT", json.dumps({"case": case + suffix, "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
                            "before_us": before, "after_us": after, "again_us": after2}), flush=True)
