#!/bin/bash
# call BS (2026-12-05): graph_slowdown_repro.py, the plain-PyTorch reproduction of callBO-BP3 for an upstream report,
# each case in a fresh process.
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "import torch; print(torch.__version__, torch.version.cuda)" | tee -a $OUT/gpu.txt
for c in ${CASES:-none backward warm_thread cold_thread backward}; do
  timeout 60 python3 bench/results/steady_h200/graph_slowdown_repro.py $c 2>&1 | tail -1
done | tee $OUT/repro.txt
