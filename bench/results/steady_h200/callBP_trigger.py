"""call BP: which capture puts a process's graphs into the slow mode callBO measured (every graph, kernels only too,
~0.35 us more per node, for good)? callBL: the trainer's forward + backward does, its forward alone does not, nor
small backward passes. Here: a backward that allocates large gradients (on autograd's thread), a backward of many
nodes, allocations from a second host thread inside a capture. One case per process (argv[1]); a 1,600-node
kernels-only probe captured at start is timed before and after."""
import json, os, statistics, sys, threading, torch

dev = torch.device("cuda", 0)
x = torch.randn(64, 256, device=dev)
bufs = [torch.empty_like(x) for _ in range(1600)]


def probe_work():
    h = x
    for i, o in enumerate(bufs):
        (torch.mul(h, 1.0001, out=o) if i % 2 else torch.add(h, 0.5, out=o))
        h = o


def capture_probe():
    for _ in range(3):
        probe_work()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=torch.cuda.Stream()):
        probe_work()
    return graph


late = bool(os.environ.get("PROBE_LATE"))  # callBP2: the case's capture first, then the probe's (timed after only)
if os.environ.get("ON_AUTOGRAD"):  # callBR (on c392f2f): every capture of the process begun on autograd's thread
    from stylemamba.cuda_graphs import on_autograd_thread
    capture_probe = (lambda plain: lambda: on_autograd_thread(plain, dev))(capture_probe)
probe = None if late else capture_probe()


def probe_us():
    times = []
    for _ in range(100):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); probe.replay(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b))
    return round(statistics.median(times) * 1e3, 1)


keep = []


