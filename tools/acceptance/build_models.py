"""Acceptance models dir for ComfyUI: tiny SigLIP/CLIP, full-size random SD VAE, random full-size VGG19/VGG16, inputs."""
import shutil, sys
from pathlib import Path
import numpy as np, torch
from PIL import Image
B = Path("/tmp/sm-accept/build"); M = Path("/tmp/sm-models"); I = Path("/tmp/sm-accept/input")
for d in ("siglip", "vae", "perceptual", "stylemamba"): (M / d).mkdir(parents=True, exist_ok=True)
for src, name in (("siglip", "tiny-siglip"), ("clip", "tiny-clip")):
    if not (M / "siglip" / name).exists(): shutil.copytree(B / src, M / "siglip" / name)
shutil.copy(B / "sd_vae_random_ldm.safetensors", M / "vae" / "sd-vae-random.safetensors")
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
print(sorted(str(p.relative_to(M)) for p in M.rglob("*") if p.is_file())[:40])
print(sorted(str(p.relative_to(I)) for p in I.rglob("*") if p.is_file()))
