"""Shared test fixtures: tiny real models built once per session, real photos, fixed seeds.

Tests run offline on 2 CPU cores: no hub access (set before any Hugging Face import), two torch
threads, and every model comes from ``stylemamba.testing.tiny_models`` through the real loaders.
"""

from __future__ import annotations

import os
import tempfile

# Must be set before huggingface_hub / transformers / diffusers are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# compiling points Inductor at ~/.cache/stylemamba (speed.use_persistent_compile_cache): not from the tests
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "stylemamba-tests-inductor"))

import functools
import random
import signal
from pathlib import Path
from typing import Callable, Dict, List, Tuple, Union

import numpy as np
import pytest
import torch
import torch.nn.functional as F

torch.set_num_threads(2)

# A runner that starts the tests as a background job without job control ignores SIGINT (and may ignore SIGTERM):
# the library then leaves them ignored, as asked, and the Ctrl-C / kill tests (here and in the commands they start,
# which inherit an ignored signal) would wait for a stop that never comes. The tests play a user at a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

# Photos shipped inside scikit-image's wheel (others in skimage.data are downloaded on demand).
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket")

Size = Union[int, Tuple[int, int]]


@functools.lru_cache(maxsize=None)
def _photo_cached(name: str, size: Tuple[int, int]) -> torch.Tensor:
    import skimage.data

    if name not in PHOTO_NAMES:
        raise ValueError(f"unknown photo {name!r}; choose from {PHOTO_NAMES}")
    arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    img = torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1)[None].float() / 255.0
    h, w = img.shape[-2:]
    th, tw = size
    # centre-crop to the target aspect ratio, then an anti-aliased resize
    if h * tw > w * th:
        ch = round(w * th / tw)
        top = (h - ch) // 2
        img = img[..., top:top + ch, :]
    else:
        cw = round(h * tw / th)
        left = (w - cw) // 2
        img = img[..., :, left:left + cw]
    img = F.interpolate(img, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
    return img.clamp(0.0, 1.0)


def load_photo(name: str = "astronaut", size: Size = 64) -> torch.Tensor:
    """A real photo as a ``(1, 3, H, W)`` float tensor in [0, 1] (a fresh copy each call)."""
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return _photo_cached(name, hw).clone()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Dict[str, Path]:
    """Paths of the tiny models (keys: vae, vae_ldm, siglip, clip, vgg19, manifest), built once."""
    from stylemamba.testing.tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"), seed=0)


# Photos handed out by the session-scoped fixtures, with a pristine copy of each, so that a test
# modifying one in place fails at once instead of silently changing the inputs of later tests.
_SHARED_PHOTOS: List[Tuple[torch.Tensor, torch.Tensor]] = []


def _shared(img: torch.Tensor) -> torch.Tensor:
    _SHARED_PHOTOS.append((img, img.clone()))
    return img


@pytest.fixture(scope="session")
def photo() -> torch.Tensor:
    """The astronaut photo, ``(1, 3, 64, 64)`` in [0, 1]. Shared: ``.clone()`` before editing."""
    return _shared(load_photo("astronaut", 64))


@pytest.fixture(scope="session")
def photo_batch() -> torch.Tensor:
    """Two different photos (astronaut, chelsea the cat), ``(2, 3, 64, 64)`` in [0, 1]. Shared."""
    return _shared(torch.cat([load_photo("astronaut", 64), load_photo("chelsea", 64)], dim=0))


@pytest.fixture(scope="session")
def photo_loader() -> Callable[..., torch.Tensor]:
    """``load_photo(name="astronaut", size=64)`` for tests that need other photos or sizes."""
    return load_photo


@pytest.fixture(autouse=True)
def _fixed_seeds_and_untouched_photos():
    """Every test starts from the same random state, and must leave the shared photos unchanged."""
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    yield
    for img, pristine in _SHARED_PHOTOS:
        if img.requires_grad or img.shape != pristine.shape or not torch.equal(img.detach(), pristine):
            img.requires_grad_(False)
            img.grad = None
            img.data = pristine.clone()  # repair it for the tests that follow
            pytest.fail("this test modified a shared photo fixture in place; use photo.clone()")


def import_pack(name: str):
    """Import the node pack the way ComfyUI does: a package from the repository root's __init__.py."""
    import importlib.util
    import sys

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
