#!/bin/bash
# call BM (2026-12-05): later styles in the first trainer's workspace against later fresh trainers. Carry [".whl"].
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for r in 1 2; do timeout 120 python3 bench/results/steady_h200/callBM_workspace.py 2>&1 | grep "RESULT\|Error" | cut -c1-300; done | tee $OUT/workspace.txt
