"""Acceptance models dir for ComfyUI: tiny SigLIP/CLIP, full-size random SD VAE, random full-size VGG19/VGG16, inputs,
and a tiny universal model (stylemamba/StyleMamba_universal.safetensors: train-universal with that SigLIP and VAE)."""
import filecmp, json, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
from PIL import Image
B = Path("/tmp/sm-accept/build"); M = Path("/tmp/sm-models"); I = Path("/tmp/sm-accept/input")
for d in ("siglip", "vae", "perceptual", "stylemamba"): (M / d).mkdir(parents=True, exist_ok=True)
for src, name in (("siglip", "tiny-siglip"), ("clip", "tiny-clip")):
    if not (M / "siglip" / name).exists(): shutil.copytree(B / src, M / "siglip" / name)
VAE = M / "vae" / "sd-vae-random.safetensors"
if not VAE.exists() or not filecmp.cmp(B / "sd_vae_random_ldm.safetensors", VAE, shallow=False):
    shutil.copy(B / "sd_vae_random_ldm.safetensors", VAE)  # only when changed: the universal model below follows it
import torchvision
from safetensors.torch import save_file
torch.manual_seed(0)
for arch, fname in (("vgg19", "vgg19_features.safetensors"), ("vgg16", "vgg16_features.safetensors")):
    net = getattr(torchvision.models, arch)(weights=None)
    save_file({f"features.{k}": v.contiguous() for k, v in net.features.state_dict().items()}, str(M / "perceptual" / fname))
shutil.copy(B / "vgg19_tiny.safetensors", M / "perceptual" / "vgg19_tiny.safetensors")
I.mkdir(exist_ok=True)
import skimage.data
astro = skimage.data.astronaut()
Image.fromarray(astro).save(I / "astronaut.png")
Image.fromarray(astro).resize((256, 256)).save(I / "example.png")  # the photo of the example workflows
# the style picture of workflows/universal_prompt_and_reference.json (Universal Style from a reference picture)
Image.fromarray(skimage.data.colorwheel()[..., :3]).resize((128, 128)).save(I / "reference.png")
rgba = np.dstack([astro, np.full(astro.shape[:2], 255, np.uint8)])
rgba[100:400, 150:380, 3] = 0  # painted (transparent) area = what the mask editor marks: stylise there
Image.fromarray(rgba, "RGBA").save(I / "astronaut_masked.png")
(I / "content_batch").mkdir(exist_ok=True)
for name in ("astronaut", "chelsea", "coffee", "rocket"):
    arr = getattr(skimage.data, name)()
    Image.fromarray(arr).resize((96, 72)).save(I / "content_batch" / f"{name}.png")
import av
src = Path(sys.argv[1]) if len(sys.argv) > 1 else None
if src:
    with av.open(str(src)) as inp, av.open(str(I / "bikes_short.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=10); stream.width, stream.height, stream.pix_fmt = 160, 64, "yuv420p"
        for i, frame in enumerate(inp.decode(video=0)):
            if i >= 8: break
            img = frame.to_image().resize((160, 64))
            for p in stream.encode(av.VideoFrame.from_image(img)): out.mux(p)
        for p in stream.encode(): out.mux(p)
    shutil.copy(I / "bikes_short.mp4", I / "example_video.mp4")  # the video of stylize_video_frames.json
# A tiny universal model for workflows/universal_prompt_and_reference.json, under the name that workflow loads: the
# CLI's train-universal on the CPU (4 steps of 2 pairs, 64 px, ~1-2 min) with the tiny SigLIP and the SD-size VAE
# above, so the Text Conditioning / Stylize of the small copy match it. Retrained when missing or older than the VAE.
UNI = M / "stylemamba" / "StyleMamba_universal.safetensors"
if not UNI.exists() or UNI.stat().st_mtime < VAE.stat().st_mtime:
    pack = Path(__file__).resolve().parents[2]
    (B / "universal_bank.txt").write_text("a woodblock print with flat colour areas and bold outlines\noil painting\n"
                                          "watercolor\nneon cyberpunk lights\n")
    (B / "universal_recipe.json").write_text(json.dumps({"epochs": 1, "steps_per_epoch": 4, "batch_size": 2,
                                                         "resolution": 64, "log_every": 1,
                                                         "loss": {"n_crops": 2, "crop_fraction": 0.5}}))
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="sm-universal-ck-") as ck:
        subprocess.run([sys.executable, "-m", "stylemamba", "train-universal", "--device", "cpu", "--vae", str(VAE),
                        "--text-model", str(M / "siglip" / "tiny-siglip"), "--bank", str(B / "universal_bank.txt"),
                        "--images", str(I / "content_batch"), "--config", str(B / "universal_recipe.json"),
                        "--out", str(UNI), "--overwrite", "--name", "acceptance-universal", "--checkpoint-dir", ck,
                        "--quiet"], cwd=pack, check=True)
    print(f"universal model {UNI} ({UNI.stat().st_size / 1e6:.1f} MB) trained in {time.time() - t0:.0f}s")
print(sorted(str(p.relative_to(M)) for p in M.rglob("*") if p.is_file())[:40])
print(sorted(str(p.relative_to(I)) for p in I.rglob("*") if p.is_file()))
