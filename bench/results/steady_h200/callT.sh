#!/bin/bash
# call T: GPU tests (workspace, one capture stream), the emulated cards after the leak fix, the compiled step
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t tests
timeout 150 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_cuda_graphs.py tests/test_workspace.py tests/test_memory_plan.py > $OUT/tests.txt 2>&1
grep -v "DEBUG" $OUT/tests.txt | grep -A25 "^___" | head -50; tail -2 $OUT/tests.txt
t caps
timeout 170 python3 -m stylemamba bench --memory-caps 8,12 --memory-caps-only --caps-repeats 2 --json $OUT/caps.json > $OUT/caps_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/caps_log.txt | tail -9
grep "memory plan\|replay\|launch\|capture\|earlier\|fit in memory\|ran out" $OUT/caps_log.txt | cut -c1-200 | sort | uniq -c | head -20
t compiled
timeout 240 python3 bench/results/steady_h200/callT_compiled.py $OUT/compiled.json > $OUT/compiled_log.txt 2>&1
grep "RESULT\|Error\|error" $OUT/compiled_log.txt | cut -c1-400 | head
t done
