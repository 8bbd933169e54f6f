#!/bin/bash
# call Y: the GPU tests of the review fixes (one graph pool per trainer, held vs counted memory, the share bound) and of the memory plans
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 400 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short ${TESTS:-tests/test_workspace.py tests/test_cuda_graphs.py tests/test_memory_plan.py tests/test_group_norm.py} > $OUT/tests.txt 2>&1
grep -v "DEBUG" $OUT/tests.txt | grep -A30 "^___" | head -60; tail -2 $OUT/tests.txt
