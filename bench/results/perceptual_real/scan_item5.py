"""Item 5 scan (docs/METHOD_CHOICES.md): VGG / LPIPS content weights with the real VGG16 (stylemamba.testing.real_backbones), red and sketch, held-out figures.

Run from the repository root: PYTHONPATH=. python bench/results/perceptual_real/scan_item5.py 0,1 OUT.json
"""
import json, sys, time
from stylemamba.testing.proof import Proof, ProofConfig
seeds = [int(a) for a in sys.argv[1].split(',')]; out = sys.argv[2]
from stylemamba.experiments.metrics import ssim
res = []

V = [("default (vgg 9000->150, lpips 150)", {}),
     ("vgg off", dict(vgg_weight_start=0.0, vgg_weight_end=0.0)),
     ("vgg x1/3000", dict(vgg_weight_start=3.0, vgg_weight_end=0.05)),
     ("vgg x1/30000", dict(vgg_weight_start=0.3, vgg_weight_end=0.005)),
     ("vgg off, lpips off", dict(vgg_weight_start=0.0, vgg_weight_end=0.0, lpips=0.0))]
for seed in seeds:
 p = Proof(ProofConfig(seed=seed, perceptual="real")); print("VAE reconstruction vs photo SSIM", float(ssim(p.held_out, p.base_held_out).mean()), flush=True)
 for prompt in ("red", "a pencil sketch"):
    for name, kw in V:
        t = time.time()
        y = p.apply(p.train(prompt, **kw)); f = p.figures(prompt, y); f["ssim_photo"] = float(ssim(p.held_out, y).mean())
        res.append(dict(seed=seed, prompt=prompt, variant=name, **f, seconds=time.time() - t))
        print(f"{seed} {prompt:16s} {name:36s} cos {f['cos']:+.2f} property {f['property']:+.3f} SSIM {f['ssim']:.3f} vs photo {f['ssim_photo']:.3f} ({time.time()-t:.0f} s)", flush=True)
        json.dump(res, open(out, "w"), indent=1)
