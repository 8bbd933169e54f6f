#!/bin/bash
# call F: GPU tests (Triton GroupNorm, graphs, compile); decoder variants; bench of the new default step + 8 GB
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
t tests
timeout 150 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_group_norm.py tests/test_cuda_graphs.py tests/test_bench.py tests/test_precision.py -k "gpu or cuda or matmul or group_norm or triton" > $OUT/tests.txt 2>&1
grep -v "DEBUG" $OUT/tests.txt | grep -A15 "^___" | head -40; tail -2 $OUT/tests.txt
t decoder
timeout 100 python3 -m stylemamba.experiments.decoder_speed --variants native_gn sdpa_attention nchw channels_last --json $OUT/decoder.json 2>&1 | grep -v "Warn\|warn" | tail -22
t bench
timeout 300 python3 -m stylemamba bench --compile off --cuda-graphs auto off --variants mamba --repeats 2 --steps 10 --memory-caps 8 --caps-repeats 1 --json $OUT/bench.json > $OUT/bench_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/bench_log.txt | tail -50
grep "launch\|GPU-bound" $OUT/bench_log.txt | sort | uniq -c | head
t done
