#!/bin/bash
# call AR: the GPU tests of the cudaMallocAsync work after the fixes of callAQ (the workspace's memory counted and
# given back under that allocator, the graph memory trimmed on release); whether the Train node's progress report
# (loss text and a preview image every step) stalls the graphed steps (callAR_previews.py). Carry [".whl"].
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t previews
timeout 200 python3 bench/results/steady_h200/callAR_previews.py $OUT/previews.json > $OUT/previews_log.txt 2>&1; echo "previews exit $?"
grep "RESULT\|Error" $OUT/previews_log.txt | cut -c1-260
t tests
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_triton_addresses.py tests/test_workspace.py > $OUT/tests.txt 2>&1; echo "tests exit $?"
tail -2 $OUT/tests.txt; grep "^FAILED\|^ERROR\|^E  .*MiB\|^E  .*warned" $OUT/tests.txt | cut -c1-300 | head
t done
