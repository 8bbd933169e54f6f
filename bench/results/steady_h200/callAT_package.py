"""call AT: packaging a trained style (StyleModel.to_style) with the full-size SD decoder on the GPU: one
device-to-host copy per tensor (the code before this call) against one per device (now), side by side, alone and
with a second Python thread busy (a ComfyUI server thread holding the GIL between our GPU waits)."""
import json, statistics, sys, threading, time, torch
from diffusers import AutoencoderKL
from stylemamba.fusion import FusionConfig
from stylemamba.style_file import Style
from stylemamba.style_model import StyleModel
from stylemamba.testing.tiny_models import sd_vae_config
from stylemamba.vae import SDVAE, decoder_state
from stylemamba.vae_layout import to_ldm
dev = torch.device("cuda", 0) if len(sys.argv) < 3 else torch.device(sys.argv[2])
with torch.device(dev):
    vae = SDVAE.from_diffusers(AutoencoderKL(**sd_vae_config()), name="random")
model = StyleModel.for_training(vae, FusionConfig(), torch.randn(768, device=dev))
with torch.no_grad():
    for p in model.decoder.parameters():
        p.add_(1e-3)

def per_tensor():  # the packaging before this call
    base = decoder_state(vae.decoder, vae.post_quant_conv)
    trained = model.decoder.state_dict()
    delta = to_ldm({k: (trained[k].detach().float() - base[k].detach().float().to(trained[k].device)).cpu()
                    for k in trained})
    state = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in model.fusion.state_dict().items()}
    return Style(model.fusion.config.to_dict(), state, delta, model.embedding(0).detach().to("cpu", torch.float32,
                 copy=True), {})

def one_copy():
    return model.to_style()

a, b = per_tensor(), one_copy()
same = all(torch.equal(a.decoder_delta[k], b.decoder_delta[k]) for k in a.decoder_delta) and all(
    torch.equal(a.fusion_state[k], b.fusion_state[k]) for k in a.fusion_state)
stop = [False]
def busy():
    x = 0
    while not stop[0]:
        x += 1
res = {"same_tensors": same, "tensors": len(a.decoder_delta) + len(a.fusion_state) + 1,
       "bytes": sum(t.numel() * 4 for t in a.decoder_delta.values())}
for label in ("alone", "busy_thread"):
    th = None
    if label == "busy_thread":
        th = threading.Thread(target=busy, daemon=True)
        th.start()
    times = {"per_tensor": [], "one_copy": []}
    for _ in range(7):
        for name, fn in (("per_tensor", per_tensor), ("one_copy", one_copy)):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    stop[0] = True
    if th is not None:
        th.join()
    res[label] = {k: round(statistics.median(v[1:]) * 1e3, 1) for k, v in times.items()}
    print("RESULT", label, json.dumps(res[label]), flush=True)
print("RESULT", json.dumps(res), flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
