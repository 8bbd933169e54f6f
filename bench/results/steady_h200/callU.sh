#!/bin/bash
# call U: the nodes inside ComfyUI 0.3.64 with the training workspace (default allocator, then
# --disable-cuda-malloc); the first style of a fresh process (Triton cache warm)
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
t comfy
timeout 330 bash .gpu/comfy/run_comfy_gpu.sh --again "--disable-cuda-malloc" > /dev/null 2>&1; echo "comfy exit $?"
grep -A200 "======== summary" $OUT/run.log | grep -v "^\s*output\|after it:\|     | StyleMamba: \(identical\|saved\|Stylize\|selective\)" | cut -c1-330 | head -40
grep -A200 "======== summary" $OUT/run.log | grep "OK \|FAIL\|nodes (s)\|Train:\|replay\|launch\|workspace" | cut -c1-330 | tail -14
grep -h "workspace\|Train: 20 steps" $OUT/comfyui.log $OUT/again/comfyui.log 2>/dev/null | cut -c1-300 | head -12
(cd $OUT && tar -czf comfy.tar.gz comfyui.log again nvsmi.csv artifacts.tar.gz && rm -rf comfyui.log again nvsmi.csv artifacts.tar.gz)
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t first_style
for i in 1 2; do timeout 60 python3 -m stylemamba.experiments.first_style --compile off 2>&1 | grep -v "DEBUG\|Warn\|warn" | tail -3; done
t done
