#!/bin/bash
# call BJ (2026-12-05): which part of the tiny trainer's captured step slows every graph replay (callBI): the probe
# timed before and after three steps of the trainer, one recipe change per fresh process (callBH_trigger.py).
# Carry [".whl"]; run as: bash bench/results/steady_h200/callBJ.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# first, the driver's hardware queues: do later trainers replay at the first one's speed when every stream shares one
# queue (CUDA_DEVICE_MAX_CONNECTIONS=1), or with more queues (32)? (eager module loading: no change, callAV)
for e in CUDA_DEVICE_MAX_CONNECTIONS=8 CUDA_DEVICE_MAX_CONNECTIONS=1 CUDA_DEVICE_MAX_CONNECTIONS=32; do
  echo "== $e"; env $e timeout 120 python3 bench/results/steady_h200/callBH_tiny.py own 2>&1 | grep "RESULT\|Error" | cut -c1-120
done | tee $OUT/queues.txt
for o in '{}' '{"cuda_graphs": "off"}' '{"autocast_groupnorm": false}' '{"matmul_attention": false}' '{"precision": "fp32"}' '{"channels_last": false}' '{"kind": "cross_attention"}' '{"loss": {"lpips": 0.0}}' \
         '{"loss": {"patch": 0.0}}' '{"loss": {"md": 0.0}}' '{"loss": {"so": 0.0}}' \
         '{"precision": "fp32", "channels_last": false, "kind": "cross_attention", "loss": {"lpips": 0.0, "patch": 0.0, "md": 0.0, "so": 0.0}}'; do
  timeout 60 python3 bench/results/steady_h200/callBH_trigger.py "trainer_step:$o" 2>&1 | grep "RESULT\|Error" | cut -c1-400
done | tee $OUT/trainer_parts.txt
for c in copies:40 copies:400 copies_odd:40 memsets:40 memsets:400 clones:40 clones:400; do  # the trainer's node kinds
  timeout 60 python3 bench/results/steady_h200/callBH_trigger.py "$c" 2>&1 | grep "RESULT\|Error" | cut -c1-400
done | tee $OUT/node_kinds.txt
