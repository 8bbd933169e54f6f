#!/bin/bash
# Fills the git-ignored .gpu/comfy/ with what run_comfy_gpu.sh needs on the GPU machine (no internet there):
#   comfyui-<commit>.tar.xz   git archive of the ComfyUI checkout (without tests and the 4 MiB llama tokenizer)
#   wheels/                   cp312 wheels of what ComfyUI 0.3.x imports beyond the GPU image (KINDS.md's list)
#   wheels-if-older/          typing_extensions for pydantic-core, installed only where the image's is older
#   harness/                  copies of the shared acceptance harness (comfy_harness.py, run_workflow.py)
#   run_comfy_gpu.sh          runs tools/acceptance/run_comfy_gpu.sh
#
#   bash tools/acceptance/prepare_comfy_gpu.sh [COMFY_SRC=/opt/comfyui-src] [WHEELS_FROM=/tmp/cwheels]
# Left out on purpose (their import failure only disables unrelated built-in nodes or a startup warning,
# proven by the rehearsal's --block): alembic/sqlalchemy/mako (the optional sqlite DB), kornia (Canny,
# Morphology), spandrel (upscale models), the frontend/templates/docs packages (started with --front-end-root).
set -euo pipefail
REPO=$(git rev-parse --show-toplevel)
COMFY_SRC=${1:-/opt/comfyui-src}
WHEELS_FROM=${2:-/tmp/cwheels}
DEST=$REPO/.gpu/comfy
WHEELS="av==19.0.2 torchsde==0.2.6 trampoline==0.1.2 pydantic==2.14.4 pydantic_core==2.50.5 pydantic_settings==2.16.3
        python_dotenv==1.2.4 typing_inspection==0.4.5 annotated_types==0.8.0"
grep -qx '/.gpu/' "$REPO/.git/info/exclude" 2>/dev/null || echo '/.gpu/' >> "$REPO/.git/info/exclude"
mkdir -p "$DEST/wheels" "$DEST/wheels-if-older" "$DEST/harness"

commit=$(git -C "$COMFY_SRC" rev-parse --short HEAD)
if [ ! -f "$DEST/comfyui-$commit.tar.xz" ]; then
  rm -f "$DEST"/comfyui-*.tar.xz
  idx=$(mktemp); rm -f "$idx"
  # a tree without the blob the snapshot lacks (setup.sh's sparse checkout) and without the tests
  tree=$(export GIT_INDEX_FILE=$idx; cd "$COMFY_SRC" && git read-tree HEAD &&
         git rm -q --sparse --cached --ignore-unmatch comfy/text_encoders/llama_tokenizer/tokenizer.json &&
         git rm -r -q --sparse --cached --ignore-unmatch tests tests-unit && git write-tree)
  rm -f "$idx"
  git -C "$COMFY_SRC" archive --format=tar --prefix=ComfyUI/ "$tree" | xz -6 > "$DEST/comfyui-$commit.tar.xz"
fi

pipdl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$1" "$2"; }
for spec in $WHEELS; do
  name=${spec%%==*}; ver=${spec##*==}
  ls "$DEST/wheels/${name}-${ver}"-*.whl >/dev/null 2>&1 && continue
  if ls "$WHEELS_FROM/${name}-${ver}"-*.whl >/dev/null 2>&1; then cp "$WHEELS_FROM/${name}-${ver}"-*.whl "$DEST/wheels/"
  else pipdl "$DEST/wheels" "$spec"; fi
done
ls "$DEST"/wheels-if-older/typing_extensions-4.16.0-*.whl >/dev/null 2>&1 || pipdl "$DEST/wheels-if-older" typing_extensions==4.16.0

H=${HARNESS:-$(cd "$REPO/.." && pwd)/shared/tools/comfy-acceptance}
[ -f "$H/comfy_harness.py" ] || H=/work/shared/tools/comfy-acceptance
cp "$H/comfy_harness.py" "$H/run_workflow.py" "$H/README.md" "$DEST/harness/"
cat > "$DEST/run_comfy_gpu.sh" <<'WRAP'
#!/bin/bash
# Run from the repo root: bash .gpu/comfy/run_comfy_gpu.sh [options of tools/acceptance/run_comfy_gpu.sh]
exec bash tools/acceptance/run_comfy_gpu.sh "$@"
WRAP
du -sh "$DEST" "$REPO/.whl" 2>/dev/null
ls -la "$DEST" "$DEST/wheels" "$DEST/wheels-if-older"
