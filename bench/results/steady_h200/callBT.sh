#!/bin/bash
# call BT (2026-12-05): which difference between callBS's `backward` (no slowdown) and callBP's bwd_small (slowdown):
# the warm-up's stream, gradients set to None before the capture, warm-up count, the model, autograd.grad.
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
for v in plain none side side_none warm3 tanh input input_side tanh_side_none_warm3 plain; do
  timeout 60 python3 bench/results/steady_h200/callBT_backward.py $v 2>&1 | tail -1
done | tee $OUT/backward.txt
