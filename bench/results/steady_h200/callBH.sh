#!/bin/bash
# call BH (2026-12-05): one action per fresh process, the probe graph timed before and after (callBH_trigger.py).
# Carry [".whl"]; run as: bash bench/results/steady_h200/callBH.sh
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
for c in none malloc_big malloc_small capture_noalloc capture_alloc capture_alloc_big capture_matmul capture_conv \
         capture_randn capture_1000_nodes capture_backward capture_adam second_pool_noalloc; do
  timeout 60 python3 bench/results/steady_h200/callBH_trigger.py $c 2>&1 | grep "RESULT\|Error" | cut -c1-300
done | tee $OUT/trigger.txt
for c in none malloc_big capture_alloc; do
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout 60 python3 bench/results/steady_h200/callBH_trigger.py $c 2>&1 | grep "RESULT\|Error" | cut -c1-300
done | tee -a $OUT/trigger.txt
for m in own shared own shared; do
  timeout 120 python3 bench/results/steady_h200/callBH_tiny.py $m 2>&1 | grep "RESULT\|Error" | cut -c1-300
done | tee $OUT/tiny.txt
