#!/bin/bash
# call BP (2026-12-05): which capture puts every graph of a process into callBO's slow mode? One case per process,
# a 1,600-node kernels-only probe timed before and after. Carry [".whl"].
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
for c in ${CASES:-none tiny_trainer bwd_small bwd_big_grads bwd_many_nodes bwd_many_nodes_big_grads \
    fwd_many_nodes_big_alloc thread_alloc thread_kernels}; do
  timeout 120 python3 bench/results/steady_h200/callBP_trigger.py $c 2>&1 | grep "RESULT\|Error" | cut -c1-300
done | tee $OUT/trigger.txt
# callBP2: CASES="..." bash callBP.sh, and PROBE_LATE=1 (the case's capture first, the probe's second)
