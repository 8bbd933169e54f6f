#!/bin/bash
# call AK: tiny trainers, a new capture stream for some (callAK_tiny.py)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 150 python3 bench/results/steady_h200/callAK_tiny.py > $OUT/tiny.txt 2>&1
grep -v "Warn\|warn\|transformers\|RANDOM\|shards\|stylemamba:\|USDT\|profiler" $OUT/tiny.txt | tail -50 | cut -c1-200
