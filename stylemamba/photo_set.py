"""What identifies a run's training photos, however their folder was typed, and what changed between two runs' photos.

A resumed universal run must draw the same photos at the same steps: its sampler draws positions in the list of
photos, so the list is part of the run. The paths as typed do not identify it (``--images images`` and ``--images
$PWD/images`` are the same photos); the files' names relative to the folder that holds them all do. The files'
sizes are recorded beside the names but are not part of the identity: a damaged photo re-saved under its name (the
fix a run stopped by it is told) must resume, and the resume says which photos changed size instead.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import torch

# photos whose names and sizes a checkpoint keeps, to say what changed; a larger set keeps its count only
LISTED_PHOTOS = 50_000


def photo_entries(items: Sequence[torch.Tensor | str | Path]) -> list[list[Any]]:
    """[name, size] of each file (its path relative to the folder holding every file, and its bytes), or for an
    image tensor ["tensor <position>", "<shape> <sum>"]."""
    files = [os.path.abspath(item) for item in items if not torch.is_tensor(item)]
    try:
        common = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
    except ValueError:  # files on several drives (Windows): their full paths are their names
        common = ""
    entries, k = [], 0
    for i, item in enumerate(items):
        if torch.is_tensor(item):
            shape = "x".join(map(str, item.shape))
            entries.append([f"tensor {i}", f"{shape} {float(item.double().sum()):.6e}"])
            continue
        path = files[k]
        k += 1
        entries.append([Path(os.path.relpath(path, common) if common else path).as_posix(), _size(path)])
    return entries


def _size(path: str) -> int:
    """The file's bytes; -1 for a file gone (a run names it when the file is read)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def photos_fingerprint(entries: Sequence[Sequence[Any]]) -> str:
    """The identity of a list of photos: the files' names (not their sizes) and the tensors' shapes and sums."""
    h = hashlib.sha256()
    for name, signature in entries:
        h.update(f"{name}|{signature if name.startswith('tensor ') else ''}\n".encode())
    return h.hexdigest()[:16]


def paths_as_typed_fingerprint(items: Sequence[torch.Tensor | str | Path]) -> str:
    """The identity older checkpoints hold: the paths as typed (tensors by shape and sum)."""
    h = hashlib.sha256()
    for item in items:
        h.update((str(item) if not torch.is_tensor(item) else
                  f"{tuple(item.shape)}:{float(item.double().sum()):.6e}").encode())
    return h.hexdigest()[:16]


def photos_record(entries: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """What a checkpoint keeps of its photos to tell a resume what changed: their count, and up to
    :data:`LISTED_PHOTOS` names and sizes."""
    record: dict[str, Any] = {"count": len(entries)}
    if len(entries) <= LISTED_PHOTOS:
        record["entries"] = [list(e) for e in entries]
    return record


def _some(names: Sequence[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")


def photo_changes(then: dict[str, Any], now: Sequence[Sequence[Any]]) -> str:
    """What differs between a checkpoint's photos (:func:`photos_record`) and these, in words."""
    count = then.get("count")
    listed = then.get("entries")
    if listed is None:
        if count is None:
            return "the photos are not the ones of the checkpoint"
        if count != len(now):
            return f"{count} photos in the checkpoint, {len(now)} now"
        return f"the same number of photos ({count}), but not the same ones"
    before = {e[0]: e[1] for e in listed}
    after = {e[0]: e[1] for e in now}
    added = [n for n in after if n not in before]
    removed = [n for n in before if n not in after]
    changed = [n for n in after if n in before and n.startswith("tensor ") and before[n] != after[n]]
    parts = [f"{len(listed)} photos in the checkpoint, {len(now)} now"] if len(listed) != len(now) else []
    parts += [f"{len(added)} added ({_some(added)})"] if added else []
    parts += [f"{len(removed)} removed ({_some(removed)})"] if removed else []
    parts += [f"{len(changed)} other image tensors ({_some(changed)})"] if changed else []
    if not parts:
        parts = ["the same photos in another order (the run draws them by position)"]
    return "the photos differ: " + "; ".join(parts)


def resized_photos(then: dict[str, Any], now: Sequence[Sequence[Any]]) -> list[str]:
    """Files of the checkpoint's photos whose size changed since (re-saved, or replaced under the same name)."""
    before = {e[0]: e[1] for e in then.get("entries") or [] if not e[0].startswith("tensor ")}
    return [name for name, size in now if name in before and before[name] != size]
