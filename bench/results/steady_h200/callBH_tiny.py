"""call BH: three tiny graphed trainers in one process, each timed; argv[1] "own" (each trainer's CapturedCalls opens
its own memory pool, as now) or "shared" (all share one pool handle made at start). If a capture allocating in a
second pool is what slows every replay (callBG), "shared" keeps later trainers as fast as the first."""
import copy, json, statistics, sys, torch
from stylemamba import cuda_graphs
from stylemamba.experiments import bench as B
from stylemamba.train import StyleTrainer

dev = torch.device("cuda", 0)
mode = sys.argv[1]
if mode == "shared":
    shared = torch.cuda.graph_pool_handle()
    _init = cuda_graphs.CapturedCalls.__init__

    def init(self, *a, **k):
        _init(self, *a, **k)
        self._pool = shared
    cuda_graphs.CapturedCalls.__init__ = init
if mode == "nocudnn":  # callBL: the probe stays fast when the trainer's captured backward uses no cuDNN
    torch.backends.cudnn.enabled = False
    torch.backends.cuda.enable_cudnn_sdp(False)
if mode == "warmcudnn":  # callBL: cuDNN's conv and attention backward once on the autograd thread, before any trainer
    bf = dict(device=dev, dtype=torch.bfloat16)
    c = torch.nn.Conv2d(32, 32, 3, padding=1).to(**bf)
    q = torch.randn(1, 2, 64, 32, **bf, requires_grad=True)
    (c(torch.randn(1, 32, 16, 16, **bf)).float().sum() +
     torch.nn.functional.scaled_dot_product_attention(q, q, q).float().sum()).backward()
    torch.cuda.synchronize()
m = B.build_tiny_bench_models(dev)
sizes = B.Sizes(True)
rows = []
for i in (1, 2, 3):
    cfg = sizes.train_config("mamba", "off", "on")
    tr = StyleTrainer(m.vae, m.siglip, B.content_images(1, sizes.train, dev), B.PROMPT, copy.deepcopy(cfg),
                      vgg=m.vgg, lpips=m.lpips, device=dev)
    counter, first = [0], []

    def one_step():
        terms, _ = tr.step(counter[0] % cfg.epochs, keep_output=False)
        if not first:
            first.append({k: round(float(v), 5) for k, v in terms.items()})
        tr.end_epoch()
        counter[0] += 1
    for _ in range(4):
        one_step()
    t = B.time_device(one_step, dev, warmup=2, repeat=30)
    rows.append({"mode": mode, "trainer": i, "graphed": tr.graphs is not None, "step_ms": round(statistics.median(t), 3),
                 "losses_first_step": first[0]})
    print("RESULT", json.dumps(rows[-1]), flush=True)
