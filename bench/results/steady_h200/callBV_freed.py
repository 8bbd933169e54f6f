"""call BV: is the slow mode entered only while two graphs exist at once? A step graph fed by autograd's thread
after a side-stream warm-up (callBT "side"), then (FREE=1) destroyed, then a second graph captured: is the second
fast? And the tiny trainers: the first freed (graphs, pool, trainer) before the second is built. argv[1]: plain or
trainers; FREE=1 frees before the next capture."""
import copy, gc, json, os, statistics, sys, torch

free = bool(os.environ.get("FREE"))
x = torch.randn(64, 256, device="cuda")
outs = [torch.empty_like(x) for _ in range(1600)]


def chain():
    h = x
    for i, o in enumerate(outs):
        torch.add(h, 0.5, out=o) if i % 2 == 0 else torch.mul(h, 1.0001, out=o)
        h = o


def replay_us(graph):
    times = []
    for _ in range(100):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); graph.replay(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return round(statistics.median(times), 1)


def drop(*objs):
    del objs
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


if sys.argv[1] == "plain":
    layer = torch.nn.Linear(256, 256).cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        layer(x).square().mean().backward()
    torch.cuda.current_stream().wait_stream(side)
    step = torch.cuda.CUDAGraph()
    with torch.cuda.graph(step):
        layer(x).square().mean().backward()
    step.replay()
    torch.cuda.synchronize()
    if free:
        step.reset()
        step = None
        drop()
    chain()
    torch.cuda.synchronize()
    probe = torch.cuda.CUDAGraph()
    with torch.cuda.graph(probe):
        chain()
    print("RESULT", json.dumps({"case": "plain", "free": free, "second_graph_us": replay_us(probe)}), flush=True)
else:
    from stylemamba.experiments import bench as B
    from stylemamba.train import StyleTrainer
    dev = torch.device("cuda", 0)
    m = B.build_tiny_bench_models(dev)
    sizes = B.Sizes(True)
    cfg = sizes.train_config("mamba", "off", "on")
    content = B.content_images(1, sizes.train, dev)

    def trainer_ms():
        tr = StyleTrainer(m.vae, m.siglip, content, B.PROMPT, copy.deepcopy(cfg), vgg=m.vgg, lpips=m.lpips,
                          device=dev)
        counter = [0]

        def one_step():
            tr.step(counter[0] % cfg.epochs, keep_output=False)
            tr.end_epoch()
            counter[0] += 1
        for _ in range(4):
            one_step()
        return tr, round(statistics.median(B.time_device(one_step, dev, warmup=2, repeat=30)), 3)
    kept = []
    for i in range(3):
        tr, ms = trainer_ms()
        print("RESULT", json.dumps({"case": "trainers", "free": free, "trainer": i + 1, "step_ms": ms}), flush=True)
        if free:
            for g, _ in tr.graphs._graphs.values():
                g.reset()
            tr.graphs = None
            tr = None
            drop()
        else:
            kept.append(tr)
