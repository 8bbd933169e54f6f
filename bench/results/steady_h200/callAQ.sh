#!/bin/bash
# call AQ: ComfyUI with its default allocator after the quiet drops of graph-allocated tensors; ComfyUI's VAE vs the
# library's in one process (callAQ_comfy_decoder.py: where the 8-9 ms a step inside ComfyUI go); the default bench
# with channels_last the default; GPU tests of the async-allocator work; the tiny run. Carry [".whl", ".gpu"].
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
t comfy
timeout 140 bash .gpu/comfy/run_comfy_gpu.sh > /dev/null 2>&1; echo "comfy exit $?"
grep -A200 "======== summary" $OUT/run.log | grep -v "^\s*output\|after it:\|     | StyleMamba: \(identical\|saved\|Stylize\|selective\)" | cut -c1-300 | head -24
echo "uncaptured-free warnings in comfyui.log: $(grep -c 'uncaptured free' $OUT/comfyui.log)"
grep -h "Train: 20 steps" $OUT/comfyui.log | cut -c1-200
(cd $OUT && tar -czf comfy.tar.gz comfyui.log nvsmi.csv artifacts.tar.gz 2>/dev/null && rm -rf comfyui.log nvsmi.csv artifacts.tar.gz)
t decoder
PYTHONPATH=/tmp/sm-comfy/site:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 timeout 150 python3 bench/results/steady_h200/callAQ_comfy_decoder.py $OUT/comfy_decoder.json > $OUT/decoder_log.txt 2>&1; echo "decoder exit $?"
grep "RESULT\|DIFF\|dtype\|Error" $OUT/decoder_log.txt | cut -c1-260 | head -30
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t bench
timeout 170 python3 -m stylemamba bench --compile off --cuda-graphs auto --variants mamba --repeats 4 --steps 10 --json $OUT/bench.json > $OUT/bench_log.txt 2>&1
python3 -c "import json;r=json.load(open('$OUT/bench.json'))['results'];[print(k, v.get('recipe_s'), v.get('recipe_workspace_s'), v.get('step_ms',{}).get('median'), v.get('kernel_ms_per_step')) for k,v in r.items()]"
grep "^| (\|Targets" $OUT/bench_log.txt | cut -c1-200 | head -12
t tests
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_addresses.py tests/test_workspace.py > $OUT/tests.txt 2>&1; echo "tests exit $?"
tail -2 $OUT/tests.txt; grep "^FAILED\|^ERROR" $OUT/tests.txt | cut -c1-300 | head
t tiny
timeout 70 python3 -m stylemamba bench --tiny --device cuda --compile off --cuda-graphs on --variants mamba --repeats 3 --steps 20 --json $OUT/tiny.json > $OUT/tiny_log.txt 2>&1
python3 -c "import json;r=json.load(open('$OUT/tiny.json'))['results'];[print(k, v.get('step_ms',{}).get('median'), v.get('kernel_ms_per_step'), v.get('step_over_kernels')) for k,v in r.items()]"
t done
