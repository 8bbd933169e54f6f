"""The layering of the library, checked by reading its imports (no module is executed).

The core (every module of ``stylemamba/`` but the front end ``cli.py``/``__main__.py`` and the two
sub-packages that stand apart) never imports ``stylemamba.experiments`` (measuring) or
``stylemamba.testing`` (test models), and nothing in ``stylemamba/`` imports ComfyUI.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stylemamba"
APART = ("stylemamba.experiments", "stylemamba.testing")
FRONT_ENDS = ("stylemamba.cli", "stylemamba.__main__")
COMFY = ("comfy", "comfy_extras", "folder_paths", "server", "nodes")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved), wherever in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)  # `from . import testing`
    return found


def core_modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py"))
            if not module_name(p).startswith(APART) and module_name(p) not in FRONT_ENDS]


def test_the_scan_finds_relative_and_nested_imports(tmp_path, monkeypatch):
    fake = PACKAGE / "train.py"  # resolved as stylemamba.train, read from a temporary text
    text = "import os\nfrom . import testing\ndef f():\n    from .experiments.bench import run_bench\n"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: text)
    found = imported_modules(fake)
    assert {"os", "stylemamba.testing", "stylemamba.experiments.bench"} <= found


def test_the_core_is_most_of_the_package():
    names = {module_name(p) for p in core_modules()}
    assert {"stylemamba.train", "stylemamba.stylize", "stylemamba.losses"} <= names
    assert not any(n.startswith(APART) for n in names)


@pytest.mark.parametrize("path", core_modules(), ids=module_name)
def test_the_core_never_imports_experiments_or_testing(path):
    bad = sorted(m for m in imported_modules(path) if m.startswith(APART))
    assert not bad, f"{module_name(path)} imports {bad}: the core must not depend on measuring or test code"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=module_name)
def test_the_library_never_imports_comfyui(path):
    bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in COMFY)
    assert not bad, f"{module_name(path)} imports {bad}: only nodes/ may import ComfyUI"


# The layers of docs/DESIGN.md, top to bottom: a module imports only its own layer and those below.
LAYERS = [
    ("front ends", {"stylemamba.cli", "stylemamba.__main__"}),
    ("jobs", {"stylemamba.train", "stylemamba.stylize", "stylemamba.universal"}),
    ("model", {"stylemamba.style_model", "stylemamba.direction", "stylemamba.style_file", "stylemamba.losses",
               "stylemamba.perceptual"}),
    ("parts", {"stylemamba.fusion", "stylemamba.ssm", "stylemamba.scan_triton", "stylemamba.encoders", "stylemamba.vae",
               "stylemamba.vae_layout", "stylemamba.decoder_attention"}),
    ("policy", {"stylemamba.errors", "stylemamba.precision", "stylemamba.options", "stylemamba.mixing",
                "stylemamba.speed", "stylemamba.cuda_graphs", "stylemamba.memory_plan", "stylemamba.image_io", "stylemamba.video", "stylemamba.logs",
                "stylemamba.plots", "stylemamba.prompt_bank", "stylemamba.photo_set", "stylemamba.checkpoint", "stylemamba.distributed",
                "stylemamba.group_norm", "stylemamba.group_norm_triton", "stylemamba.triton_addresses",
                "stylemamba.stop_signals",
                "stylemamba.current_device"}),
]


def layer_of(name: str) -> int | None:
    return next((i for i, (_, names) in enumerate(LAYERS) if name in names), None)


def test_every_module_of_the_core_has_a_layer():
    missing = [module_name(p) for p in core_modules() if module_name(p) != "stylemamba" and
               layer_of(module_name(p)) is None]
    assert not missing, f"place {missing} in a layer (LAYERS here and the picture in docs/DESIGN.md)"


@pytest.mark.parametrize("path", [p for p in core_modules() if module_name(p) != "stylemamba"], ids=module_name)
def test_a_module_imports_only_its_layer_and_those_below(path):
    own = layer_of(module_name(path))
    upward = sorted(m for m in imported_modules(path) if (layer_of(m) is not None and layer_of(m) < own))
    assert not upward, f"{module_name(path)} ({LAYERS[own][0]}) imports {upward} from a layer above it"
