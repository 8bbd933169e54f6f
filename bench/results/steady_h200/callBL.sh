#!/bin/bash
# call BL (2026-12-05): callBK: emptying the cache is not the trigger (the trainer with empty_cache a no-op still
# slows the probe). callBB-BE: a few dozen eager operations on a NON-default stream slow every later replay. A graph's
# host<->device copies (copy engine) or parallel branches may run outside the launching stream: does one of them
# slow the probe, and what nodes does the tiny trainer's step graph hold (DOT dumps)?
# Carry [".whl"]; run as: bash bench/results/steady_h200/callBL.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
for c in ${CASES:-none h2d:40 d2h:40 fork:80 fork:320 h2d:4}; do
  timeout 45 python3 bench/results/steady_h200/callBH_trigger.py "$c" 2>&1 | grep "RESULT\|Error\|STREAM\|APIS\|ODD" | cut -c1-${CUT:-300}
done | tee $OUT/kinds.txt
[ -n "$NODUMP" ] && exit 0
mkdir -p $OUT/dot
DUMP_GRAPHS=$OUT/dot timeout 90 python3 bench/results/steady_h200/callBH_trigger.py "trainer_step:{}" 2>&1 \
  | grep "RESULT\|Error\|DUMP\|Warn" | cut -c1-300 | tee $OUT/dump.txt
for f in $OUT/dot/*.dot; do
  echo "$f lines=$(wc -l < $f) edges=$(grep -c -- '->' $f)"
  grep -o 'label="[A-Z_]*' $f | sort | uniq -c
  grep -oE '^"[^"]+" -> ' $f | sort | uniq -c | awk '$1>1' | wc -l | sed 's/^/fan-out nodes: /'
  gzip -f $f
done | tee $OUT/dot_summary.txt
ls -la $OUT/dot
