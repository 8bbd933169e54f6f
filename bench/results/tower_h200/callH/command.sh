#!/bin/bash
# call H: the GroupNorm kernels after the index-helper refactor, on the GPU and under that machine's interpreter
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 100 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_group_norm.py tests/test_precision.py > $OUT/tests.txt 2>&1
grep -A15 "^___" $OUT/tests.txt | head -30; tail -2 $OUT/tests.txt
