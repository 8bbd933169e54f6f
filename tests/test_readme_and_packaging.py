"""The README's commands and Python snippet work as written; the package declares what it imports."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# import name -> distribution name, for imports whose names differ
DISTRIBUTIONS = {"PIL": "pillow", "google": "protobuf", "skimage": "scikit-image", "av": "av",
                 "mamba_ssm": "mamba-ssm", "selective_scan_cuda": "mamba-ssm"}
COMFYUI = {"comfy", "folder_paths", "server", "comfy_api"}  # ComfyUI's own modules (the nodes run inside it)


def fenced(language: str, after: str) -> str:
    start = README.index(after)
    match = re.search(rf"```{language}\n(.*?)```", README[start:], re.S)
    return match.group(1)


@pytest.mark.slow
def test_readme_python_snippet_runs_as_written(tmp_path):
    code = fenced("python", "From Python")
    (tmp_path / "assets").symlink_to(ROOT / "assets")  # it runs from the repository root, where assets/ is
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from stylemamba.image_io import load_image
    assert load_image(tmp_path / "out" / "chelsea-starry.png").shape[1] == 3
    assert (tmp_path / "out" / "starry.safetensors").stat().st_size > 0


def test_the_two_commands_install_what_the_tests_need():
    commands = [line for line in fenced("bash", "## The two commands").splitlines() if line and line[0] != "#"]
    assert commands == ['pip install -e ".[test]" && python -m stylemamba demo --out out/demo', "python -m pytest -q"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[test]"\npython -m stylemamba demo --out out/demo' in ci and "\npython -m pytest -q" in ci
    test_extra = pyproject()["project"]["optional-dependencies"]["test"]
    assert {"pytest", "scikit-image"} <= {re.split(r"[<>=]", d)[0] for d in test_extra}


def pyproject():
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_registry_metadata():
    project = pyproject()["project"]
    assert project["name"] == "stylemamba"  # the registry id; 0.1.0 was comfyui-stylemamba
    assert project["scripts"] == {"stylemamba": "stylemamba.cli:main"}
    assert project["urls"]["Repository"].startswith("https://")
    assert project["license"] == "MIT" and "MIT License" in (ROOT / "LICENSE").read_text()
    icon = pyproject()["tool"]["comfy"]["Icon"]
    assert icon.endswith("docs/icon.png") and (ROOT / "docs" / "icon.png").is_file()


def third_party_imports(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in {"stylemamba", "__future__"}}


def test_every_third_party_import_is_declared():
    project = pyproject()["project"]
    declared = {re.split(r"[<>=\[ ;]", d)[0].lower().replace("_", "-") for d in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {re.split(r"[<>=\[ ;]", d)[0].lower().replace("_", "-") for d in extra}
    used = third_party_imports(ROOT / "stylemamba") | (third_party_imports(ROOT / "nodes") - COMFYUI)
    missing = {DISTRIBUTIONS.get(n, n).lower().replace("_", "-") for n in used} - declared
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
    requirements = {re.split(r"[<>=]", line)[0].strip() for line in (ROOT / "requirements.txt").read_text().split()}
    base = {re.split(r"[<>=\[ ]", d)[0].lower() for d in project["dependencies"]} - {"torch", "torchvision"}
    assert base == requirements  # ComfyUI-Manager installs requirements.txt (ComfyUI brings torch, torchvision)


def test_user_visible_text_cites_no_issue_numbers():
    offenders = []
    for folder in ("stylemamba", "nodes"):
        for path in (ROOT / folder).rglob("*.py"):
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"\bissues?\s*#?\d", line, re.I):
                    offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_save_style_name_rule_is_the_one_the_readme_gives():
    from stylemamba.style_file import safe_style_filename

    rule = re.search(r"The name keeps letters and digits of any language,\s+spaces and `([^`]+)`", README)
    kept = rule.group(1).split()
    assert safe_style_filename("Öl モネ 7 " + "".join(kept) + "x") == "Öl モネ 7 " + "".join(kept) + "x.safetensors"
    for other in (":", "*", "?", '"', "<", ">", "|", "%", ";", "$", "\U0001f600", "\x07"):
        assert safe_style_filename(f"a{other}b") == "a_b.safetensors", other
    assert safe_style_filename("monet/v1") == "monet_v1.safetensors"
