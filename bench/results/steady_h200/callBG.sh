#!/bin/bash
# call BG (2026-12-05): callBF's stage probe (set_stream now logged too), then the ComfyUI part of callAY (Stylize of a
# new style with the one-copy decoder delta). Carry [".whl", ".gpu"]; run as: bash bench/results/steady_h200/callBG.sh
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t stages
timeout 200 python3 bench/results/steady_h200/callBF_tiny.py $OUT/stages.json > $OUT/stages.txt 2>&1; echo "stages exit $?"
grep "RESULT\|Error" $OUT/stages.txt | cut -c1-600
t comfy
timeout 230 bash .gpu/comfy/run_comfy_gpu.sh > /dev/null 2>&1; echo "comfy exit $?"
grep -A200 "======== summary" $OUT/run.log | grep -v "^\s*output\|after it:\|     | StyleMamba: \(identical\|saved\|Stylize\|selective\|memory plan\|training steps may\)" | cut -c1-300 | head -30
echo "uncaptured-free warnings: $(grep -c 'uncaptured free' $OUT/comfyui.log)"
(cd $OUT && tar -czf comfy.tar.gz comfyui.log nvsmi.csv artifacts.tar.gz 2>/dev/null && rm -rf comfyui.log nvsmi.csv artifacts.tar.gz)
t done
