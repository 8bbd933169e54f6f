#!/bin/bash
# call K: the pack inside the real ComfyUI server on the H200 (four prompts), the emulated 8 / 12 GB cards again
# (cache emptied before the first capture), the first style of a fresh process (default settings, twice)
cd "$(dirname "$0")/.."
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
t comfy
timeout 330 bash .gpu/comfy/run_comfy_gpu.sh > /dev/null 2>&1; echo "comfy exit $?"
grep -A40 "=== .*summary\|======== summary" $OUT/run.log | head -60
grep -i "prompt executed\|stylemamba:" $OUT/comfyui.log | cut -c1-220 | head -40
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t first_style
for i in 1 2; do timeout 90 python3 -m stylemamba.experiments.first_style --compile off 2>&1 | grep -v "DEBUG\|Warn\|warn" | tail -4; done
t caps
timeout 200 python3 -m stylemamba bench --memory-caps 8,12 --memory-caps-only --caps-repeats 2 --json $OUT/caps.json > $OUT/caps_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/caps_log.txt | tail -12
grep "memory plan\|launch\|GPU-bound\|capture\|earlier" $OUT/caps_log.txt | cut -c1-200 | sort | uniq -c | head -20
t done
