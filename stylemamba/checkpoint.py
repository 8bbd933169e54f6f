"""Resumable training checkpoints without pickle: weights AND optimizer state as safetensors, the rest JSON.

A checkpoint is a folder ``step-00000100/`` in the run's checkpoint directory::

    model.safetensors      the trainable weights by name (plus any extra tensors the trainer keeps)
    optimizer.safetensors  the optimizer's per-parameter state (Adam: exp_avg, exp_avg_sq, step) keyed
                           "<parameter name>/<field>"; param groups and non-tensor values in the header
    trainer.json           step, recipe, data fingerprints, loss history: whatever the trainer needs

Why not ``torch.save(optimizer.state_dict())``: loading that back needs ``torch.load``, i.e. unpickling,
and checkpoints get copied between machines and people; safetensors + JSON can be read from anyone
safely, and keying the state by parameter NAME (not position) makes a mismatch an error that names the
parameter. A folder is written as ``step-N.partial`` and renamed when complete, so a run killed while
writing leaves the previous checkpoint intact, and :func:`latest_checkpoint` never sees a half one; a write that
fails (a full disk) removes its half folder, and folders a kill left behind go with the next checkpoint. The same
step written again sets the old folder aside as ``step-N.replaced`` (listed while ``step-N`` is missing) until the
new one is in place.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .image_io import replace_durably

MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "trainer.json"
_STEP_DIR = re.compile(r"^step-(\d+)(\.replaced)?$")  # .replaced: set aside while the same step is written again
_LEFT_OVER = re.compile(r"^step-(\d+)(\.partial|\.replaced)?$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or resumed from; the message says why and what to do."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    tensors: dict[str, torch.Tensor]
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_meta: dict[str, Any]
    state: dict[str, Any]


def optimizer_to_tensors(opt: torch.optim.Optimizer, names: Sequence[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer's state as (tensors keyed "<name>/<field>", JSON-able header); ``names`` in parameter order."""
    sd = opt.state_dict()
    order = [i for g in sd["param_groups"] for i in g["params"]]
    if len(order) != len(names):
        raise ValueError(f"{len(names)} names for {len(order)} optimised parameters")
    name_of = dict(zip(order, names))
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for field, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{name_of[idx]}/{field}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(name_of[idx], {})[field] = value
    groups = [{**{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"},
               "params": [name_of[i] for i in g["params"]]} for g in sd["param_groups"]]
    return tensors, {"type": type(opt).__name__, "param_groups": groups, "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, names: Sequence[str], tensors: Mapping[str, torch.Tensor],
                           meta: Mapping[str, Any]) -> None:
    """Load state written by :func:`optimizer_to_tensors` into ``opt`` (whose parameters are named ``names``)."""
    if meta.get("type") != type(opt).__name__:
        raise CheckpointError(f"the checkpoint's optimizer is {meta.get('type')}, this run uses {type(opt).__name__}")
    index = {n: i for i, n in enumerate(names)}
    saved = [n for g in meta["param_groups"] for n in g["params"]]
    if sorted(saved) != sorted(names):
        missing, extra = sorted(set(names) - set(saved)), sorted(set(saved) - set(names))
        raise CheckpointError(f"the checkpoint's parameters differ from this model's (missing {missing[:3]}, "
                              f"unexpected {extra[:3]}): it was written for another fusion/decoder configuration")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, field = key.rpartition("/")
        state.setdefault(index[name], {})[field] = value
    for name, fields in meta.get("scalars", {}).items():
        state.setdefault(index[name], {}).update(fields)
    groups = []
    for g in meta["param_groups"]:
        group = {k: (tuple(v) if k == "betas" else v) for k, v in g.items() if k != "params"}
        groups.append({**group, "params": [index[n] for n in g["params"]]})
    opt.load_state_dict({"state": state, "param_groups": groups})


def weights_from_tensors(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Load checkpoint ``path``'s weights into ``module``, every tensor checked first: torch's own error for a tensor
    missing or of another shape was a traceback that named neither the checkpoint nor what to do."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    reshaped = [f"{k} ({'x'.join(map(str, tensors[k].shape))} in the file, {'x'.join(map(str, v.shape))} here)"
                for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    problems = [f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                for label, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
                if names]
    if problems:
        raise CheckpointError(f"checkpoint {path}: its {MODEL_FILE} does not fit this model ({'; '.join(problems)}): "
                              "it is damaged, edited or written for another fusion/decoder configuration; delete that "
                              "folder to resume from the one before it, or start a new run in an empty checkpoint "
                              "directory")
    module.load_state_dict(dict(tensors))


def step_dir(folder: Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}"


def save_checkpoint(folder: str | Path, step: int, tensors: Mapping[str, torch.Tensor], opt: torch.optim.Optimizer,
                    names: Sequence[str], state: Mapping[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically into ``folder`` and keep only the ``keep`` newest; returns its path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    final = step_dir(folder, step)
    tmp = final.with_name(final.name + ".partial")
    opt_tensors, opt_meta = optimizer_to_tensors(opt, names)
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / MODEL_FILE),
                  metadata={"format": "stylemamba.checkpoint"})
        save_file(opt_tensors, str(tmp / OPTIMIZER_FILE), metadata={"optimizer": json.dumps(opt_meta)})
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1, default=str))
    except BaseException as exc:  # a full disk, a folder gone read-only (OSError; safetensors raises its own type)
        shutil.rmtree(tmp, ignore_errors=True)  # the half checkpoint would hold the space the next one needs
        if not isinstance(exc, Exception):  # a second Ctrl-C: abort as asked, with nothing half-written left
            raise
        last = latest_checkpoint(folder)
        raise CheckpointError(f"checkpoint {final.name} could not be written in {folder} ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())}); nothing of it is left. "
                              + (f"The last complete checkpoint, {last.name}, is intact: make room, then resume from it"
                                 if last else "No earlier checkpoint exists: make room, then start again")) from exc
    aside = final.with_name(final.name + ".replaced")
    if final.exists():  # the same step written again (e.g. a resumed run stopped at once): set aside, not deleted
        if aside.exists():  # a kill between rmtree and rename left it there: it was never this step's only copy
            shutil.rmtree(aside)
        final.rename(aside)  # a kill before the new one is in place leaves it listed (list_checkpoints)
    replace_durably(tmp, final)
    shutil.rmtree(aside, ignore_errors=True)
    complete = list_checkpoints(folder)
    for old in complete[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    for p in folder.iterdir():  # of earlier steps, left by a kill while writing or pruning: never listed, never reused
        m = _LEFT_OVER.match(p.name)
        if m and int(m.group(1)) < step and p.is_dir() and p not in complete:
            shutil.rmtree(p, ignore_errors=True)
    return final


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (``.partial`` folders of an interrupted write are skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found: dict[int, Path] = {}
    for p in sorted(folder.iterdir(), key=lambda p: p.name.endswith(".replaced")):  # step-N before step-N.replaced
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and all((p / f).is_file() for f in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE)):
            found.setdefault(int(m.group(1)), p)
    return [found[step] for step in sorted(found)]


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint folder (safetensors and JSON only: nothing is unpickled)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
        if not isinstance(state, dict) or type(state.get("step")) is not int:  # another tool's, or edited by hand
            raise ValueError(f"{STATE_FILE} holds no step number: not a state this trainer wrote")
        tensors = load_file(str(path / MODEL_FILE))
        opt_tensors = load_file(str(path / OPTIMIZER_FILE))
        with safe_open(str(path / OPTIMIZER_FILE), framework="pt") as f:
            opt_meta = json.loads((f.metadata() or {})["optimizer"])
    except Exception as exc:  # OSError, JSON errors, safetensors' own error type
        raise CheckpointError(f"checkpoint {path} is damaged ({type(exc).__name__}: {exc}); delete that folder to "
                              "resume from the one before it") from exc
    return Checkpoint(path, state["step"], tensors, opt_tensors, opt_meta, state)
