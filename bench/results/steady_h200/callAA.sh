#!/bin/bash
# call AA: channels_last GroupNorm kernels for norms of every size, more pixel chunks; GPU tests, the decoder NCHW vs
# channels_last, the step eager and compiled with our kernels inside the graph (NCHW too), replayed as CUDA graphs
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t tests
timeout 200 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_group_norm.py tests/test_cuda_graphs.py > $OUT/tests.txt 2>&1
grep -v "DEBUG" $OUT/tests.txt | grep -A25 "^___" | head -50; tail -2 $OUT/tests.txt
t decoder
timeout 90 python3 -m stylemamba.experiments.decoder_speed --variants nchw channels_last --json $OUT/decoder.json > $OUT/decoder_log.txt 2>&1
grep -v "DEBUG" $OUT/decoder_log.txt | grep -v "^  " ; grep "^  " $OUT/decoder_log.txt | cut -c1-130 | head -50
t steps
timeout 420 python3 bench/results/steady_h200/callT_compiled.py $OUT/steps.json ${VARIANTS:-off:nchw,off:cl,default:cl:k,default:nchw:k} > $OUT/steps_log.txt 2>&1
grep "RESULT\|Error\|error" $OUT/steps_log.txt | cut -c1-400 | head
python3 -c "
import json;r=json.load(open('$OUT/steps.json'))
for k in r:
  print(k, r[k]['step_ms'], r[k]['kernel_ms'])
  for g in r[k]['top_kernels'][:10]: print('   %7.2f %5d %s' % (g['ms'], g['calls'], g['kernel'][:100]))
"
t done
