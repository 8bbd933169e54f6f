"""call AR: does the Train node's progress report (loss text every step, a 512 px preview image every step, JPEG
encoded as ComfyUI's server does) stall the graphed steps? The default recipe in one process, styles in one
workspace, with on_step: none / text only / text + preview as the node sends it; the step median (host-visible,
result.phases) and the time per style, side by side."""
import io, json, logging, statistics, sys, time
import torch
from stylemamba.experiments.bench import build_full_models, content_images
from stylemamba.train import TrainConfig, TrainingWorkspace, train_style
logging.basicConfig(level=logging.WARNING)
dev = torch.device("cuda", 0)
m = build_full_models(dev, with_clip=False)
x = content_images(1, 512, dev)

def to_pil(image):  # nodes.comfy_helpers.tensor_to_pil
    from PIL import Image
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype("uint8")
    return Image.fromarray(arr)

def text_only(info):
    ", ".join(f"{k} {v:.3g}" for k, v in info.losses.items())

def with_preview(info):
    text_only(info)
    if info.preview is not None:
        buf = io.BytesIO(); to_pil(info.preview).save(buf, format="JPEG", quality=95)

out = {}
for name, cb, every in [("none", None, 0), ("text", text_only, 0), ("preview_every_step", with_preview, 1),
                        ("preview_every_5", with_preview, 5), ("none_again", None, 0)]:
    cfg = TrainConfig(preview_every=every)
    ws = TrainingWorkspace()
    times, medians = [], []
    for i in range(4):
        torch.cuda.synchronize(); t = time.perf_counter()
        r = train_style(m.vae, m.siglip, x, f"style {i}", cfg, vgg=m.vgg, lpips=m.lpips, device=dev, workspace=ws,
                        on_step=cb)
        torch.cuda.synchronize(); times.append(time.perf_counter() - t)
        medians.append(r.phases.get("median_step") if hasattr(r, "phases") else None)
    ws.release()
    out[name] = {"styles_s": [round(v, 3) for v in times], "median_step_ms": [round(v * 1e3, 1) for v in medians if v]}
    print("RESULT", name, json.dumps(out[name]), flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
