#!/bin/bash
# call BW (2026-12-05): the GPU tests of the session's tip (after the review fixes: style files checked for NaN,
# the kept style model's VAE, universal resume/photo checks). Carry [".whl"].
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 420 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_cuda_graphs.py \
  tests/test_workspace.py tests/test_style_model.py tests/test_style_file.py tests/test_universal.py \
  > $OUT/tests.txt 2>&1; echo "tests exit $?"
grep "^FAILED\|^ERROR\|^E  " $OUT/tests.txt | cut -c1-300 | head -20; tail -1 $OUT/tests.txt
