#!/bin/bash
# call P: the final code: GPU tests, the bench's new style (graphs auto with the trial), the emulated 8 / 12 GB
# cards, the first style of a fresh process with Triton's cache warm
cd "$(dirname "$0")/.."
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t tests
timeout 120 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_cuda_graphs.py > $OUT/tests.txt 2>&1
grep -v "DEBUG" $OUT/tests.txt | grep -A25 "^___" | head -40; tail -2 $OUT/tests.txt
t bench
timeout 240 python3 -m stylemamba bench --compile off --cuda-graphs auto --variants mamba --repeats 4 --steps 10 --json $OUT/bench.json > $OUT/bench_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/bench_log.txt | grep "^| (\|Targets" | cut -c1-250 | head -20
grep "replay\|launch\|earlier in this process" $OUT/bench_log.txt | cut -c1-160 | sort | uniq -c | head
t caps
timeout 200 python3 -m stylemamba bench --memory-caps 8,12 --memory-caps-only --caps-repeats 2 --json $OUT/caps.json > $OUT/caps_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/caps_log.txt | tail -12
grep "memory plan\|replay\|launch\|capture\|earlier\|fit in memory" $OUT/caps_log.txt | cut -c1-200 | sort | uniq -c | head -20
t first_style
for i in 1 2; do timeout 60 python3 -m stylemamba.experiments.first_style --compile off 2>&1 | grep -v "DEBUG\|Warn\|warn" | tail -3; done
t done
