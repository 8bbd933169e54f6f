#!/bin/bash
# call A: GPU tests of the loosened tolerances, decoder variants, explicit memory-plan sweep (1 image),
# 8 GB cap with and without expandable segments.
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch,triton;print(torch.__version__, triton.__version__)"
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
t tests
timeout 170 python3 -m pytest -q -p no:cacheprovider -o log_cli=false tests/test_cuda_graphs.py tests/test_bench.py tests/test_memory_plan.py -k "gpu or cuda" 2>&1 | grep -v "DEBUG" | tail -40 > $OUT/tests.txt; tail -5 $OUT/tests.txt
t decoder
timeout 120 python3 -m stylemamba.experiments.decoder_speed --json $OUT/decoder.json > $OUT/decoder.txt 2>&1; tail -40 $OUT/decoder.txt
t sweep1
timeout 140 python3 -m stylemamba.experiments.plan_sweep --images 1 --repeats 2 --json $OUT/sweep1.json > $OUT/sweep1.txt 2>&1; grep '^{' $OUT/sweep1.txt; tail -3 $OUT/sweep1.txt
t cap8 default allocator
timeout 70 python3 -m stylemamba.experiments.plan_sweep --images 1 --cap 8 --plans 1,32,on 1,0,on --repeats 2 --json $OUT/cap8.json > $OUT/cap8.txt 2>&1; grep '^{' $OUT/cap8.txt; tail -3 $OUT/cap8.txt
t cap8 expandable
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout 70 python3 -m stylemamba.experiments.plan_sweep --images 1 --cap 8 --plans 1,32,on 1,0,on --repeats 2 --json $OUT/cap8_exp.json > $OUT/cap8_exp.txt 2>&1; grep '^{' $OUT/cap8_exp.txt; tail -3 $OUT/cap8_exp.txt
t done
