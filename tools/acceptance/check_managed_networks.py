#!/usr/bin/env python3
"""The Train node's networks under the REAL ComfyUI's model management (CPU, in process, no server):
``LoadedModel.model_unload`` asked to free a little memory unloads the training-network container WHOLE (its
patcher refuses partial unloads, which would move leaf modules off one by one and split the text model between
devices), while a plain patcher of the same container unloads only part of it.

    /opt/comfy-venv/bin/python tools/acceptance/check_managed_networks.py [--comfy /opt/comfyui-src]

Prints one JSON line; exit code 0 when both behaviours are as expected.
"""
import argparse
import importlib.util
import json
import os
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--comfy", default="/opt/comfyui-src")
args = ap.parse_args()
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.argv = ["main.py", "--cpu"]  # comfy.cli_args reads the command line when imported
sys.path.insert(0, args.comfy)
import torch  # noqa: E402
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()  # as ComfyUI's main.py does, so that --cpu applies
import comfy.model_management as mm  # noqa: E402

spec = importlib.util.spec_from_file_location("smpack", os.path.join(root, "__init__.py"),
                                              submodule_search_locations=[root])
pack = importlib.util.module_from_spec(spec)
sys.modules["smpack"] = pack
spec.loader.exec_module(pack)
caches = sys.modules["smpack.nodes.caches"]
ch = sys.modules["smpack.nodes.comfy_helpers"]


class TextModelLike(torch.nn.Module):
    """A text model's shape as far as ComfyUI sees it: leaf modules of several sizes, a buffer on the root."""

    def __init__(self):
        super().__init__()
        self.tower = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(6)], torch.nn.LayerNorm(256))
        self.register_buffer("mean", torch.zeros(3))


def unload_a_little(whole: bool) -> dict:
    nets = caches.TrainingNetworks([TextModelLike(), torch.nn.Conv2d(3, 8, 3)])
    patcher = ch.managed_model(nets, torch.device("cpu"), whole=whole)
    mm.load_models_gpu([patcher], force_full_load=True)
    loaded = [m for m in mm.current_loaded_models if m.model is patcher]
    size = patcher.loaded_size()
    # what comfy.model_management.free_memory does for one model when smart memory needs size // 10 bytes back
    whole_unload = loaded[0].model_unload(memory_to_free=size // 10)  # True: detached whole; False: partly
    if whole_unload:
        mm.current_loaded_models.remove(loaded[0])
    return {"whole": whole, "loaded_bytes": int(size), "unloaded_whole": bool(whole_unload),
            "still_loaded_bytes": int(patcher.loaded_size())}


results = [unload_a_little(True), unload_a_little(False)]
ok = results[0]["unloaded_whole"] and not results[1]["unloaded_whole"]
print(json.dumps({"ok": ok, "comfy": args.comfy, "results": results}))
sys.exit(0 if ok else 1)
