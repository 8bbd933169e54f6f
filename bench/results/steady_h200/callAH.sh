#!/bin/bash
# call AH: the tiny graphed step's time fresh vs after the bench's runs in the same process (callAH_tiny.py)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 200 python3 bench/results/steady_h200/callAH_tiny.py > $OUT/tiny.txt 2>&1
grep -v "Warn\|warn\|transformers\|RANDOM\|shards\|stylemamba:" $OUT/tiny.txt | tail -12 | cut -c1-250
