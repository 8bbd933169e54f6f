#!/bin/bash
# call I: graph-decision memory (GPU tests), where a new style's time goes outside its steps, saved activations
# by module (8 GB plan), and the bench of the default recipe (graphs auto) with the remembered decision
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
t tests
timeout 120 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_cuda_graphs.py > $OUT/tests.txt 2>&1
grep -v "DEBUG" $OUT/tests.txt | grep -A15 "^___" | head -40; tail -2 $OUT/tests.txt
t phases
timeout 200 python3 .gpu/callI_phases.py > $OUT/phases_log.txt 2>&1
grep -v "Warn\|warn\|DEBUG\|USDT" $OUT/phases_log.txt | tail -90
t bench
timeout 240 python3 -m stylemamba bench --compile off --cuda-graphs auto --variants mamba --repeats 4 --steps 10 --json $OUT/bench.json > $OUT/bench_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/bench_log.txt | tail -40
grep "launch\|GPU-bound\|earlier in this process" $OUT/bench_log.txt | sort | uniq -c | head
t done
