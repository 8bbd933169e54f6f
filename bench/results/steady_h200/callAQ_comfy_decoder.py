"""call AQ: why a step inside ComfyUI is slower than the library's. In ONE process (run after run_comfy_gpu.sh, which
leaves ComfyUI's source, its wheels and the random-weight SD VAE in LDM layout under /tmp/sm-comfy): the default
recipe trained with ComfyUI's VAE (comfy.sd.VAE, wrapped as the Train node does: nodes.comfy_helpers.prepare_vae)
and with the library's diffusers VAE, side by side: step median, its kernels' GPU time, and the kernels whose time
differs most."""
import importlib.util, json, logging, statistics, sys, time
from pathlib import Path
import torch
WORK = Path("/tmp/sm-comfy")
ROOT = Path.cwd()
OUT_JSON = sys.argv[1]
sys.argv = ["main.py"]  # ComfyUI parses the command line: its defaults
sys.path.insert(0, str(WORK / "ComfyUI"))
import comfy.options
comfy.options.enable_args_parsing()
import comfy.sd, comfy.utils
spec = importlib.util.spec_from_file_location("smpack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
pack = importlib.util.module_from_spec(spec); sys.modules["smpack"] = pack; spec.loader.exec_module(pack)
from smpack.nodes.comfy_helpers import prepare_vae
from smpack.stylemamba.experiments.bench import build_full_models, content_images, kernel_time_ms, kernel_groups, time_device
from smpack.stylemamba.train import TrainConfig, TrainingWorkspace, train_style
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)
for n in ("httpx", "urllib3", "filelock", "torch"): logging.getLogger(n).setLevel(logging.WARNING)
dev = torch.device("cuda", 0)
m = build_full_models(dev, with_clip=False)
cvae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(WORK / "models/vae/sd-vae-ft-mse-random.safetensors")))
vaes = {"comfy": prepare_vae(cvae), "diffusers": m.vae}
print("comfy VAE dtype", next(cvae.first_stage_model.parameters()).dtype, flush=True)
x = content_images(1, 512, dev)
out, groups = {}, {}
for name in ("comfy", "diffusers", "comfy"):
    cfg = TrainConfig(cuda_graphs="on")
    ws = TrainingWorkspace()
    times = []
    for i in range(3):
        torch.cuda.synchronize(); t = time.perf_counter()
        train_style(vaes[name], m.siglip, x, f"style {i}", cfg, vgg=m.vgg, lpips=m.lpips, device=dev, workspace=ws)
        torch.cuda.synchronize(); times.append(time.perf_counter() - t)
    tr = ws._trainer
    counter = [0]
    def one_step():
        e = 1 + counter[0] % 19
        counter[0] += 1
        tr.step(e, keep_output=False)
        tr.end_epoch()
    step = statistics.median(time_device(one_step, dev, warmup=5, repeat=20))
    kern = kernel_time_ms(one_step, dev)
    groups[name] = {g["kernel"]: g for g in kernel_groups(one_step, dev, top=400)}
    key = name if name not in out else name + "_again"
    out[key] = {"styles_s": [round(v, 3) for v in times], "step_ms": round(step, 2), "kernel_ms": kern,
                "step_over_kernels": round(step / kern, 3) if kern else None, "graphs": tr.graphs is not None}
    print("RESULT", key, json.dumps(out[key]), flush=True)
    ws.release()
names = set(groups["comfy"]) | set(groups["diffusers"])
diff = sorted(((groups["comfy"].get(k, {}).get("ms", 0.0) - groups["diffusers"].get(k, {}).get("ms", 0.0), k) for k in names),
              key=lambda d: -abs(d[0]))
out["kernel_diffs_ms"] = [{"kernel": k, "comfy_minus_diffusers_ms": round(d, 3),
                           "comfy": groups["comfy"].get(k), "diffusers": groups["diffusers"].get(k)} for d, k in diff[:30]]
for row in out["kernel_diffs_ms"][:20]:
    c, d = row["comfy"] or {}, row["diffusers"] or {}
    print(f"DIFF {row['comfy_minus_diffusers_ms']:+8.3f} ms  comfy {c.get('ms', 0):7.3f}/{c.get('calls', 0):4d}  diffusers {d.get('ms', 0):7.3f}/{d.get('calls', 0):4d}  {row['kernel'][:100]}")
json.dump(out, open(OUT_JSON, "w"), indent=1)
