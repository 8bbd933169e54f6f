#!/bin/bash
# call AV: which later CUDA graphs replay slower (callAV_graphs.py); the pinned-staging packaging inside ComfyUI; the
# workspace and style-model tests on the GPU.
# Carry [".whl", ".gpu"].
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
S=bench/results/steady_h200
t graphs
timeout 60 python3 $S/callAV_graphs.py > $OUT/graphs.txt 2>&1; echo "graphs exit $?"
grep "RESULT\|Error" $OUT/graphs.txt | cut -c1-300
t comfy
timeout 240 bash .gpu/comfy/run_comfy_gpu.sh > /dev/null 2>&1; echo "comfy exit $?"
grep -A200 "======== summary" $OUT/run.log | grep -v "^\s*output\|after it:\|     | StyleMamba: \(identical\|saved\|Stylize\|selective\|memory plan\|training steps may\)" | cut -c1-300 | head -30
echo "uncaptured-free warnings: $(grep -c 'uncaptured free' $OUT/comfyui.log)"
(cd $OUT && tar -czf comfy.tar.gz comfyui.log nvsmi.csv artifacts.tar.gz 2>/dev/null && rm -rf comfyui.log nvsmi.csv artifacts.tar.gz)
t tests
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_workspace.py tests/test_style_model.py > $OUT/tests.txt 2>&1; echo "tests exit $?"
tail -1 $OUT/tests.txt; grep "^FAILED\|^ERROR" $OUT/tests.txt | cut -c1-300 | head
t done
