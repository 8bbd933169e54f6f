#!/usr/bin/env python3
"""A new user's first hour in the real ComfyUI server (CPU): identifiable VAEs, no retraining, no duplicate
style files, error types without the install path, Unicode style names, sizes as width x height, the loss
curve, the Stylize node reusing its built style across prompts, one log prefix.

    /opt/comfy-venv/bin/python tools/acceptance/first_hour_checks.py

Needs /tmp/sm-models (vae/vae-a.safetensors and vae-b.safetensors: two full-size random SD VAEs;
siglip/tiny-siglip) and /tmp/sm-accept/input/{astro64,cat64}.png, and the pack linked as
/tmp/sm-accept/stylemamba (see README.md here). Prints one JSON report.
"""
import json
import sys
import time
import uuid

sys.path.insert(0, "/work/shared/tools/comfy-acceptance")
sys.dont_write_bytecode = True
import comfy_harness as H  # noqa: E402

PACK = "/tmp/sm-accept/stylemamba"
MODELS = "/tmp/sm-models"
INPUTS = ["/tmp/sm-accept/input/astro64.png", "/tmp/sm-accept/input/cat64.png"]
NAME = "évil ünïcode 名前"
LONG_PROMPT = ("Van Gogh's starry night with a swirling blue sky and bright yellow stars, thick impasto brush strokes, "
               "oil on canvas")

TRAIN = dict(epochs=2, steps_per_epoch=1, learning_rate=5e-4, lr_decay_epoch=1, resolution=64, seed=0, n_crops=2,
             crop_fraction=0.5, mask_ratio=0.5, so_interval=1, so_theta=2.0, dir_weight=500.0, patch_weight=9000.0,
             md_weight=500.0, so_weight=500.0, vgg_weight_start=0.0, vgg_weight_end=0.0, vgg_weight_switch_epoch=1,
             lpips_weight=0.0, precision="auto")


def stylize(style_link, vae_link, image_link):
    return {"class_type": "StyleMambaStylize", "inputs": {"style": style_link, "vae": vae_link, "images": image_link,
                                                          "strength": 1.0, "tile_size": 1024, "batch_size": 4}}


def train_prompt(seed=0, image="astro64.png"):
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "vae-a.safetensors"}},
        "3": {"class_type": "StyleMambaLoadTextModel", "inputs": {"model_name": "tiny-siglip", "hf_id": ""}},
        "4": {"class_type": "StyleMambaTextConditioning", "inputs": {"text_model": ["3", 0], "style_prompt": LONG_PROMPT,
                                                                     "source_prompt": "a plain photo"}},
        "5": {"class_type": "StyleMambaTrain", "inputs": {"vae": ["2", 0], "text_model": ["3", 0],
                                                          "conditioning": ["4", 0], "images": ["1", 0],
                                                          **TRAIN, "seed": seed}},
        "6": {"class_type": "StyleMambaSaveStyle", "inputs": {"style": ["5", 0], "filename_prefix": NAME}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["5", 1], "filename_prefix": "loss_curve"}},
        "8": stylize(["5", 0], ["2", 0], ["1", 0]),
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "styled"}},
    }


def load_and_stylize(style_name, vae_name="vae-a.safetensors", image="cat64.png"):
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}},
        "3": {"class_type": "StyleMambaLoadStyle", "inputs": {"style_name": style_name}},
        "4": stylize(["3", 0], ["2", 0], ["1", 0]),
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "styled_loaded"}},
    }


def run(srv, api, cid):
    st, resp = H.http("POST", srv.base_url + "/prompt", {"prompt": api, "client_id": cid}, timeout=60)
    if st != 200 or resp.get("node_errors"):
        return {"status": "refused", "response": resp}
    pid, t0 = resp["prompt_id"], time.monotonic()
    while time.monotonic() - t0 < 1800:
        st, hist = H.http("GET", f"{srv.base_url}/history/{pid}", timeout=30)
        entry = hist.get(pid) if st == 200 else None
        if entry and (entry.get("status") or {}).get("status_str") in ("success", "error"):
            out = {"status": entry["status"]["status_str"], "seconds": round(time.monotonic() - t0, 1)}
            errors = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
            if errors:
                out["error"] = {k: errors[0][k] for k in ("node_type", "exception_type", "exception_message")}
            out["ui_text"] = [t for o in entry.get("outputs", {}).values() for t in o.get("text", [])]
            out["images"] = [i["filename"] for o in entry.get("outputs", {}).values() for i in o.get("images", [])]
            return out
        time.sleep(0.25)
    return {"status": "timeout"}


def main():
    report = {}
    with H.ComfyServer(PACK, models_dir=MODELS, input_files=INPUTS) as srv:
        srv.check_pack_imported()
        cid = str(uuid.uuid4())
        styles = f"{srv.base}/models/stylemamba"
        mark = len(srv.read_log())
        report["1_train_save_stylize"] = run(srv, train_prompt(), cid)
        report["2_other_prompt_load_style_stylize"] = run(srv, load_and_stylize(f"{NAME}_00001.safetensors"), cid)
        report["3_again_other_image_same_style"] = run(srv, load_and_stylize(f"{NAME}_00001.safetensors",
                                                                             image="astro64.png"), cid)
        report["4_first_prompt_requeued"] = run(srv, train_prompt(), cid)
        report["5_vae_mismatch"] = run(srv, load_and_stylize(f"{NAME}_00001.safetensors", "vae-b.safetensors"), cid)
        with open(f"{styles}/broken.safetensors", "wb") as fh:
            fh.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
        report["6_corrupt_style"] = run(srv, load_and_stylize("broken.safetensors"), cid)
        import torch  # a pickle given a style's name
        torch.save({"embedding": torch.zeros(3)}, f"{styles}/pickled.safetensors")
        report["7_pickle_named_safetensors"] = run(srv, load_and_stylize("pickled.safetensors"), cid)
        tiny = load_and_stylize(f"{NAME}_00001.safetensors")
        tiny["1"] = {"class_type": "EmptyImage", "inputs": {"width": 6, "height": 4, "batch_size": 1, "color": 0}}
        report["8_tiny_image"] = run(srv, tiny, cid)
        log = srv.read_log()[mark:]
        lines = [line for line in log.splitlines() if "StyleMamba" in line or "stylemamba" in line]
        report["style_files"] = sorted(p for p in __import__("os").listdir(styles))
        report["decoder_builds"] = [line for line in lines if "built the decoder" in line]
        report["train_lines"] = [line for line in lines if "Train:" in line]
        report["log_prefixes"] = sorted({line.split(":", 1)[0] for line in lines if not line.startswith(" ")})[:10]
        report["log_lines_sample"] = lines[:12]
        report["output_dir"] = f"{srv.base}/output"
    print(json.dumps(report, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
