#!/bin/bash
# call B: graphed-vs-eager failures in detail; decoder variants; tower chunks; explicit plan sweeps with the
# new decoder defaults (NCHW, GroupNorm in bf16) on 1 and 4 images.
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
t tests
timeout 150 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short -x tests/test_cuda_graphs.py -k "gpu" > $OUT/tests.txt 2>&1
grep -v "DEBUG\|^  warnings\|Warning" $OUT/tests.txt | grep -B2 -A25 "^___\|Error\|assert" | head -60; tail -3 $OUT/tests.txt
t decoder
timeout 90 python3 -m stylemamba.experiments.decoder_speed --variants fp32_groupnorm_channels_last nchw channels_last swish_mul --json $OUT/decoder.json 2>&1 | grep "^decoder"
t sweep1
timeout 130 python3 -m stylemamba.experiments.plan_sweep --tower --images 1 --repeats 2 --json $OUT/sweep1.json > $OUT/sweep1.txt 2>&1; grep '^{\|^tower' $OUT/sweep1.txt; tail -2 $OUT/sweep1.txt
t sweep4
timeout 170 python3 -m stylemamba.experiments.plan_sweep --images 4 --repeats 1 --plans 4,0,off 2,0,off 1,0,off 4,0,on 2,0,on 1,0,on 1,32,on --json $OUT/sweep4.json > $OUT/sweep4.txt 2>&1; grep '^{' $OUT/sweep4.txt; tail -2 $OUT/sweep4.txt
t done
