#!/bin/bash
# call BQ (2026-12-05): step graphs captured on autograd's own thread (cuda_graphs.on_autograd_thread): fresh
# trainers and restarts against the old capture (CONTROL=1); the tiny bench; the GPU tests. Carry [".whl"].
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
t trainers
for c in "" 1 ""; do CONTROL=$c timeout 120 python3 bench/results/steady_h200/callBQ_trainers.py 2>&1 \
  | grep "RESULT\|Error" | cut -c1-300; done | tee $OUT/trainers.txt
t tiny bench
timeout 90 python3 -m stylemamba bench --tiny --device cuda --compile off --cuda-graphs on --variants mamba \
  --repeats 3 --steps 20 --json $OUT/tiny.json > $OUT/tiny_log.txt 2>&1; echo "tiny bench exit $?"
python3 -c "import json;r=json.load(open('$OUT/tiny.json'))['results'];[print(k, v.get('step_ms',{}).get('median'),
  v.get('kernel_ms_per_step')) for k,v in r.items()]"
t tests
timeout 240 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_cuda_graphs.py \
  tests/test_workspace.py > $OUT/tests.txt 2>&1; echo "tests exit $?"
grep "^FAILED\|^ERROR\|^E  " $OUT/tests.txt | cut -c1-300 | head -20; tail -1 $OUT/tests.txt
t done
