#!/bin/bash
# call AS: the nodes inside ComfyUI with its default allocator (cudaMallocAsync: steps now replay as CUDA graphs) and
# five previews per training run, then a second server with --disable-cuda-malloc (prompts 1, 3, 4 again).
# Carry [".whl", ".gpu"].
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
t comfy
timeout 300 bash .gpu/comfy/run_comfy_gpu.sh --again "--disable-cuda-malloc" > /dev/null 2>&1; echo "comfy exit $?"
grep -A200 "======== summary" $OUT/run.log | grep -v "^\s*output\|after it:\|     | StyleMamba: \(identical\|saved\|Stylize\|selective\|memory plan\|training steps may\)" | cut -c1-300 | head -40
echo "uncaptured-free warnings: $(grep -c 'uncaptured free' $OUT/comfyui.log) (default allocator), $(grep -c 'uncaptured free' $OUT/again/comfyui.log 2>/dev/null) (again)"
grep -h "Train: 20 steps\|replay\|eagerly" $OUT/comfyui.log $OUT/again/comfyui.log 2>/dev/null | cut -c1-200 | head -12
(cd $OUT && tar -czf comfy.tar.gz comfyui.log again nvsmi.csv artifacts.tar.gz 2>/dev/null && rm -rf comfyui.log again nvsmi.csv artifacts.tar.gz)
t done
