#!/bin/bash
# call BK (2026-12-05): callBJ found every graphed variant of the tiny trainer slowing the probe and nothing eager; the
# trainer empties torch's cache (cudaFree) before its first capture, which no earlier trigger did. Is that it?
# Carry [".whl"]; run as: bash bench/results/steady_h200/callBK.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
for c in none empty_cache empty_cache_then_capture trainer_step_keep_cache:{} trainer_step:{} trainer_step_keep_cache:{}; do
  timeout 45 python3 bench/results/steady_h200/callBH_trigger.py "$c" 2>&1 | grep "RESULT\|Error" | cut -c1-300
done | tee $OUT/free.txt
