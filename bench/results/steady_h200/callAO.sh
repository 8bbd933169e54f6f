#!/bin/bash
# call AO (run 2026-12-04, results in callAO/): (1) the compiled and eager steps with the final LPIPS code (features kept as the
# backbone returns them, normalised each step; callAF measured them kept normalised); (2) call AN's ComfyUI run
# with the decoder trained in channels_last. For (2) set `channels_last: bool = True` in stylemamba/train.py in the
# working tree for this call only; (1) sets its layouts itself. Carry [".whl", ".gpu"]. About 300 s.
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
grep -n "channels_last: bool" stylemamba/train.py
t steps
timeout 200 python3 bench/results/steady_h200/callT_compiled.py $OUT/steps.json off:nchw,off:cl,default:cl:k > $OUT/steps_log.txt 2>&1
grep "RESULT\|Error\|error" $OUT/steps_log.txt | cut -c1-300 | head
t comfy
timeout 140 bash .gpu/comfy/run_comfy_gpu.sh --args "--disable-cuda-malloc" > /dev/null 2>&1; echo "comfy exit $?"
grep -A200 "======== summary" $OUT/run.log | grep -v "^\s*output\|after it:\|     | StyleMamba: \(identical\|saved\|Stylize\|selective\)" | cut -c1-300 | head -30
grep -h "Train: 20 steps\|replay\|workspace\|Error\|error" $OUT/comfyui.log 2>/dev/null | cut -c1-250 | head -12
(cd $OUT && tar -czf comfy.tar.gz comfyui.log nvsmi.csv artifacts.tar.gz 2>/dev/null && rm -rf comfyui.log nvsmi.csv artifacts.tar.gz)
t done
