#!/bin/bash
# call AE: the final code's GPU tests (incl. the reworked workspace memory test); where the step copies (eager, NCHW
# and channels_last); the emulated 8 GB card with the final default
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t tests
timeout 210 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_group_norm.py tests/test_cuda_graphs.py tests/test_workspace.py tests/test_precision.py > $OUT/tests.txt 2>&1
grep -v "DEBUG\|WARNING\|INFO" $OUT/tests.txt | grep -A25 "^___" | head -40; tail -2 $OUT/tests.txt
t copies
timeout 120 python3 bench/results/steady_h200/callAE_copies.py $OUT/copies.json cl,nchw > $OUT/copies_log.txt 2>&1
grep -v "Warning\|warn" $OUT/copies_log.txt | head -150 | cut -c1-170
t caps
timeout 190 python3 -m stylemamba bench --memory-caps 8 --memory-caps-only --caps-repeats 2 --json $OUT/caps.json > $OUT/caps_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/caps_log.txt | tail -6
t done