def capture_training(model, inp, warm=3, mode="global"):
    """The documented whole-network capture: eager warm-up on a side stream, gradients None, then forward + backward
    captured (the gradients are allocated inside, by autograd's thread)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warm):
            model.zero_grad(set_to_none=True)
            model(inp).float().square().mean().backward()
    torch.cuda.current_stream().wait_stream(s)
    model.zero_grad(set_to_none=True)
    g = torch.cuda.CUDAGraph()

    def record():
        with torch.cuda.graph(g, capture_error_mode=mode):
            loss = model(inp).float().square().mean()
            loss.backward()
        return loss
    if os.environ.get("ON_AUTOGRAD"):
        from stylemamba.cuda_graphs import on_autograd_thread
        loss = on_autograd_thread(record, dev)
    else:
        loss = record()
    g.replay()
    keep.append((g, model, inp, loss))


def chain(n, width):
    layers = []
    for _ in range(n):
        layers += [torch.nn.Linear(width, width), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers).to(dev)


before = None if late else probe_us()
case = sys.argv[1]
if case == "none":
    pass
elif case == "tiny_trainer":  # the control: callBO's trigger
    import copy
    from stylemamba.experiments import bench as B
    from stylemamba.train import StyleTrainer
    m = B.build_tiny_bench_models(dev)
    sizes = B.Sizes(True)
    cfg = sizes.train_config("mamba", "off", "on")
    tr = StyleTrainer(m.vae, m.siglip, B.content_images(1, sizes.train, dev), B.PROMPT, copy.deepcopy(cfg),
                      vgg=m.vgg, lpips=m.lpips, device=dev)
    for i in range(4):
        tr.step(i % cfg.epochs, keep_output=False)
    keep.append(tr)
elif case == "bwd_small":  # 2 linear layers, small gradients
    capture_training(chain(1, 256), torch.randn(64, 256, device=dev))
elif case == "bwd_relaxed":  # bwd_small captured in relaxed mode
    capture_training(chain(1, 256), torch.randn(64, 256, device=dev), mode="relaxed")
elif case in ("bwd_grad_api", "bwd_input_only", "bwd_single_op"):  # autograd.grad: no AccumulateGrad
    model = chain(1, 256)
    inp = torch.randn(64, 256, device=dev, requires_grad=case != "bwd_grad_api")
    if case != "bwd_grad_api":
        model.requires_grad_(False)
    wrt = list(model.parameters()) if case == "bwd_grad_api" else [inp]

    def fwd_bwd():
        out = inp.mul(2.0) if case == "bwd_single_op" else model(inp)
        return torch.autograd.grad(out.float().square().mean(), wrt)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fwd_bwd()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        grads = fwd_bwd()
    g.replay()
    keep.append((g, model, inp, grads))
elif case == "eager_bwd_then_fwd_capture":  # autograd's thread has run (eagerly); the capture is forward only
    model = chain(1, 256)
    inp = torch.randn(64, 256, device=dev)
    model(inp).square().mean().backward()
    with torch.no_grad():
        model(inp)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = model(inp)
    g.replay()
    keep.append((g, model, inp, out))
elif case == "event_in_capture":  # an event recorded and waited on inside a capture, one stream
    o = torch.empty_like(x)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        torch.mul(x, 2.0, out=o)
        e = torch.cuda.Event()
        e.record()
        torch.cuda.current_stream().wait_event(e)
        torch.mul(o, 2.0, out=o)
    g.replay()
    keep.append((g, o))
elif case == "bwd_thread_local":  # bwd_small captured in thread-local mode
    capture_training(chain(1, 256), torch.randn(64, 256, device=dev), mode="thread_local")
elif case.startswith("warm_thread_"):  # callBP3: one host thread launches eagerly, then into a capture begun by main
    import queue
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    todo, done, outs = queue.Queue(), queue.Queue(), []
    o = torch.empty_like(x)

    def worker():
        while (job := todo.get()) is not None:
            with torch.cuda.stream(s):
                for _ in range(200):
                    torch.mul(x, 2.0, out=o)
                if case.endswith("alloc"):
                    outs.append(x * 3.0)
            done.put(1)
    t = threading.Thread(target=worker)
    t.start()
    todo.put(1); done.get()  # eager launches from the thread
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s):
        g.capture_begin(capture_error_mode="relaxed" if "relaxed" in case else "global")
        todo.put(1); done.get()
        g.capture_end()
    todo.put(None); t.join()
    torch.cuda.current_stream().wait_stream(s)
    g.replay()
    keep.append((g, o, outs))
elif case == "bwd_big_grads":  # 4 x 4096^2 linear: 256 MB of gradients allocated in the capture
    capture_training(chain(4, 4096), torch.randn(64, 4096, device=dev))
elif case == "bwd_many_nodes":  # 300 linear + tanh: ~2,000 nodes, small gradients
    capture_training(chain(300, 64), torch.randn(64, 64, device=dev))
elif case == "bwd_many_nodes_big_grads":
    capture_training(chain(300, 512), torch.randn(64, 512, device=dev))
elif case == "fwd_many_nodes_big_alloc":  # the same forward, no backward, its outputs allocated in the capture
    model = chain(300, 512)
    inp = torch.randn(64, 512, device=dev)
    with torch.no_grad():
        model(inp)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = model(inp)
    g.replay()
    keep.append((g, model, inp, out))
elif case in ("thread_alloc", "thread_kernels", "thread_kernels_global"):  # a second host thread launches into it
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    outs = []

    def other_thread():
        with torch.cuda.stream(s):
            if case == "thread_alloc":
                outs.append(torch.ones(64 << 20, device=dev))
            else:
                o = torch.empty_like(x)
                for _ in range(200):
                    torch.mul(x, 2.0, out=o)
                outs.append(o)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s):
        g.capture_begin(capture_error_mode="global" if case.endswith("global") else "relaxed")
        t = threading.Thread(target=other_thread)
        t.start(); t.join()
        g.capture_end()
    torch.cuda.current_stream().wait_stream(s)
    g.replay()
    keep.append((g, outs))
else:
    raise SystemExit(f"unknown case {case}")
torch.cuda.synchronize()
if late:
    probe = capture_probe()
after = probe_us()
print("RESULT", json.dumps({"case": case, "before_us": before, "after_us": after, "again_us": probe_us()}), flush=True)
