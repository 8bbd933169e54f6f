#!/bin/bash
# call BN (2026-12-05): the GPU tests of CUDA graphs and the training workspace after this session's changes (a trained
# style's weights checked for NaN in StyleTrainer.result, recipe checks). Carry [".whl"].
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 240 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_cuda_graphs.py \
  tests/test_workspace.py > $OUT/tests.txt 2>&1
grep -v "DEBUG" $OUT/tests.txt | grep -A25 "^___" | head -50; tail -2 $OUT/tests.txt
