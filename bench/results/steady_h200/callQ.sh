#!/bin/bash
# call Q: after call P's 12 GB finding (an out-of-memory replayed step took an eager smaller plan): GPU tests and
# the emulated 8 / 12 GB cards again
cd "$(dirname "$0")/.."
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t tests
timeout 150 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_cuda_graphs.py tests/test_memory_plan.py > $OUT/tests.txt 2>&1
grep -v "DEBUG" $OUT/tests.txt | grep -A25 "^___" | head -40; tail -2 $OUT/tests.txt
t caps
timeout 220 python3 -m stylemamba bench --memory-caps 8,12 --memory-caps-only --caps-repeats 2 --json $OUT/caps.json > $OUT/caps_log.txt 2>&1
grep -v "DEBUG\|Warning\|LPIPS" $OUT/caps_log.txt | tail -12
grep "memory plan\|replay\|launch\|capture\|earlier\|fit in memory\|out of memory" $OUT/caps_log.txt | cut -c1-230 | uniq -c | head -40
t done
