"""The Stylize node's per-call overhead against the library's forward, side by side (tiny models, CPU):
    python bench/node_overhead_cpu.py
Found a gc.collect() per call (~256 ms here): node 355 ms vs library 108 ms before its removal, 84.9 vs 84.1 ms
after (256 px, medians of 7 interleaved calls). The GPU version of this comparison is in bench/gpu_nodes.py."""
import gc, importlib, importlib.util, sys, time, statistics
from pathlib import Path
import torch
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
spec = importlib.util.spec_from_file_location("smpack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
pack = importlib.util.module_from_spec(spec); sys.modules["smpack"] = pack; spec.loader.exec_module(pack)
M = pack.NODE_CLASS_MAPPINGS
from smpack.stylemamba.testing.tiny_models import build_tiny_models
from smpack.stylemamba.vae import load_vae
from smpack.stylemamba.encoders import load_text_image_encoder
from smpack.stylemamba.train import train_style
from smpack.stylemamba.style_model import StyleModel
from smpack.stylemamba.stylize import stylize, stylize_images
from small import small_config
from diffusers import AutoencoderKL
paths = build_tiny_models(Path("/tmp/stylemamba_node_overhead_models"))
vae = load_vae(paths["vae"]); text = load_text_image_encoder(paths["siglip"])
photo = torch.rand(1, 3, 64, 64)
style = train_style(vae, text, photo, "sketch", small_config(epochs=1)).style
class FakeComfyVAE:
    def __init__(self, m): self.first_stage_model = m
ae = AutoencoderKL.from_pretrained(str(paths["vae"])).eval()
cvae = FakeComfyVAE(ae)
ch = importlib.import_module("smpack.nodes.comfy_helpers")
sdvae = ch.prepare_vae(cvae)
model = StyleModel.from_styles(sdvae, [style])
img = torch.rand(1, 256, 256, 3)
x = img.permute(0, 3, 1, 2).contiguous()
calls = {"node": lambda: M["StyleMambaStylize"]().stylize(style, cvae, img, 1.0, 1024, 1)[0],
         "library stylize": lambda: stylize(x, sdvae, model),
         "library stylize_images": lambda: stylize_images(x, sdvae, model, tile_size=1024, batch_size=1),
         "gc.collect": gc.collect}
for fn in calls.values(): fn(); fn()
t = {k: [] for k in calls}
for _ in range(7):
    for k, fn in calls.items():
        t0 = time.perf_counter(); fn(); t[k].append((time.perf_counter() - t0) * 1e3)
for k, v in t.items(): print(f"{k:24s} {statistics.median(v):8.2f} ms")
import cProfile, pstats
pr = cProfile.Profile(); pr.enable()
for _ in range(3): calls["node"]()
pr.disable(); pstats.Stats(pr).sort_stats("cumulative").print_stats(18)
