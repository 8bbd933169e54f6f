#!/bin/bash
# call M: the emulated 12 GB card after the capture-out-of-memory fixes of callL
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 170 python3 -m stylemamba bench --memory-caps 12 --memory-caps-only --caps-repeats 2 --json $OUT/caps.json > $OUT/caps_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/caps_log.txt | tail -8
grep "memory plan\|launch\|GPU-bound\|capture\|earlier\|fit in memory" $OUT/caps_log.txt | cut -c1-220 | head -30
