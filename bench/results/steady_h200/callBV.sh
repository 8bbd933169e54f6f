#!/bin/bash
# call BV (2026-12-05): does the slow mode need two graphs alive at once? Plain (callBT "side" step graph, then a
# second graph, with or without the first destroyed before) and tiny trainers (each freed before the next, or
# kept). Carry [".whl"].
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
for c in plain trainers; do for f in "" 1; do
  FREE=$f timeout 120 python3 bench/results/steady_h200/callBV_freed.py $c 2>&1 | grep "RESULT\|Error" | cut -c1-200
done; done | tee $OUT/freed.txt
