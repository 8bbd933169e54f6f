"""tests/data/comfy_core_nodes.json: the input/output declarations of the ComfyUI core nodes the example
workflows use (and a few common neighbours), trimmed from /object_info of the real server."""
import json
info = json.load(open("/tmp/sm-accept/object_info.json"))
NODES = ["VAELoader", "LoadImage", "LoadImageMask", "SaveImage", "PreviewImage", "PreviewAny", "LoadVideo",
         "GetVideoComponents", "CreateVideo", "SaveVideo", "LoadImageSetFromFolderNode", "ImageBatch", "ImageScale",
         "CheckpointLoaderSimple", "VAEEncode", "VAEDecode", "KSampler", "EmptyLatentImage", "CLIPTextEncode",
         "InvertMask", "RepeatImageBatch"]
KEEP = ("default", "min", "max", "step", "image_upload", "video_upload", "control_after_generate", "forceInput",
        "multiline")
# combos whose choices depend on the machine (model files, input files / folders)
MACHINE = {"vae_name", "ckpt_name", "image", "file", "folder"}
def trim(spec, name):
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, list):
        kind, opts = "COMBO", dict(opts, options=kind)
    out = {"type": kind}
    out.update({k: v for k, v in opts.items() if k in KEEP})
    if kind == "COMBO":
        if name in MACHINE:
            out["machine_dependent"] = True  # model/file lists: not stored
        else:
            out["options"] = opts.get("options", [])
    return out
data = {"_about": "Trimmed from GET /object_info of ComfyUI 0.3.64 (commit a125cd84, frontend 1.27.10). "
                  "Input names/types and outputs of core nodes, for tests/test_workflows.py. Model and file "
                  "lists are machine-dependent and left out."}
for n in NODES:
    d = info[n]
    data[n] = {"input": {cat: {k: trim(v, k) for k, v in d["input"].get(cat, {}).items()} for cat in ("required", "optional")
                         if d["input"].get(cat)},
               "input_order": {k: v for k, v in d["input_order"].items() if k != "hidden"},
               "output": d["output"], "output_name": d["output_name"]}
json.dump(data, open("/work/main/tests/data/comfy_core_nodes.json", "w"), indent=1, sort_keys=True)
print(len(data) - 1, "nodes")
