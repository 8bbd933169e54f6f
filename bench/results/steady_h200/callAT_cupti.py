"""call AT: is the tiny run's x1.14 (later trainers of a process, callAH-AL) the profiler's doing? Kineto leaves
CUPTI subscribed after a torch.profiler session unless TEARDOWN_CUPTI=1 (pytorch/pytorch#144455), which slows
what runs after it. New tiny graphed trainers one after another in this process; with argv[1] == "prof" the
first trainer's kernels are profiled (as bench's kernel_time_ms does) before the next trainers are timed."""
import copy, json, os, statistics, sys, torch
from stylemamba.experiments import bench as B
from stylemamba.train import StyleTrainer
mode = sys.argv[1]
dev = torch.device("cuda", 0)
m = B.build_tiny_bench_models(dev)
sizes = B.Sizes(True)
out = {"mode": mode, "TEARDOWN_CUPTI": os.environ.get("TEARDOWN_CUPTI"), "cuda": torch.version.cuda,
       "torch": torch.__version__, "trainers": []}
for i in range(3):
    cfg = sizes.train_config("mamba", "off", "on")
    tr = StyleTrainer(m.vae, m.siglip, B.content_images(1, sizes.train, dev), B.PROMPT, copy.deepcopy(cfg),
                      vgg=m.vgg, lpips=m.lpips, device=dev)
    counter = [0]
    def one_step():
        e = counter[0] % cfg.epochs
        counter[0] += 1
        tr.step(e, keep_output=False)
        tr.end_epoch()
    t = B.time_device(one_step, dev, warmup=B.STEP_WARMUP, repeat=30)
    row = {"trainer": i + 1, "step_ms": round(statistics.median(t), 3), "graphed": tr.graphs is not None}
    if mode == "prof" and i == 0:
        row["kernel_ms"] = B.kernel_time_ms(one_step, dev)
    out["trainers"].append(row)
    print("RESULT", json.dumps(row), flush=True)
out["kernel_ms_last_trainer"] = B.kernel_time_ms(one_step, dev)  # after every timing: the GPU time to compare with
print("RESULT", json.dumps(out), flush=True)
