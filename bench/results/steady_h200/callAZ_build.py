"""call AZ: a new style's StyleModel.from_styles after the one-copy decoder delta (callAY: 125.2 ms, its delta a
copy per tensor 43.5 ms), full SD VAE on the GPU, alone; the same with the per-tensor path, side by side."""
import functools, json, statistics, time, torch
from diffusers import AutoencoderKL
from stylemamba import style_model as SM
from stylemamba.fusion import FusionConfig
from stylemamba.testing.tiny_models import sd_vae_config
from stylemamba.vae import SDVAE
dev = torch.device("cuda", 0)
with torch.device(dev):
    vae = SDVAE.from_diffusers(AutoencoderKL(**sd_vae_config()), name="random")
model = SM.StyleModel.for_training(vae, FusionConfig(), torch.randn(768, device=dev))
with torch.no_grad():
    for p in model.decoder.parameters():
        p.add_(1e-3)
style = model.to_style()
original = SM._add_deltas

def timed(fn, n=9):
    times = []
    for _ in range(n):
        torch.cuda.synchronize(); t0 = time.perf_counter(); fn(); torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times[1:]) * 1e3, 1)

res = {}
for label, one_buffer in (("per_tensor", False), ("one_copy", True), ("per_tensor_again", False), ("one_copy_again", True)):
    SM._add_deltas = functools.partial(original, one_buffer=one_buffer)
    res[label] = timed(lambda: SM.StyleModel.from_styles(vae, [style]))
SM._add_deltas = original
res["make_decoder"] = timed(lambda: vae.make_decoder().eval().requires_grad_(False))
print("RESULT", json.dumps(res), flush=True)
