#!/bin/bash
# call S: memory growth per style, the 8 GB 4-image capture OOM, a new style's phases; the bench with the training
# workspace; the tiny run; the compiled step with graphs
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t probe
timeout 150 python3 bench/results/steady_h200/callS_probe.py > $OUT/probe.txt 2>&1
grep -v "DEBUG\|Warn\|warn" $OUT/probe.txt | grep "MEM\|STYLE\|NEW\|  (\|CAP\|Error\|error\|capture\|fit in\|ran out" | cut -c1-300 | head -60
t bench
timeout 140 python3 -m stylemamba bench --compile off --cuda-graphs auto --variants mamba --repeats 4 --steps 10 --json $OUT/bench.json > $OUT/bench_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/bench_log.txt | grep "^| (\|Targets\|recipe_workspace" | cut -c1-200 | head -20
python3 -c "import json;r=json.load(open('$OUT/bench.json'))['results'];[print(k, v.get('recipe_s'), v.get('recipe_workspace_s'), v.get('recipe_workspace_phases_s'), v.get('step_ms',{}).get('median'), v.get('kernel_ms_per_step')) for k,v in r.items()]"
t tiny
timeout 80 python3 -m stylemamba bench --tiny --device cuda --compile off --cuda-graphs on off --variants mamba --repeats 3 --steps 10 --json $OUT/tiny.json > $OUT/tiny_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/tiny_log.txt | grep "^| (a\|^| (b\|step" | cut -c1-200 | head -12
python3 -c "import json;r=json.load(open('$OUT/tiny.json'))['results'];[print(k, v.get('step_ms',{}).get('median'), v.get('kernel_ms_per_step'), v.get('step_over_kernels'), v.get('recipe_s',{}).get('median'), v.get('recipe_workspace_s',{}).get('median')) for k,v in r.items()]"
t compiled
timeout 190 python3 -m stylemamba bench --compile default --cuda-graphs on --variants mamba --repeats 1 --steps 10 --json $OUT/bench_compiled.json > $OUT/bench_compiled_log.txt 2>&1
python3 -c "import json;r=json.load(open('$OUT/bench_compiled.json'))['results'];[print(k, v.get('recipe_first_s'), v.get('recipe_s'), v.get('recipe_workspace_s'), v.get('step_ms',{}).get('median'), v.get('kernel_ms_per_step')) for k,v in r.items()]"
tail -2 $OUT/bench_compiled_log.txt | cut -c1-300
t done
