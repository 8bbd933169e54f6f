"""call AY: where a new style's Stylize node time goes (0.40-0.46 s in a new-style prompt, 0.18 s cached, callAX):
StyleModel.from_styles for a style just packaged by to_style, full SD VAE on the GPU, split into the decoder copy
(make_decoder) and the decoder delta's way to the GPU (_add_deltas: a pageable copy per tensor), against one
pageable copy of the delta's one host buffer and one copy through a pinned staging buffer; alone and beside a
busy Python thread (ComfyUI's server)."""
import json, statistics, sys, threading, time, torch
from diffusers import AutoencoderKL
from stylemamba.fusion import FusionConfig
from stylemamba.style_model import StyleModel, _add_deltas
from stylemamba.testing.tiny_models import sd_vae_config
from stylemamba.vae import SDVAE
from stylemamba.vae_layout import from_ldm
dev = torch.device("cuda", 0)
with torch.device(dev):
    vae = SDVAE.from_diffusers(AutoencoderKL(**sd_vae_config()), name="random")
model = StyleModel.for_training(vae, FusionConfig(), torch.randn(768, device=dev))
with torch.no_grad():
    for p in model.decoder.parameters():
        p.add_(1e-3)
style = model.to_style()
storages = {t.untyped_storage().data_ptr() for t in style.decoder_delta.values()}
x = torch.rand(1, 3, 512, 512, device=dev)

def sync():
    torch.cuda.synchronize()

def build():
    return StyleModel.from_styles(vae, [style])

def copy_decoder():
    return vae.make_decoder().eval().requires_grad_(False)

def deltas_per_tensor(dec):
    _add_deltas(dec, [style], [1.0], 1.0)

def deltas_one_buffer(dec, pinned):
    state = dec.state_dict()
    delta = from_ldm(style.decoder_delta, state)
    keys = list(state)
    sizes = [delta[k].numel() for k in keys]
    host = torch.cat([delta[k].reshape(-1) for k in keys]) if not pinned else None
    if pinned:
        host = torch.empty(sum(sizes), dtype=torch.float32, pin_memory=True)
        torch.cat([delta[k].reshape(-1) for k in keys], out=host)
    flat = host.to(dev, non_blocking=pinned)
    with torch.no_grad():
        for k, part in zip(keys, flat.split(sizes)):
            state[k].add_(part.view(state[k].shape))

def forward(m):
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        return m.decoder(m.fuse(vae.encode(x)))

def timed(fn, n=7):
    times = []
    for _ in range(n):
        sync(); t0 = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t0)
    return round(statistics.median(times[1:]) * 1e3, 1)

res = {"delta_host_storages": len(storages), "delta_bytes": sum(t.numel() * 4 for t in style.decoder_delta.values())}
ref = build()
for label in ("alone", "busy_thread"):
    stop = [False]
    th = None
    if label == "busy_thread":
        def busy():
            n = 0
            while not stop[0]:
                n += 1
        th = threading.Thread(target=busy, daemon=True); th.start()
    row = {"from_styles": timed(build), "make_decoder": timed(copy_decoder)}
    dec = copy_decoder()
    row["add_deltas_per_tensor"] = timed(lambda: deltas_per_tensor(dec))
    row["add_deltas_one_pageable"] = timed(lambda: deltas_one_buffer(dec, False))
    row["add_deltas_one_pinned"] = timed(lambda: deltas_one_buffer(dec, True))
    row["forward_512"] = timed(lambda: forward(ref))
    stop[0] = True
    if th is not None:
        th.join()
    res[label] = row
    print("RESULT", label, json.dumps(row), flush=True)
a, b = copy_decoder(), copy_decoder()
deltas_per_tensor(a); deltas_one_buffer(b, True)
res["one_buffer_equal"] = all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
print("RESULT", json.dumps(res), flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
