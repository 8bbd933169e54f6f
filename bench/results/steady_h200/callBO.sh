#!/bin/bash
# call BO (2026-12-05): after a process's second step graph, which graphs replay slower: kernels-only probes too, or
# only graphs with copies and fills? Host time of each replay() call too. Carry [".whl"].
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version())" | tee -a $OUT/gpu.txt
for r in 1 2; do timeout 150 python3 bench/results/steady_h200/callBO_kinds.py 2>&1 | grep "RESULT\|Error" | cut -c1-400; done | tee $OUT/kinds.txt
echo "== CUDA_MODULE_LOADING=EAGER" | tee $OUT/eager_loading.txt
CUDA_MODULE_LOADING=EAGER timeout 200 python3 bench/results/steady_h200/callBO_kinds.py 2>&1 | grep "RESULT\|Error" | cut -c1-400 | tee -a $OUT/eager_loading.txt
