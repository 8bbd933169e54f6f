"""call BM: do later styles trained in the first trainer's workspace (StyleTrainer.restart: the same graphs replayed,
what the Train node does on a GPU) keep the first trainer's step time, which every later fresh trainer of a process
loses (x1.17 on an H100, callBJ/BL)? One process: a fresh trainer, two restarts of it, then a fresh trainer."""
import copy, json, statistics, torch
from stylemamba.experiments import bench as B
from stylemamba.train import StyleTrainer

dev = torch.device("cuda", 0)
m = B.build_tiny_bench_models(dev)
sizes = B.Sizes(True)
cfg = sizes.train_config("mamba", "off", "on")
content = B.content_images(1, sizes.train, dev)


def timed(tr, label):
    counter = [0]

    def one_step():
        tr.step(counter[0] % cfg.epochs, keep_output=False)
        tr.end_epoch()
        counter[0] += 1
    for _ in range(4):
        one_step()
    t = B.time_device(one_step, dev, warmup=2, repeat=30)
    print("RESULT", json.dumps({"trainer": label, "graphed": tr.graphs is not None, "graphs": len(tr.graphs or ()),
                                "step_ms": round(statistics.median(t), 3)}), flush=True)


first = StyleTrainer(m.vae, m.siglip, content, B.PROMPT, copy.deepcopy(cfg), vgg=m.vgg, lpips=m.lpips, device=dev)
timed(first, "fresh 1")
for prompt in ("a watercolor painting", "a pencil sketch"):
    first.record_restart_step()
    first.restart(content, prompt, copy.deepcopy(cfg))
    timed(first, f"restart ({prompt})")
second = StyleTrainer(m.vae, m.siglip, content, B.PROMPT, copy.deepcopy(cfg), vgg=m.vgg, lpips=m.lpips, device=dev)
timed(second, "fresh 2")
first.record_restart_step()
first.restart(content, "an oil painting", copy.deepcopy(cfg))
timed(first, "restart of fresh 1 after fresh 2")
