#!/bin/bash
# call N: where a new style's time goes inside ComfyUI (per-node times from the websocket, the Train node's phases;
# default allocator, then --disable-cuda-malloc), the same training in the library under the conditions ComfyUI
# adds (cudaMallocAsync, a preview every step), and the Stylize node against the library (bench/gpu_nodes.py)
cd "$(dirname "$0")/.."
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
t comfy
timeout 300 bash .gpu/comfy/run_comfy_gpu.sh --again "--disable-cuda-malloc" > /dev/null 2>&1; echo "comfy exit $?"
grep -A200 "======== summary" $OUT/run.log | grep -v "^\s*output\|after it:\|     | StyleMamba: \(identical\|saved\|Stylize\|selective\)" | cut -c1-330 | head -70
(cd $OUT && tar -czf comfy.tar.gz comfyui.log again nvsmi.csv artifacts.tar.gz && rm -rf comfyui.log again nvsmi.csv artifacts.tar.gz)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t conditions
for c in "native-auto-nopreview|--cuda-graphs auto" "native-auto-preview|--cuda-graphs auto --preview-every 1" \
         "native-eager-preview|--cuda-graphs off --preview-every 1" "async-preview|--preview-every 1 ASYNC" \
         "async-nopreview|ASYNC"; do
  label=${c%%|*}; a=${c#*|}; env=()
  case "$a" in *ASYNC*) env=(PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync); a=${a% ASYNC}; a=${a#ASYNC} ;; esac
  env "${env[@]}" timeout 90 python3 bench/new_style_conditions.py --runs 4 --label $label $a 2>>$OUT/conditions_err.txt | tee -a $OUT/conditions.txt
  t "$label done"
done
tail -5 $OUT/conditions_err.txt | cut -c1-200
t nodes
timeout 150 python3 bench/gpu_nodes.py > $OUT/gpu_nodes_log.txt 2>&1; echo "gpu_nodes exit $?"
grep -v "Warn\|warn\|DEBUG" $OUT/gpu_nodes_log.txt | grep -A12 "stylize_one_image\|train_runs" | cut -c1-200 | head -40
t done
