#!/bin/bash
# call D: GPU tests (graphed L_so fix, tower checkpointing); plan sweeps with tower checkpointing; compiled bench
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
t tests
timeout 120 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_cuda_graphs.py tests/test_memory_plan.py -k "gpu or cuda" > $OUT/tests.txt 2>&1
grep -v "DEBUG" $OUT/tests.txt | grep -A15 "^___" | head -50; tail -3 $OUT/tests.txt
t sweep
timeout 200 python3 -m stylemamba.experiments.plan_sweep --tower --images 1 4 --repeats 1 --plans 1,0,off 1,0,off,on 1,0,on 1,0,on,on 4,0,off,on 2,0,off,on 1,0,off,on 4,0,on,on --json $OUT/sweep.json 2>&1 | grep "tower\|{"
t cap8
timeout 80 python3 -m stylemamba.experiments.plan_sweep --cap 8 --images 1 4 --repeats 1 --plans 1,0,off,on 1,0,on,on 1,0,off,on 4,0,on,on --json $OUT/cap8.json 2>&1 | grep "{"
t bench-compiled
timeout 260 python3 -m stylemamba bench --compile default --variants mamba --repeats 2 --steps 10 --json $OUT/bench_compiled.json > $OUT/bench_compiled.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/bench_compiled.txt | tail -30
t first-style-warm
timeout 60 python3 -m stylemamba.experiments.first_style --compile default 2>&1 | grep "{"
t done
