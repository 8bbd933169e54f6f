#!/bin/bash
# call AF: LPIPS compares with the content image's features computed once per style: GPU tests of the trainer
# and workspace; the step eager NCHW / channels_last and compiled channels_last side by side; which operators
# launch the compiled step's copy kernels (compiled, no graphs, profiled with shapes)
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t tests
timeout 150 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_workspace.py tests/test_cuda_graphs.py tests/test_precision.py > $OUT/tests.txt 2>&1
grep -v "DEBUG\|WARNING\|INFO" $OUT/tests.txt | grep -A25 "^___" | head -30; tail -1 $OUT/tests.txt
t steps
timeout 220 python3 bench/results/steady_h200/callT_compiled.py $OUT/steps.json off:nchw,off:cl,default:cl:k > $OUT/steps_log.txt 2>&1
grep "RESULT\|Error\|error" $OUT/steps_log.txt | cut -c1-400 | head
python3 -c "
import json;r=json.load(open('$OUT/steps.json'))
for k in r:
  print(k, r[k]['step_ms'], r[k]['kernel_ms'])
  for g in r[k]['top_kernels'][:6]: print('   %7.2f %5d %s' % (g['ms'], g['calls'], g['kernel'][:100]))
"
t profile
timeout 170 python3 bench/results/steady_h200/callAF_profile.py $OUT/copy_ops.json > $OUT/copy_ops_log.txt 2>&1
grep -v "Warn\|warn\|transformers\|RANDOM" $OUT/copy_ops_log.txt | head -95 | cut -c1-260
t done
t tiny
timeout 60 python3 bench/results/steady_h200/callAF_tiny.py > $OUT/tiny_host.txt 2>&1
grep -v "Warn\|warn\|transformers\|RANDOM\|shards" $OUT/tiny_host.txt | head -80 | cut -c1-200
t done2
