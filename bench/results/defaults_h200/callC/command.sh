#!/bin/bash
# call C: GPU tests; the image tower split; the benchmark of the new default step (issue 9 re-run, issue 11)
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
t tests
timeout 110 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_cuda_graphs.py tests/test_bench.py tests/test_memory_plan.py -k "gpu or cuda" > $OUT/tests.txt 2>&1
grep -v "DEBUG" $OUT/tests.txt | grep -A12 "^___" | head -40; tail -3 $OUT/tests.txt
t tower
timeout 60 python3 -m stylemamba.experiments.plan_sweep --tower --images --json $OUT/tower.json 2>&1 | grep "tower\|split:"
t bench
timeout 330 python3 -m stylemamba bench --compile off --variants mamba --repeats 2 --steps 10 --memory-caps 8 --caps-repeats 1 --json $OUT/bench.json > $OUT/bench_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/bench_log.txt | tail -45
t done
