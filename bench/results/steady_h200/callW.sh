#!/bin/bash
# call W: the compiled step with the decoder in channels_last (inductor's own GroupNorm then: ours is NCHW-only),
# against channels_last eager; all replayed as CUDA graphs
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 330 python3 bench/results/steady_h200/callT_compiled.py $OUT/compiled_cl.json off:cl,default:cl,off:nchw > $OUT/compiled_cl_log.txt 2>&1
grep "RESULT\|Error\|error" $OUT/compiled_cl_log.txt | cut -c1-400 | head
python3 -c "
import json;r=json.load(open('$OUT/compiled_cl.json'))
for k in r:
  print(k, r[k]['step_ms'], r[k]['kernel_ms'])
  for g in r[k]['top_kernels'][:8]: print('   %7.2f %5d %s' % (g['ms'], g['calls'], g['kernel'][:100]))
"
