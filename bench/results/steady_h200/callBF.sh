#!/bin/bash
# call BF (prepared 2026-12-05, NOT YET RUN): the stage of a tiny-trainer process after which its CUDA graphs replay
# slower (callBF_tiny.py; callBA-BE found the trigger: a few dozen eager operations on a non-default stream).
# Carry [".whl"]; run as: bash bench/results/steady_h200/callBF.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 200 python3 bench/results/steady_h200/callBF_tiny.py $OUT/stages.json > $OUT/stages.txt 2>&1; echo "exit $?"
grep "RESULT\|Error" $OUT/stages.txt | cut -c1-400
