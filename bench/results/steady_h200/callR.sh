#!/bin/bash
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 150 python3 .gpu/callR_12gb.py 2>&1 | grep -v "DEBUG\|Warn\|warn\|LPIPS\|transformers" | cut -c1-250 | tee $OUT/r.txt
