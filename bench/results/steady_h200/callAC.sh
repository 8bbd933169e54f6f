#!/bin/bash
# call AC: the emulated 8 GB / 12 GB cards and the tiny run with the decoder trained in channels_last (the new default)
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t caps
timeout 200 python3 -m stylemamba bench --memory-caps 8,12 --memory-caps-only --caps-repeats 2 --json $OUT/caps.json > $OUT/caps_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/caps_log.txt | tail -9
grep "memory plan\|replay\|capture\|fit in memory\|ran out" $OUT/caps_log.txt | cut -c1-200 | sort | uniq -c | head -20
t tiny
timeout 90 python3 -m stylemamba bench --tiny --device cuda --compile off --cuda-graphs on off --variants mamba --repeats 3 --steps 10 --json $OUT/tiny.json > $OUT/tiny_log.txt 2>&1
python3 -c "import json;r=json.load(open('$OUT/tiny.json'))['results'];[print(k, v.get('step_ms',{}).get('median'), v.get('kernel_ms_per_step'), v.get('step_over_kernels'), v.get('recipe_s',{}).get('median'), v.get('recipe_workspace_s',{}).get('median')) for k,v in r.items()]"
t done
