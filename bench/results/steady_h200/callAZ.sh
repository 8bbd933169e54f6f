#!/bin/bash
# call AZ: is torch's UseNodePriority instantiate flag what makes every torch-captured graph replay ~18 % slower
# than the same graph instantiated through the driver API (callAY), and so the tiny run's later trainers x1.135?
# Plain graphs with each flag (callAZ_graphs.py); three tiny graphed trainers in a fresh process (callAT_cupti.py,
# no profiler until the end) with CUDA_GRAPHS_USE_NODE_PRIORITY unset / 0 / set inside the process; the style
# model's one-copy decoder delta on the GPU (test_style_model.py). Carry [".whl"].
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
S=bench/results/steady_h200
nvidia-smi --query-gpu=driver_version --format=csv,noheader; python3 -c "import torch;print(torch.__version__, torch.version.cuda)"
t tests
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_style_model.py > $OUT/tests.txt 2>&1; echo "tests exit $?"
tail -1 $OUT/tests.txt; grep "^FAILED\|^ERROR\|^E  " $OUT/tests.txt | cut -c1-300 | head
t graphs
timeout 200 python3 $S/callAZ_graphs.py > $OUT/graphs.txt 2>&1; echo "graphs exit $?"
grep RESULT $OUT/graphs.txt
t tiny
for env in unset 0; do
  if [ $env = unset ]; then timeout 90 python3 $S/callAT_cupti.py none > $OUT/tiny_$env.txt 2>&1
  else CUDA_GRAPHS_USE_NODE_PRIORITY=$env timeout 90 python3 $S/callAT_cupti.py none > $OUT/tiny_$env.txt 2>&1; fi
  echo "tiny env=$env exit $?"; grep "RESULT\|Error" $OUT/tiny_$env.txt | cut -c1-300
done
timeout 90 python3 -c "import os, sys, torch; torch.zeros(1, device='cuda'); os.environ['CUDA_GRAPHS_USE_NODE_PRIORITY'] = '0'; sys.argv = ['x', 'none']; exec(open('$S/callAT_cupti.py').read())" > $OUT/tiny_late0.txt 2>&1
echo "tiny env=0 set inside the process exit $?"; grep "RESULT\|Error" $OUT/tiny_late0.txt | cut -c1-300
t build
timeout 90 python3 $S/callAZ_build.py > $OUT/build.txt 2>&1; echo "build exit $?"; grep "RESULT\|Error" $OUT/build.txt
t done
