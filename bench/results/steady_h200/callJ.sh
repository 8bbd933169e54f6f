#!/bin/bash
# call J: memory plans replayed as CUDA graphs (GPU tests), the plans' times with graphs (plan_sweep, 1 image),
# the emulated 8 and 12 GB cards (bench --memory-caps-only)
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
t tests
timeout 150 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_cuda_graphs.py tests/test_memory_plan.py tests/test_train.py -k "gpu or cuda or reported" > $OUT/tests.txt 2>&1
grep -v "DEBUG" $OUT/tests.txt | grep -A25 "^___" | head -60; tail -2 $OUT/tests.txt
t sweep
timeout 200 python3 -m stylemamba.experiments.plan_sweep --images 1 --plans 1,0,off,off 1,0,off,on 1,0,on,off 1,0,on,on --repeats 2 --json $OUT/sweep.json > $OUT/sweep_log.txt 2>&1
grep -v "DEBUG\|Warn\|warn" $OUT/sweep_log.txt | grep "^{" | cut -c1-400
grep "launch\|GPU-bound\|capture\|earlier" $OUT/sweep_log.txt | sort | uniq -c | head
t caps
timeout 230 python3 -m stylemamba bench --memory-caps 8,12 --memory-caps-only --caps-repeats 2 --json $OUT/caps.json > $OUT/caps_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/caps_log.txt | tail -14
grep "memory plan\|launch\|GPU-bound\|capture\|earlier" $OUT/caps_log.txt | sort | uniq -c | head -20
t done
