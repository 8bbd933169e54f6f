#!/usr/bin/env bash
# The GPU benchmark run, from the repository root on a CUDA machine (as done on one H200 for
# docs/BENCHMARK.md). Wheels missing from the machine's image (diffusers, lpips,
# importlib_metadata, the mamba-ssm kernel built for it) are carried in .whl/ and installed into
# /tmp/site. Results go to $OUT (default bench/results/latest): bench.json, bench_log.txt,
# gpu_tests.txt, nvidia_smi.txt.
#   bench/gpu_run.sh [extra `python -m stylemamba bench` arguments]
set -o pipefail
OUT=${OUT:-bench/results/latest}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
  --format=csv > "$OUT/nvidia_smi.txt" 2>&1
python3 -c "import torch, selective_scan_cuda; print('torch', torch.__version__, 'kernel ok')" 2>&1 | tee "$OUT/gpu_tests.txt"
if [ -z "$SKIP_GPU_TESTS" ]; then
  timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -p no:cacheprovider ${GPU_TESTS:-tests/test_ssm.py tests/test_bench.py} \
    -k "${GPU_TESTS_K:-mamba_ssm_kernel or gpu}" 2>&1 | tail -15 | tee -a "$OUT/gpu_tests.txt"
fi
timeout "${BENCH_TIMEOUT:-420}" python3 -m stylemamba bench --json "$OUT/bench.json" --overwrite "$@" 2>&1 \
  | grep -v -e "it/s]" -e "Warning: " | tee "$OUT/bench_log.txt"
