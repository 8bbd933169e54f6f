#!/bin/bash
# call BI (2026-12-05): more single actions for callBH_trigger.py (capture while the GPU is busy, a destroyed graph,
# graphs recorded ahead, a registered generator) and the tiny trainer's steps as the reference.
# Carry [".whl"]; run as: bash bench/results/steady_h200/callBI.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
for c in capture_while_busy destroy_graph capture_twice_no_replay capture_with_generator trainer_step none; do
  timeout 90 python3 bench/results/steady_h200/callBH_trigger.py $c 2>&1 | grep "RESULT\|Error" | cut -c1-300
done | tee $OUT/trigger4.txt
