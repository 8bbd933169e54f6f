#!/bin/bash
# call AG: the nodes inside ComfyUI after the out-of-place SiLU and the LPIPS content features kept per style
# (--disable-cuda-malloc second server); the tiny run's step with the longer warm-up; the default bench
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
t comfy
timeout 300 bash .gpu/comfy/run_comfy_gpu.sh --again "--disable-cuda-malloc" > /dev/null 2>&1; echo "comfy exit $?"
grep -A200 "======== summary" $OUT/run.log | grep -v "^\s*output\|after it:\|     | StyleMamba: \(identical\|saved\|Stylize\|selective\)" | cut -c1-330 | head -40
grep -h "workspace\|Train: 20 steps\|replay" $OUT/comfyui.log $OUT/again/comfyui.log 2>/dev/null | cut -c1-300 | head -14
(cd $OUT && tar -czf comfy.tar.gz comfyui.log again nvsmi.csv artifacts.tar.gz && rm -rf comfyui.log again nvsmi.csv artifacts.tar.gz)
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t tiny
timeout 70 python3 -m stylemamba bench --tiny --device cuda --compile off --cuda-graphs on --variants mamba --repeats 3 --steps 20 --json $OUT/tiny.json > $OUT/tiny_log.txt 2>&1
python3 -c "import json;r=json.load(open('$OUT/tiny.json'))['results'];[print(k, v.get('step_ms',{}).get('median'), v.get('kernel_ms_per_step'), v.get('step_over_kernels')) for k,v in r.items()]"
t bench
timeout 170 python3 -m stylemamba bench --compile off --cuda-graphs auto --variants mamba --repeats 4 --steps 10 --json $OUT/bench.json > $OUT/bench_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/bench_log.txt | grep "^| (\|Targets\|recipe_workspace" | cut -c1-200 | head -24
python3 -c "import json;r=json.load(open('$OUT/bench.json'))['results'];[print(k, v.get('recipe_s'), v.get('recipe_workspace_s'), v.get('recipe_workspace_phases_s'), v.get('step_ms',{}).get('median'), v.get('kernel_ms_per_step')) for k,v in r.items()]"
t done
