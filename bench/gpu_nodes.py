"""Not yet run on a GPU (no device time was left); SMOKE=1 runs it on the CPU (its times mean nothing there).
GPU check of the StyleMamba ComfyUI node functions (no ComfyUI on that machine): the paper recipe through
the Train node twice (memory must return to the baseline: a second queue must not run out of memory), then
Stylize at 1024, 2048 (tiled) and a 16-frame batch. Full-size architectures, random weights."""
import importlib.util, json, os, sys, time
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parents[1]  # the pack root
os.environ["STYLEMAMBA_MODELS_DIR"] = "/tmp/smmodels"
spec = importlib.util.spec_from_file_location("smpack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
pack = importlib.util.module_from_spec(spec); sys.modules["smpack"] = pack; spec.loader.exec_module(pack)
M = pack.NODE_CLASS_MAPPINGS
bench = importlib.import_module("smpack.stylemamba.experiments.bench")
common = importlib.import_module("smpack.nodes.common")
from diffusers import AutoencoderKL
from smpack.stylemamba.testing.tiny_models import sd_vae_config
SMOKE = os.environ.get("SMOKE") == "1"
dev = torch.device("cpu" if SMOKE else "cuda")
if SMOKE:
    for f in ("synchronize", "empty_cache", "reset_peak_memory_stats"): setattr(torch.cuda, f, lambda *a, **k: None)
    for f in ("memory_allocated", "max_memory_allocated", "memory_reserved"): setattr(torch.cuda, f, lambda *a, **k: 0)
    torch.cuda.get_device_name = lambda *a: "cpu"
out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
GB = 1 / 2**30

class FakeComfyVAE:
    def __init__(self, m): self.first_stage_model = m

t0 = time.time()
models = bench.build_full_models(dev, with_clip=False)
with torch.inference_mode():  # as ComfyUI loads its VAE: bf16 on the GPU, inference tensors
    torch.manual_seed(0)
    ae = AutoencoderKL(**sd_vae_config()).to(dev, torch.bfloat16).eval()
vae = FakeComfyVAE(ae)
text = models.siglip.to("cpu")
nets = common.PerceptualNets(models.vgg.cpu(), models.lpips.cpu(), {"vgg": "vgg19 (random)", "lpips": "vgg16 (random)"})
del models
torch.cuda.synchronize(); torch.cuda.empty_cache()
out["build_s"] = round(time.time() - t0, 1)
import skimage.data
photo = torch.from_numpy(skimage.data.astronaut()).float()[None] / 255.0  # (1,512,512,3) ComfyUI layout
req = M["StyleMambaTrain"].INPUT_TYPES()["required"]
recipe = {k: v[1]["default"] for k, v in req.items() if k not in ("vae", "text_model", "conditioning", "images")}
if SMOKE:
    recipe.update(epochs=1, resolution=64, n_crops=2)
out["recipe"] = recipe
base = torch.cuda.memory_allocated()
out["baseline_allocated_GiB"] = round(base * GB, 3)
with torch.inference_mode():
    cond = M["StyleMambaTextConditioning"]().encode(text, "Van Gogh's starry night", "a plain photo")[0]
    runs = []
    for seed in (0, 1):
        torch.cuda.reset_peak_memory_stats(); t = time.time()
        style, curve = M["StyleMambaTrain"]().train(vae, text, cond, photo, **dict(recipe, seed=seed), perceptual=nets)
        runs.append({"seconds": round(time.time() - t, 2), "train_seconds": style.metadata["train_seconds"],
                     "peak_GiB": round(torch.cuda.max_memory_allocated() * GB, 2),
                     "allocated_after_minus_baseline_MiB": round((torch.cuda.memory_allocated() - base) / 2**20, 1),
                     "reserved_after_GiB": round(torch.cuda.memory_reserved() * GB, 2),
                     "final_losses": style.metadata["final_losses"], "skipped": style.metadata["losses_skipped"],
                     "curve": list(curve.shape), "text_model_device": str(text.device)})
    out["train_runs"] = runs
    st = []
    cases = (("1024x1024", torch.rand(1, 1024, 1024, 3), 1024, 1),
             ("2048x2048 tiled 1024", torch.rand(1, 2048, 2048, 3), 1024, 1),
                                 ("16 frames 512x512", photo.repeat(16, 1, 1, 1), 1024, 4))
    if SMOKE:
        cases = (("tiled", torch.rand(1, 64, 300, 3), 256, 1),)
    for name, imgs, tile, bs in cases:
        torch.cuda.reset_peak_memory_stats(); torch.cuda.synchronize(); t = time.time()
        y = M["StyleMambaStylize"]().stylize(style, vae, imgs, 1.0, tile, bs)[0]
        torch.cuda.synchronize()
        st.append({"case": name, "seconds": round(time.time() - t, 2), "out": list(y.shape),
                   "finite": bool(torch.isfinite(y).all()), "peak_GiB": round(torch.cuda.max_memory_allocated() * GB, 2),
                   "allocated_after_minus_baseline_MiB": round((torch.cuda.memory_allocated() - base) / 2**20, 1)})
    out["stylize"] = st
    # the target: the Stylize node on one 512 image within 1.2x of the library's forward pass on the
    # same style and VAE (both warm, side by side, medians; the node's cache keeps the built decoder)
    from smpack.stylemamba.style_model import StyleModel
    from smpack.stylemamba.stylize import stylize as library_stylize
    sdvae = importlib.import_module("smpack.nodes.comfy_helpers").prepare_vae(vae)
    model = StyleModel.from_styles(sdvae, [style])
    one = photo if not SMOKE else torch.rand(1, 64, 64, 3)
    calls = {"node": lambda: M["StyleMambaStylize"]().stylize(style, vae, one, 1.0, 1024, 1)[0],
             "library": lambda: library_stylize(one.permute(0, 3, 1, 2).to(dev), sdvae, model)}
    times = {k: [] for k in calls}
    for _ in range(2):  # warm-up
        for fn in calls.values():
            fn()
    for _ in range(3 if SMOKE else 15):  # interleaved: the same conditions for both
        for k, fn in calls.items():
            torch.cuda.synchronize(); t = time.perf_counter(); fn(); torch.cuda.synchronize()
            times[k].append((time.perf_counter() - t) * 1e3)
    med = {k: round(sorted(v)[len(v) // 2], 2) for k, v in times.items()}
    out["stylize_one_image_ms"] = {**med, "node_over_library": round(med["node"] / med["library"], 3),
                                   "size": list(one.shape)}
print(json.dumps(out, indent=1))
Path(os.environ.get("OUT", "/tmp")).joinpath("gpu_nodes.json").write_text(json.dumps(out, indent=1))
