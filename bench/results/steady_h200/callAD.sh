#!/bin/bash
# call AD: the final code's GPU tests (GroupNorm kernels NCHW / channels_last, CUDA graphs, precision)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 170 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_group_norm.py tests/test_cuda_graphs.py tests/test_precision.py > $OUT/tests.txt 2>&1
grep -v "DEBUG\|WARNING\|INFO" $OUT/tests.txt | grep -A25 "^___" | head -50; tail -2 $OUT/tests.txt
