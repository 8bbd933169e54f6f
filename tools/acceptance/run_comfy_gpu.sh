#!/bin/bash
# The pack inside the REAL ComfyUI server, headless, on the GPU: train_and_stylize.json with the paper recipe on a
# 512 px photo, a re-stylise from the cache, two more styles in the warm process; times from ComfyUI's own log.
#
#   bash .gpu/comfy/run_comfy_gpu.sh                 # from the repo root, on the GPU machine (writes to $OUT)
#   OUT=/tmp/cg-out bash .gpu/comfy/run_comfy_gpu.sh --tiny --cpu --no-wheels --python /opt/comfy-venv/bin/python \
#       --block alembic,sqlalchemy,mako,kornia,kornia_rs,spandrel,comfyui_frontend_package     # CPU rehearsal
#
# Needs (built by tools/acceptance/prepare_comfy_gpu.sh): .gpu/comfy/comfyui-*.tar.xz (git archive of ComfyUI),
# .gpu/comfy/wheels/*.whl (what ComfyUI needs beyond the GPU image), .gpu/comfy/harness/comfy_harness.py, and
# .whl/*.whl (diffusers, lpips). Carry [".whl", ".gpu"].
# Options: --tiny (tiny SigLIP, 128 px photos, 2 epochs at 64 px), --cpu (ComfyUI --cpu), --no-wheels (use the
# interpreter's packages), --python PY, --block a,b (make these modules unimportable: proves they are optional),
# --again "ARGS" (afterwards a second server started with these ComfyUI arguments, e.g. "--disable-cuda-malloc",
# runs prompts 1, 3 and 4 again: results in $OUT/again/), --args "ARGS" (ComfyUI arguments for the first
# server; both split on spaces).
# $OUT gets: run.log (everything printed), comfyui.log, summary.json, nvsmi.csv, artifacts.tar.gz.
set -uo pipefail
REPO=$(pwd)
HERE=$REPO/.gpu/comfy
OUT=${OUT:-/tmp/out}
WORK=${SM_COMFY_WORK:-/tmp/sm-comfy}
PY=python3; TINY=(); CPU=(); WHEELS=1; BLOCK=""; BUDGET=360; AGAIN=""; FIRST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) TINY=(--tiny); BUDGET=1500 ;;
    --cpu) CPU=(--cpu) ;;
    --no-wheels) WHEELS=0 ;;
    --python) PY=$2; shift ;;
    --block) BLOCK=$2; shift ;;
    --again) AGAIN=$2; shift ;;
    --args) for a in $2; do FIRST_ARGS+=("--comfy-arg=$a"); done; shift ;;
    *) echo "unknown option $1 (see the header of tools/acceptance/run_comfy_gpu.sh)"; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
T0=$(date +%s)
STEP=start
NVSMI_PID=""
step() { STEP="$*"; echo; echo "=== [$(date -u +%T) +$(( $(date +%s) - T0 ))s] $STEP"; }
finish() {
  rc=$?
  [ -n "$NVSMI_PID" ] && kill "$NVSMI_PID" 2>/dev/null
  if [ -d "$WORK/run" ]; then
    tar -czf "$OUT/artifacts.tar.gz" -C "$WORK" --exclude='run/base/models' --exclude='run/base/custom_nodes' \
      run/results run/api_prompt1.json wf.json models.log 2>/dev/null
  fi
  if [ -s "$OUT/nvsmi.csv" ]; then
    echo "GPU memory used, peak over the run (nvidia-smi, MiB): $(cut -d, -f2 "$OUT/nvsmi.csv" | sort -n | tail -1)"
    echo "GPU utilisation, peak (%): $(cut -d, -f3 "$OUT/nvsmi.csv" | sort -n | tail -1)"
  fi
  if [ "$rc" -ne 0 ]; then echo "!!! FAILED (exit $rc) at step: $STEP"; else echo "=== all steps done"; fi
  echo "total wall time: $(( $(date +%s) - T0 )) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
  exit "$rc"
}
trap finish EXIT
die() { echo "!!! $*"; exit 1; }

step "0 where we are"
[ -f "$REPO/__init__.py" ] && [ -d "$REPO/stylemamba" ] && [ -d "$REPO/nodes" ] || die "run this from the pack's repo root (no __init__.py/stylemamba/nodes in $REPO)"
ls "$HERE"/comfyui-*.tar.xz >/dev/null 2>&1 || die "no $HERE/comfyui-*.tar.xz: run tools/acceptance/prepare_comfy_gpu.sh and carry .gpu"
[ -f "$HERE/harness/comfy_harness.py" ] || die "no $HERE/harness/comfy_harness.py: run tools/acceptance/prepare_comfy_gpu.sh"
echo "repo $REPO ($(git -C "$REPO" log --oneline -1 2>/dev/null || echo 'no git')); OUT=$OUT; work $WORK; python $PY"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
rm -rf "$WORK"; mkdir -p "$WORK"

