#!/bin/bash
# call AB: training in channels_last by default (GroupNorm kernels for channels_last, residual blocks without the NCHW
# copy): GPU tests; the step eager NCHW / channels_last and compiled channels_last, replayed as CUDA graphs; the bench
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t tests
timeout 200 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_group_norm.py tests/test_cuda_graphs.py tests/test_workspace.py tests/test_memory_plan.py tests/test_precision.py > $OUT/tests.txt 2>&1
grep -v "DEBUG" $OUT/tests.txt | grep -A25 "^___" | head -50; tail -2 $OUT/tests.txt
t steps
timeout 200 python3 bench/results/steady_h200/callT_compiled.py $OUT/steps.json off:nchw,off:cl,default:cl:k > $OUT/steps_log.txt 2>&1
grep "RESULT\|Error\|error" $OUT/steps_log.txt | cut -c1-400 | head
python3 -c "
import json;r=json.load(open('$OUT/steps.json'))
for k in r:
  print(k, r[k]['step_ms'], r[k]['kernel_ms'])
  for g in r[k]['top_kernels'][:8]: print('   %7.2f %5d %s' % (g['ms'], g['calls'], g['kernel'][:100]))
"
t bench
timeout 150 python3 -m stylemamba bench --compile off --cuda-graphs auto --variants mamba --repeats 4 --steps 10 --json $OUT/bench.json > $OUT/bench_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/bench_log.txt | grep "^| (\|Targets\|recipe_workspace" | cut -c1-200 | head -20
python3 -c "import json;r=json.load(open('$OUT/bench.json'))['results'];[print(k, v.get('recipe_s'), v.get('recipe_workspace_s'), v.get('recipe_workspace_phases_s'), v.get('step_ms',{}).get('median'), v.get('kernel_ms_per_step')) for k,v in r.items()]"
t done
