"""Every example workflow (UI format, workflows/*.json) only uses node types, input names, widget values and
link types that exist and match: our nodes are checked against their classes, ComfyUI's core nodes against
tests/data/comfy_core_nodes.json (trimmed from /object_info of a real ComfyUI 0.3.64 server)."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
from conftest import import_pack

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = ROOT / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.json"))
CORE = {k: v for k, v in json.loads((ROOT / "tests" / "data" / "comfy_core_nodes.json").read_text()).items()
        if not k.startswith("_")}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
REQUIRED = {"train_and_stylize", "load_style_stylize_batch", "stylize_video_frames", "mix_two_styles",
            "stylize_in_mask"}
PACK_NAME = "comfyui_stylemamba_workflow_tests"
# Our combos that list files / folders of the user's models dir (their choices depend on the machine).
OUR_FILE_LISTS = {"StyleMambaLoadTextModel": {"model_name"}, "StyleMambaLoadPerceptual": {"vgg19", "lpips_backbone"},
                  "StyleMambaLoadStyle": {"style_name"}, "StyleMambaLoadUniversalModel": {"model_name"}}


def load_pack():
    """Import the pack the way ComfyUI does (a package from its folder's __init__.py)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    return import_pack(PACK_NAME)


def _spec_entry(value, machine_dependent: bool) -> dict:
    kind, opts = value[0], (value[1] if len(value) > 1 else {})
    if isinstance(kind, list):
        return {"type": "COMBO", "options": kind, **opts, **({"machine_dependent": True} if machine_dependent else {})}
    return {"type": kind, **opts}


def our_specs() -> dict:
    """Our node classes in the same shape as the trimmed /object_info."""
    out = {}
    for node_id, cls in load_pack().NODE_CLASS_MAPPINGS.items():
        it = cls.INPUT_TYPES()
        out[node_id] = {
            "input": {cat: {k: _spec_entry(v, k in OUR_FILE_LISTS.get(node_id, ())) for k, v in it.get(cat, {}).items()}
                      for cat in ("required", "optional")},
            "input_order": {cat: list(it.get(cat, {})) for cat in ("required", "optional")},
            "output": list(cls.RETURN_TYPES), "ours": True,
        }
    return out


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    import os

    os.environ.setdefault("STYLEMAMBA_MODELS_DIR", str(tmp_path_factory.mktemp("models")))
    return {**CORE, **our_specs()}


def widget_names(spec: dict) -> list[tuple[str, dict]]:
    """Widget inputs in the order the frontend stores their values (required, then optional)."""
    out = []
    for cat in ("required", "optional"):
        for name in spec["input_order"].get(cat, []):
            entry = spec["input"][cat][name]
            if entry["type"] in WIDGET_TYPES and not entry.get("forceInput"):
                out.append((name, entry))
    return out


def expected_widget_values(spec: dict) -> list[tuple[str, dict | None]]:
    """(name, entry) per widgets_values slot; None for the frontend's extra values (seed control, upload)."""
    slots: list[tuple[str, dict | None]] = []
    uploads = 0
    for name, entry in widget_names(spec):
        slots.append((name, entry))
        control = entry.get("control_after_generate", name in ("seed", "noise_seed"))
        if entry["type"] == "INT" and control:
            slots.append((name + ":control", None))
        if entry.get("image_upload") or entry.get("video_upload"):
            uploads += 1
    slots += [("upload", None)] * uploads
    return slots


def _value_ok(entry: dict, value) -> str | None:
    kind = entry["type"]
    if kind == "INT" and not (isinstance(value, int) and not isinstance(value, bool)):
        return f"expected an integer, got {value!r}"
    if kind == "FLOAT" and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return f"expected a number, got {value!r}"
    out_of_range = ("min" in entry and value < entry["min"]) or ("max" in entry and value > entry["max"])
    if kind in ("INT", "FLOAT") and out_of_range:
        return f"{value} outside [{entry.get('min')}, {entry.get('max')}]"
    if kind == "STRING" and not isinstance(value, str):
        return f"expected a string, got {value!r}"
    if kind == "BOOLEAN" and not isinstance(value, bool):
        return f"expected a boolean, got {value!r}"
    if kind == "COMBO" and not entry.get("machine_dependent") and value not in entry.get("options", []):
        return f"{value!r} not in {entry.get('options')}"  # model / file lists are machine-dependent: not checked
    return None


# Optional widgets added to a node after its release, in order (old saved workflows lack their values).
ADDED_LATER = {"StyleMambaTrain": ["preset", "vgg_reduction"], "StyleMambaMixStyles": ["blend_mode"]}


def check_workflow(wf: dict, specs: dict) -> list[str]:
    """Every problem a user would meet loading or queueing ``wf`` (empty list = fine)."""
    errors: list[str] = []
    if not isinstance(wf.get("nodes"), list) or not isinstance(wf.get("links"), list):
        return ["not a UI-format workflow (no 'nodes' / 'links' lists)"]
    if wf.get("version") != 0.4:
        errors.append(f"version {wf.get('version')!r}, expected 0.4 (what the frontend saves)")
    nodes = {n["id"]: n for n in wf["nodes"]}
    for n in wf["nodes"]:
        t, where = n.get("type"), f"node {n.get('id')} ({n.get('type')})"
        if t in FRONTEND_ONLY:
            continue
        if t not in specs:
            errors.append(f"{where}: unknown node type")
            continue
        spec = specs[t]
        declared = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        if any(e.get("image_upload") or e.get("video_upload") for e in declared.values()):
            declared["upload"] = {"type": "IMAGEUPLOAD"}  # the frontend's upload button widget
        for slot in n.get("inputs", []):
            name = slot.get("name")
            if name not in declared:
                errors.append(f"{where}: input '{name}' does not exist (has {sorted(declared)})")
                continue
            if slot.get("type") != declared[name]["type"] and declared[name]["type"] != "*":
                errors.append(f"{where}: input '{name}' has type {slot.get('type')}, declared {declared[name]['type']}")
        linked = {s["name"] for s in n.get("inputs", []) if s.get("link") is not None}
        if n.get("mode", 0) == 0:
            for name, entry in spec["input"].get("required", {}).items():
                if entry["type"] not in WIDGET_TYPES and name not in linked:
                    errors.append(f"{where}: required input '{name}' ({entry['type']}) is not connected")
        for i, out in enumerate(n.get("outputs", [])):
            if i >= len(spec["output"]) or out.get("type") != spec["output"][i]:
                errors.append(f"{where}: output {i} has type {out.get('type')}, declared "
                              f"{spec['output'][i] if i < len(spec['output']) else 'nothing'}")
        slots = expected_widget_values(spec)
        values = n.get("widgets_values") or []
        if isinstance(values, dict):
            errors.append(f"{where}: widgets_values is a dict; expected the frontend's list")
            continue
        # Widgets added after a release (at the end, optional) are missing from workflows saved before it; the
        # frontend (LGraphNode.configure, 1.27) assigns only the values it has, so those keep their defaults.
        later = ADDED_LATER.get(t, [])
        complete = len(values) == len(slots) or (
            len(values) < len(slots) and [s for s, _ in slots[len(values):]] == later[len(later) - (len(slots) - len(values)):])
        if not complete:
            errors.append(f"{where}: {len(values)} widget values for {len(slots)} widgets {[s for s, _ in slots]}")
            continue
        for (name, entry), value in zip(slots, values):
            problem = entry and _value_ok(entry, value)
            if problem:
                errors.append(f"{where}: widget '{name}': {problem}")
    for link in wf["links"]:
        lid, src, src_slot, dst, dst_slot, ltype = link[:6]
        if src not in nodes or dst not in nodes:
            errors.append(f"link {lid}: missing node {src if src not in nodes else dst}")
            continue
        a, b = nodes[src], nodes[dst]
        outs, ins = a.get("outputs", []), b.get("inputs", [])
        if src_slot >= len(outs) or lid not in (outs[src_slot].get("links") or []):
            errors.append(f"link {lid}: not listed on output {src_slot} of node {src}")
            continue
        if dst_slot >= len(ins) or ins[dst_slot].get("link") != lid:
            errors.append(f"link {lid}: not the link of input {dst_slot} of node {dst}")
            continue
        src_type = outs[src_slot].get("type")
        dst_type = ins[dst_slot].get("type")
        if a.get("type") in specs:
            declared_out = specs[a["type"]]["output"][src_slot]
            if declared_out != src_type:
                errors.append(f"link {lid}: node {src} output {src_slot} is {declared_out}, workflow says {src_type}")
        wildcard = dst_type == "*" and ltype in ("*", src_type)  # e.g. Preview Any accepts everything
        if not wildcard and (ltype != src_type or dst_type != src_type):
            errors.append(f"link {lid}: type {ltype} from {src_type} into {ins[dst_slot].get('name')} ({dst_type})")
    return errors


# ---------------------------------------------------------------------------------------------------- tests
def test_the_required_example_workflows_exist():
    names = {p.stem for p in WORKFLOWS}
    assert REQUIRED <= names, f"missing example workflows: {sorted(REQUIRED - names)}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_matches_the_nodes(path, specs):
    wf = json.loads(path.read_text())
    assert check_workflow(wf, specs) == []
    used = {n["type"] for n in wf["nodes"]}
    assert any(t.startswith("StyleMamba") for t in used), "an example workflow should use our nodes"


@pytest.mark.parametrize("path", [p for p in WORKFLOWS if "train" in p.stem], ids=lambda p: p.stem)
def test_training_examples_use_the_paper_recipe(path, specs):
    """The shipped training workflows keep the node defaults (the paper's recipe with the measured changes of
    docs/METHOD_CHOICES.md), not test-size values."""
    wf = json.loads(path.read_text())
    trains = [n for n in wf["nodes"] if n["type"] == "StyleMambaTrain"]
    assert trains
    defaults = [entry["default"] for _, entry in widget_names(specs["StyleMambaTrain"])]
    assert defaults[-2:] == ["paper", "relative"]  # preset (0.2) and vgg_reduction (item 5), added later
    for n in trains:
        assert n["widgets_values"] == defaults[:len(n["widgets_values"])] and len(n["widgets_values"]) >= len(defaults) - 2
    assert defaults[:5] == [20, 1, 5e-4, 10, 512]  # epochs, steps/epoch, lr, lr decay epoch, resolution


def _example(name: str) -> dict:
    return json.loads((WORKFLOW_DIR / f"{name}.json").read_text())


def _node(wf: dict, node_type: str) -> dict:
    return next(n for n in wf["nodes"] if n["type"] == node_type)


def test_checker_catches_a_renamed_input(specs):
    wf = copy.deepcopy(_example("train_and_stylize"))
    slot = next(s for s in _node(wf, "StyleMambaTrain")["inputs"] if s["name"] == "conditioning")
    slot["name"] = "cond"
    errors = check_workflow(wf, specs)
    assert any("input 'cond' does not exist" in e for e in errors)
    assert any("'conditioning'" in e and "not connected" in e for e in errors)


def test_checker_catches_a_wrong_link_type_and_an_unknown_node(specs):
    wf = copy.deepcopy(_example("mix_two_styles"))
    wf["links"][0][5] = "IMAGE"
    wf["nodes"].append({"id": 999, "type": "StyleMambaNoSuchNode", "inputs": [], "outputs": []})
    errors = check_workflow(wf, specs)
    assert any("type IMAGE" in e for e in errors)
    assert any("StyleMambaNoSuchNode" in e and "unknown node type" in e for e in errors)


def test_checker_catches_bad_widget_values(specs):
    wf = copy.deepcopy(_example("train_and_stylize"))
    train = _node(wf, "StyleMambaTrain")
    train["widgets_values"][0] = 0  # epochs below its minimum
    train["widgets_values"][train["widgets_values"].index("auto")] = "fp8"  # precision not a choice
    errors = check_workflow(wf, specs)
    assert any("widget 'epochs'" in e for e in errors)
    assert any("widget 'precision'" in e and "'fp8'" in e for e in errors)
    del train["widgets_values"][3:6]  # fewer than the required widgets (the optional preset and vgg_reduction may be missing)
    assert any("widget values for" in e for e in check_workflow(wf, specs))


def test_core_node_list_covers_every_core_node_in_the_examples():
    used = {n["type"] for p in WORKFLOWS for n in json.loads(p.read_text())["nodes"]}
    core_used = {t for t in used if not t.startswith("StyleMamba") and t not in FRONTEND_ONLY}
    assert core_used <= set(CORE), f"add {sorted(core_used - set(CORE))} to tests/data/comfy_core_nodes.json"
