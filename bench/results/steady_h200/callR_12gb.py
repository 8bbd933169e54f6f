"""call R: the emulated 12 GB card, 1 image: is the slow style (x2.26, calls P, Q) the plan switch after the fast
plan's capture ran out, or the decoder-checkpointed plan itself? Explicit plan vs auto, one process."""
import json, logging, time, torch
from stylemamba.experiments.bench import build_full_models
from stylemamba.train import TrainConfig, train_style
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
dev = torch.device("cuda", 0)
m = build_full_models(dev, with_clip=False)
photo = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
total = torch.cuda.get_device_properties(dev).total_memory
out = []
for cap, plan in ((None, "auto"), (12, "micro_batch=1,checkpointing=on"), (12, "auto"), (None, "micro_batch=1,checkpointing=on")):
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.0 if cap is None else cap * 1e9 / total, dev)
    for i in range(3):
        t = time.perf_counter()
        r = train_style(m.vae, m.siglip, photo, f"style {i}", TrainConfig(memory_plan=plan), lpips=m.lpips, device=dev)
        rec = {"cap": cap, "plan": plan, "s": round(time.perf_counter() - t, 3), "ran": r.style.metadata["memory_plan"].get("checkpointing"),
               **{k: round(v, 4) for k, v in r.phases.items()}}
        print(json.dumps(rec), flush=True)