step "1 wheels"
SITE=$WORK/site
if [ "$WHEELS" = 1 ]; then
  ls "$REPO"/.whl/*.whl "$HERE"/wheels/*.whl >/dev/null || die "wheels missing: carry .whl and .gpu"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$REPO"/.whl/*.whl "$HERE"/wheels/*.whl || die "pip install of the carried wheels failed"
  # pydantic-core needs typing_extensions >= 4.16 (Sentinel); install ours only where the image's is older
  if ls "$HERE"/wheels-if-older/typing_extensions-*.whl >/dev/null 2>&1 && ! "$PY" -c "import typing_extensions as t; assert hasattr(t, 'Sentinel')" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$HERE"/wheels-if-older/typing_extensions-*.whl || die "pip install typing_extensions failed"
    echo "installed typing_extensions from wheels-if-older (the image's has no Sentinel)"
  fi
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
else
  echo "skipped (--no-wheels): using $PY's own packages"
fi
if [ -n "$BLOCK" ]; then  # a sitecustomize that refuses these imports, in every process started from here
  mkdir -p "$WORK/block"
  cat > "$WORK/block/sitecustomize.py" <<PYEOF
# Hides these packages as if they were not installed (import and importlib.metadata): path lookups skip them.
import sys
from importlib.machinery import PathFinder
BLOCKED = set("$BLOCK".split(","))
class _Hide:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] in BLOCKED else PathFinder.find_spec(name, path, target)
    @classmethod
    def invalidate_caches(cls):
        PathFinder.invalidate_caches()
    @classmethod
    def find_distributions(cls, *args, **kwargs):
        return (d for d in PathFinder.find_distributions(*args, **kwargs)
                if (d.metadata["Name"] or "").lower().replace("-", "_") not in BLOCKED)
sys.meta_path[:] = [_Hide if f is PathFinder else f for f in sys.meta_path]
PYEOF
  export PYTHONPATH=$WORK/block${PYTHONPATH:+:$PYTHONPATH}
  echo "blocked modules: $BLOCK"
fi
"$PY" - <<'PYEOF' || die "a package ComfyUI or the pack needs does not import (see above)"
import importlib, sys
for name in ("torch", "torchvision", "transformers", "diffusers", "lpips", "av", "torchsde", "pydantic",
             "pydantic_settings", "sentencepiece", "safetensors", "aiohttp", "yarl", "einops", "scipy", "psutil"):
    m = importlib.import_module(name)
    print(f"  {name:18s} {getattr(m, '__version__', '?'):14s} {getattr(m, '__file__', '')}")
import torch
print(f"  python {sys.version.split()[0]}, CUDA available: {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
PYEOF

step "2 ComfyUI source"
tar -xJf "$(ls "$HERE"/comfyui-*.tar.xz | head -1)" -C "$WORK" || die "cannot extract the ComfyUI tarball"
[ -f "$WORK/ComfyUI/main.py" ] || die "the tarball has no ComfyUI/main.py"
grep -m1 -o '__version__ = "[^"]*"' "$WORK/ComfyUI/comfyui_version.py" || true
ln -s "$REPO" "$WORK/ComfyUI-StyleMamba"   # the harness links this into custom_nodes/ (module name ComfyUI-StyleMamba)

step "3 models (random weights, real architectures) and photos"
timeout 300 "$PY" "$REPO/tools/acceptance/comfy_gpu_models.py" "$WORK/models" "$WORK/input" "$WORK/wf.json" "${TINY[@]}" \
    > "$WORK/models.log" 2>&1
rc=$?; grep -v '^Writing model shards' "$WORK/models.log" | tail -25
[ $rc -eq 0 ] || die "building the models failed (exit $rc)"

step "4 ComfyUI server: four prompts"
if command -v nvidia-smi >/dev/null && [ ${#CPU[@]} -eq 0 ]; then
  nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader,nounits -lms 250 > "$OUT/nvsmi.csv" &
  NVSMI_PID=$!
fi
"$PY" "$REPO/tools/acceptance/comfy_gpu_run.py" --harness "$HERE/harness" --comfy "$WORK/ComfyUI" \
    --pack "$WORK/ComfyUI-StyleMamba" --models "$WORK/models" --input "$WORK/input/astronaut.png" \
    --input "$WORK/input/cat.png" --workflow "$WORK/wf.json" --out "$OUT" --run-dir "$WORK/run" \
    --budget "$BUDGET" "${FIRST_ARGS[@]}" "${TINY[@]}" "${CPU[@]}" || die "the ComfyUI run did not pass (see the summary above)"

if [ -n "$AGAIN" ]; then
  step "5 a second ComfyUI server with $AGAIN: prompts 1, 3, 4"
  AGAIN_ARGS=()
  for a in $AGAIN; do AGAIN_ARGS+=("--comfy-arg=$a"); done
  "$PY" "$REPO/tools/acceptance/comfy_gpu_run.py" --harness "$HERE/harness" --comfy "$WORK/ComfyUI" \
      --pack "$WORK/ComfyUI-StyleMamba" --models "$WORK/models" --input "$WORK/input/astronaut.png" \
      --input "$WORK/input/cat.png" --workflow "$WORK/wf.json" --out "$OUT/again" --run-dir "$WORK/run2" \
      --budget "$BUDGET" --prompts 1,3,4 "${AGAIN_ARGS[@]}" "${TINY[@]}" "${CPU[@]}" \
      || die "the second ComfyUI run ($AGAIN) did not pass (see the summary above)"
fi
