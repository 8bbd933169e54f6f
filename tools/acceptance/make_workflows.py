#!/usr/bin/env python3
"""Build ComfyUI-StyleMamba's example workflows IN THE REAL FRONTEND and serialise them (UI format).

    /opt/comfy-venv/bin/python make_workflows.py --pack /work/main --out /work/main/workflows \
        --small-out /tmp/sm-accept/small --models-dir /tmp/sm-models

Writes <out>/<name>.json with the paper's defaults, and <small-out>/<name>.json: the same graph with
small widget values (tiny models, 64 px, 2 epochs) for CPU acceptance runs. Both are made by the
frontend itself: nodes created with LiteGraph.createNode, widgets set by name, graph.serialize().
SHIPPED_ONLY workflows (hand-written in <pack>/workflows/) are only loaded into the frontend for their
small copy; <out> is not written for them.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, "/work/shared/tools/comfy-acceptance")
sys.dont_write_bytecode = True
import comfy_harness as H  # noqa: E402

BUILD_JS = r"""(spec) => {
  const G = window.app.graph; G.clear();
  const made = {}; const colY = {};
  const w = (n, name) => { const x = (n.widgets || []).find(w => w.name === name);
    if (!x) throw new Error(n.type + ' has no widget ' + name + ' (has ' + (n.widgets || []).map(w => w.name) + ')'); return x; };
  for (const s of spec.nodes) {
    const n = LiteGraph.createNode(s.type); if (!n) throw new Error('no node type ' + s.type);
    if (s.title) n.title = s.title;
    const x = s.col; const y = (s.y !== undefined) ? s.y : (colY[x] || 40);
    n.pos = [x, y]; G.add(n);
    for (const [k, v] of Object.entries(s.widgets || {})) w(n, k).value = v;
    if (s.text !== undefined) n.widgets[0].value = s.text;
    if (s.size) n.size = s.size;
    if (s.color) { n.color = s.color[0]; n.bgcolor = s.color[1]; }
    colY[x] = y + n.size[1] + 70;
    made[s.key] = n;
  }
  for (const [a, slot, b, input] of spec.links) {
    const r = made[a].connect(slot, made[b], input);
    if (!r) throw new Error('could not connect ' + a + '[' + slot + '] -> ' + b + '.' + input);
  }
  for (const g of (spec.groups || [])) {
    const grp = new LiteGraph.LGraphGroup(g.title); grp.color = g.color || '#3f789e';
    const ns = g.keys.map(k => made[k]);
    const x0 = Math.min(...ns.map(n => n.pos[0])) - 20, y0 = Math.min(...ns.map(n => n.pos[1])) - 70;
    const x1 = Math.max(...ns.map(n => n.pos[0] + n.size[0])) + 20, y1 = Math.max(...ns.map(n => n.pos[1] + n.size[1])) + 20;
    grp.pos = [x0, y0]; grp.size = [x1 - x0, y1 - y0]; G.add(grp);
  }
  G.setDirtyCanvas(true, true);
  return JSON.parse(JSON.stringify(G.serialize()));
}"""

LOAD_JS = r"""(wf) => {
  const G = window.app.graph; G.clear(); G.configure(wf); G.setDirtyCanvas(true, true);
  return G.nodes.map(n => n.type);
}"""

SMALL_JS = r"""(changes) => {
  const G = window.app.graph; const out = [];
  for (const n of G.nodes) {
    const c = changes[n.type]; if (!c) continue;
    for (const [k, v] of Object.entries(c)) { const x = (n.widgets || []).find(w => w.name === k);
      if (x) { x.value = v; out.push(n.type + '.' + k + '=' + v); } }
  }
  return [JSON.parse(JSON.stringify(G.serialize())), out];
}"""

VAE = "vae-ft-mse-840000-ema-pruned.safetensors"
SIGLIP = {"model_name": "siglip-base-patch16-224", "hf_id": "google/siglip-base-patch16-224"}
PERCEPTUAL = {"vgg19": "vgg19_features.safetensors", "lpips_backbone": "vgg16_features.safetensors",
              "lpips_net": "vgg"}
STYLE_1 = "StyleMamba_00001.safetensors"
STYLE_2 = "StyleMamba_00002.safetensors"
C_LOAD, C_MID, C_TRAIN, C_OUT = 40, 460, 900, 1320
GREEN = ["#223", "#335"]


def note(key, col, text, y=None, size=(400, 180)):
    d = {"key": key, "type": "Note", "col": col, "text": text, "size": list(size)}
    if y is not None:
        d["y"] = y
    return d


MODELS_NOTE = ("Models (see README 'Where to put the models'):\n"
               "- models/vae/vae-ft-mse-840000-ema-pruned.safetensors (SD 1.5 VAE)\n"
               "- models/siglip/siglip-base-patch16-224/ (a folder: all files of google/siglip-base-patch16-224); "
               "with hf_id set it is downloaded there on first use\n"
               "- models/perceptual/vgg19_features.safetensors, vgg16_features.safetensors (VGG / LPIPS); "
               "choose 'none' to skip those losses")


def train_and_stylize():
    return {
        "nodes": [
            {"key": "vae", "type": "VAELoader", "col": C_LOAD, "widgets": {"vae_name": VAE}},
            {"key": "text", "type": "StyleMambaLoadTextModel", "col": C_LOAD, "widgets": SIGLIP},
            {"key": "perc", "type": "StyleMambaLoadPerceptual", "col": C_LOAD, "widgets": PERCEPTUAL},
            {"key": "img", "type": "LoadImage", "col": C_LOAD, "widgets": {"image": "example.png"}},
            {"key": "cond", "type": "StyleMambaTextConditioning", "col": C_MID, "widgets": {
                "style_prompt": "Van Gogh's starry night, swirling thick brush strokes, vivid blue and yellow",
                "source_prompt": "a plain photo"}},
            {"key": "train", "type": "StyleMambaTrain", "col": C_TRAIN},
            note("n1", C_TRAIN, MODELS_NOTE, size=(400, 220)),
            {"key": "save", "type": "StyleMambaSaveStyle", "col": C_OUT, "widgets": {"filename_prefix": "StyleMamba"}},
            {"key": "sty", "type": "StyleMambaStylize", "col": C_OUT},
            {"key": "out", "type": "SaveImage", "col": C_OUT, "widgets": {"filename_prefix": "StyleMamba/stylized"},
             "size": [320, 330]},
            {"key": "curve", "type": "PreviewImage", "col": C_OUT + 380, "y": 40, "title": "Loss curve",
             "size": [420, 300]},
        ],
        "links": [
            ["text", 0, "cond", "text_model"],
            ["vae", 0, "train", "vae"], ["text", 0, "train", "text_model"], ["cond", 0, "train", "conditioning"],
            ["img", 0, "train", "images"], ["perc", 0, "train", "perceptual"],
            ["train", 0, "save", "style"], ["train", 0, "sty", "style"], ["vae", 0, "sty", "vae"],
            ["img", 0, "sty", "images"], ["sty", 0, "out", "images"], ["train", 1, "curve", "images"],
        ],
    }


def train_two_prompts():
    wf = {
        "nodes": [
            {"key": "vae", "type": "VAELoader", "col": C_LOAD, "widgets": {"vae_name": VAE}},
            {"key": "text", "type": "StyleMambaLoadTextModel", "col": C_LOAD, "widgets": SIGLIP},
            {"key": "perc", "type": "StyleMambaLoadPerceptual", "col": C_LOAD, "widgets": PERCEPTUAL},
            {"key": "img", "type": "LoadImage", "col": C_LOAD, "widgets": {"image": "example.png"}},
            {"key": "c1", "type": "StyleMambaTextConditioning", "col": C_MID, "widgets": {
                "style_prompt": "a Japanese ukiyo-e woodblock print, flat colors, bold outlines"}},
            {"key": "c2", "type": "StyleMambaTextConditioning", "col": C_MID, "widgets": {
                "style_prompt": "glowing cyberpunk neon lights, magenta and cyan"}},
            {"key": "mix", "type": "StyleMambaConditioningMix", "col": C_MID, "widgets": {"blend": 0.5}},
            {"key": "train", "type": "StyleMambaTrain", "col": C_TRAIN},
            note("n1", C_TRAIN, MODELS_NOTE, size=(400, 220)),
            {"key": "save", "type": "StyleMambaSaveStyle", "col": C_OUT, "widgets": {"filename_prefix": "StyleMamba"}},
            {"key": "sty", "type": "StyleMambaStylize", "col": C_OUT},
            {"key": "out", "type": "SaveImage", "col": C_OUT, "widgets": {"filename_prefix": "StyleMamba/two_prompts"},
             "size": [320, 330]},
            {"key": "curve", "type": "PreviewImage", "col": C_OUT + 380, "y": 40, "title": "Loss curve",
             "size": [420, 300]},
        ],
        "links": [
            ["text", 0, "c1", "text_model"], ["text", 0, "c2", "text_model"],
            ["c1", 0, "mix", "conditioning_a"], ["c2", 0, "mix", "conditioning_b"],
            ["vae", 0, "train", "vae"], ["text", 0, "train", "text_model"], ["mix", 0, "train", "conditioning"],
            ["img", 0, "train", "images"], ["perc", 0, "train", "perceptual"],
            ["train", 0, "save", "style"], ["train", 0, "sty", "style"], ["vae", 0, "sty", "vae"],
            ["img", 0, "sty", "images"], ["sty", 0, "out", "images"], ["train", 1, "curve", "images"],
        ],
    }
    return wf


def load_style_stylize_batch():
    return {
        "nodes": [
            {"key": "style", "type": "StyleMambaLoadStyle", "col": C_LOAD, "widgets": {"style_name": STYLE_1}},
            {"key": "vae", "type": "VAELoader", "col": C_LOAD, "widgets": {"vae_name": VAE}},
            {"key": "imgs", "type": "LoadImageSetFromFolderNode", "col": C_LOAD,
             "widgets": {"folder": "content_batch", "resize_method": "None"}},
            note("n1", C_LOAD, "Put the images to stylise in ComfyUI/input/content_batch/ (same size, or pick a "
                               "resize_method). Any size works; big images are tiled.", size=(400, 110)),
            {"key": "sty", "type": "StyleMambaStylize", "col": C_MID},
            {"key": "info", "type": "PreviewAny", "col": C_MID, "title": "Style info", "size": [400, 200]},
            {"key": "out", "type": "SaveImage", "col": C_TRAIN, "y": 40,
             "widgets": {"filename_prefix": "StyleMamba/batch"}, "size": [420, 420]},
        ],
        "links": [
            ["style", 0, "sty", "style"], ["vae", 0, "sty", "vae"], ["imgs", 0, "sty", "images"],
            ["sty", 0, "out", "images"], ["style", 1, "info", "source"],
        ],
    }


def stylize_video_frames():
    return {
        "nodes": [
            {"key": "style", "type": "StyleMambaLoadStyle", "col": C_LOAD, "widgets": {"style_name": STYLE_1}},
            {"key": "vae", "type": "VAELoader", "col": C_LOAD, "widgets": {"vae_name": VAE}},
            {"key": "video", "type": "LoadVideo", "col": C_LOAD, "widgets": {"file": "example_video.mp4"}},
            {"key": "parts", "type": "GetVideoComponents", "col": C_MID},
            {"key": "sty", "type": "StyleMambaStylize", "col": C_MID},
            note("n1", C_MID, "Every frame goes through the same style in one forward pass (no per-frame "
                              "optimisation), so the frames stay consistent. Lower batch_size for long videos "
                              "on small GPUs.", size=(400, 120)),
            {"key": "make", "type": "CreateVideo", "col": C_TRAIN},
            {"key": "save", "type": "SaveVideo", "col": C_TRAIN, "widgets": {"filename_prefix": "video/StyleMamba"}},
        ],
        "links": [
            ["video", 0, "parts", "video"], ["parts", 0, "sty", "images"], ["style", 0, "sty", "style"],
            ["vae", 0, "sty", "vae"], ["sty", 0, "make", "images"], ["parts", 1, "make", "audio"],
            ["parts", 2, "make", "fps"], ["make", 0, "save", "video"],
        ],
    }


def mix_two_styles():
    return {
        "nodes": [
            {"key": "s1", "type": "StyleMambaLoadStyle", "col": C_LOAD, "widgets": {"style_name": STYLE_1}},
            {"key": "s2", "type": "StyleMambaLoadStyle", "col": C_LOAD, "widgets": {"style_name": STYLE_2}},
            {"key": "vae", "type": "VAELoader", "col": C_LOAD, "widgets": {"vae_name": VAE}},
            {"key": "img", "type": "LoadImage", "col": C_LOAD, "widgets": {"image": "example.png"}},
            {"key": "mix", "type": "StyleMambaMixStyles", "col": C_MID, "widgets": {"blend": 0.5}},
            note("n1", C_MID, "Both styles must be trained with the same VAE. blend 0 = only A, 1 = only B; "
                              "blend_mode outputs averages the two styles' pictures (weights: the 0.1.0 mix). "
                              "Chain Mix Styles nodes for three or more styles.", size=(400, 110)),
            {"key": "sty", "type": "StyleMambaStylize", "col": C_MID},
            {"key": "out", "type": "SaveImage", "col": C_TRAIN, "y": 40,
             "widgets": {"filename_prefix": "StyleMamba/mix"}, "size": [420, 420]},
        ],
        "links": [
            ["s1", 0, "mix", "style_a"], ["s2", 0, "mix", "style_b"], ["mix", 0, "sty", "style"],
            ["vae", 0, "sty", "vae"], ["img", 0, "sty", "images"], ["sty", 0, "out", "images"],
        ],
    }


def stylize_in_mask():
    return {
        "nodes": [
            {"key": "style", "type": "StyleMambaLoadStyle", "col": C_LOAD, "widgets": {"style_name": STYLE_1}},
            {"key": "vae", "type": "VAELoader", "col": C_LOAD, "widgets": {"vae_name": VAE}},
            {"key": "img", "type": "LoadImage", "col": C_LOAD, "widgets": {"image": "example.png"}},
            note("n1", C_MID, "Right-click the Load Image node > Open in MaskEditor and paint the area to "
                              "stylise. Outside the mask the original pixels are kept; soft mask edges blend.",
                 size=(400, 110)),
            {"key": "sty", "type": "StyleMambaStylize", "col": C_MID},
            {"key": "out", "type": "SaveImage", "col": C_TRAIN, "y": 40,
             "widgets": {"filename_prefix": "StyleMamba/masked"}, "size": [420, 420]},
        ],
        "links": [
            ["style", 0, "sty", "style"], ["vae", 0, "sty", "vae"], ["img", 0, "sty", "images"],
            ["img", 1, "sty", "mask"], ["sty", 0, "out", "images"],
        ],
    }


def stylize_latent():
    return {
        "nodes": [
            {"key": "style", "type": "StyleMambaLoadStyle", "col": C_LOAD, "widgets": {"style_name": STYLE_1}},
            {"key": "vae", "type": "VAELoader", "col": C_LOAD, "widgets": {"vae_name": VAE}},
            {"key": "img", "type": "LoadImage", "col": C_LOAD, "widgets": {"image": "example.png"}},
            {"key": "enc", "type": "StyleMambaVAEEncode", "col": C_MID},
            note("n1", C_MID, "Stylize Latent decodes any LATENT of this VAE in the style: a KSampler's output "
                              "works too (generate with an SD 1.5 checkpoint, then decode stylised).",
                 size=(400, 110)),
            {"key": "dec", "type": "StyleMambaStylizeLatent", "col": C_MID},
            {"key": "out", "type": "SaveImage", "col": C_TRAIN, "y": 40,
             "widgets": {"filename_prefix": "StyleMamba/latent"}, "size": [420, 420]},
        ],
        "links": [
            ["vae", 0, "enc", "vae"], ["img", 0, "enc", "images"], ["style", 0, "dec", "style"],
            ["vae", 0, "dec", "vae"], ["enc", 0, "dec", "samples"], ["dec", 0, "out", "images"],
        ],
    }


WORKFLOWS = {
    "train_and_stylize": train_and_stylize,
    "train_two_prompts_mix": train_two_prompts,
    "load_style_stylize_batch": load_style_stylize_batch,
    "stylize_video_frames": stylize_video_frames,
    "mix_two_styles": mix_two_styles,
    "stylize_in_mask": stylize_in_mask,
    "stylize_latent": stylize_latent,
}

# CPU acceptance values (tiny models, 64 px, 2 epochs) applied by name in the frontend.
SMALL = {
    "VAELoader": {"vae_name": "sd-vae-random.safetensors"},
    "StyleMambaLoadTextModel": {"model_name": "tiny-siglip", "hf_id": ""},
    "StyleMambaTrain": {"epochs": 2, "resolution": 64, "n_crops": 4, "crop_fraction": 0.5, "lr_decay_epoch": 1,
                        "so_interval": 1, "so_theta": 2.0, "vgg_weight_switch_epoch": 1},
}
# Shipped workflows that are NOT generated here (written by hand): their small copy is made by loading the shipped
# file (<pack>/workflows/<name>.json) in the frontend and applying SMALL; the shipped file is never rewritten.
SHIPPED_ONLY = ("universal_prompt_and_reference",)
SMALL_EXTRA = {"stylize_in_mask": {"LoadImage": {"image": "astronaut_masked.png"},
                                   "StyleMambaStylize": {"tile_size": 256}}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pack", default="/tmp/sm-accept/ComfyUI-StyleMamba")
    ap.add_argument("--out", default="/work/main/workflows")
    ap.add_argument("--small-out", default="/tmp/sm-accept/small")
    ap.add_argument("--models-dir", default="/tmp/sm-models")
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.small_out, exist_ok=True)
    with H.ComfyServer(a.pack, models_dir=a.models_dir) as srv:
        srv.check_pack_imported()
        with H.ComfyBrowser(srv, wait_types=list(srv.pack_nodes())) as b:
            def write_small(name: str) -> str:
                """The graph now in the frontend with SMALL's values, written to <small-out>/<name>.json."""
                changes = {k: dict(v) for k, v in SMALL.items()}
                for t, v in SMALL_EXTRA.get(name, {}).items():
                    changes.setdefault(t, {}).update(v)
                small, done = b.page.evaluate(SMALL_JS, changes)
                with open(os.path.join(a.small_out, name + ".json"), "w") as fh:
                    json.dump(small, fh, indent=1)
                return done

            for name, build in WORKFLOWS.items():
                if a.only and name not in a.only:
                    continue
                wf = b.page.evaluate(BUILD_JS, build())
                with open(os.path.join(a.out, name + ".json"), "w") as fh:
                    json.dump(wf, fh, indent=1)
                done = write_small(name)
                H.log(f"wrote {name}: {len(wf['nodes'])} nodes, {len(wf['links'])} links; small copy: {done}")
            for name in SHIPPED_ONLY:
                if a.only and name not in a.only:
                    continue
                with open(os.path.join(a.pack, "workflows", name + ".json")) as fh:
                    shipped = json.load(fh)
                types = b.page.evaluate(LOAD_JS, shipped)
                if len(types) != len(shipped["nodes"]):
                    raise SystemExit(f"{name}: the frontend loaded {len(types)} of {len(shipped['nodes'])} nodes")
                done = write_small(name)
                H.log(f"small copy of shipped {name} ({len(types)} nodes, not rewritten): {done}")

if __name__ == "__main__":
    main()
