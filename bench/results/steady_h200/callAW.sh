#!/bin/bash
# call AW: the graph of a restarted style's first step recorded when the workspace keeps the trainer
# (StyleTrainer.record_restart_step): GPU tests, the nodes inside ComfyUI (the first restart was ~0.12 s slower than
# the next ones: it captured that graph), the default bench with the new packaging. Carry [".whl", ".gpu"].
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t tests
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_workspace.py tests/test_cuda_graphs.py tests/test_triton_addresses.py > $OUT/tests.txt 2>&1; echo "tests exit $?"
tail -1 $OUT/tests.txt; grep "^FAILED\|^ERROR\|^E  " $OUT/tests.txt | cut -c1-300 | head
t comfy
timeout 200 bash .gpu/comfy/run_comfy_gpu.sh > /dev/null 2>&1; echo "comfy exit $?"
grep -A200 "======== summary" $OUT/run.log | grep -v "^\s*output\|after it:\|     | StyleMamba: \(identical\|saved\|Stylize\|selective\|memory plan\|training steps may\)" | cut -c1-300 | head -30
echo "uncaptured-free warnings: $(grep -c 'uncaptured free' $OUT/comfyui.log)"
(cd $OUT && tar -czf comfy.tar.gz comfyui.log nvsmi.csv artifacts.tar.gz 2>/dev/null && rm -rf comfyui.log nvsmi.csv artifacts.tar.gz)
t bench
timeout 170 python3 -m stylemamba bench --compile off --cuda-graphs auto --variants mamba --repeats 4 --steps 10 --json $OUT/bench.json > $OUT/bench_log.txt 2>&1; echo "bench exit $?"
python3 -c "import json;r=json.load(open('$OUT/bench.json'))['results'];[print(k, v.get('recipe_s'), v.get('recipe_workspace_s'), v.get('recipe_workspace_phases_s'), v.get('step_ms',{}).get('median'), v.get('kernel_ms_per_step')) for k,v in r.items()]"
t done
