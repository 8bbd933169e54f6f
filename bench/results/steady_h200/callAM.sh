#!/bin/bash
# call AM: the 8 GB card, decoder trained in channels_last (callAM_cl_caps.py)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 240 python3 bench/results/steady_h200/callAM_cl_caps.py $OUT/caps.json > $OUT/caps_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/caps_log.txt | tail -6
grep "memory plan\|replay\|did not fit\|launch" $OUT/caps_log.txt | cut -c1-160 | sort | uniq -c | head
