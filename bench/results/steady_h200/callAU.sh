#!/bin/bash
# call AU: packaging through a pinned staging buffer (callAU_package.py); the tiny trainers with the CUDA modules
# loaded eagerly; plain-torch graphs replayed in creation order (callAU_graphs.py), default and eager loading.
# Carry [".whl"].
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
S=bench/results/steady_h200
t graphs
for mode in copies kernels; do
  timeout 60 python3 $S/callAU_graphs.py $mode > $OUT/graphs_$mode.txt 2>&1; echo "graphs $mode exit $?"
  grep "RESULT\|Error" $OUT/graphs_$mode.txt | cut -c1-300
  CUDA_MODULE_LOADING=EAGER timeout 60 python3 $S/callAU_graphs.py $mode > $OUT/graphs_${mode}_eager.txt 2>&1
  echo "graphs $mode CUDA_MODULE_LOADING=EAGER exit $?"; grep "RESULT\|Error" $OUT/graphs_${mode}_eager.txt | cut -c1-300
done
t tiny
CUDA_MODULE_LOADING=EAGER timeout 120 python3 $S/callAT_cupti.py noprof > $OUT/tiny_eager.txt 2>&1; echo "tiny eager exit $?"
grep "RESULT\|Error" $OUT/tiny_eager.txt | cut -c1-200
t package
timeout 150 python3 $S/callAU_package.py $OUT/package.json > $OUT/package_log.txt 2>&1; echo "package exit $?"
grep "RESULT\|Error" $OUT/package_log.txt | cut -c1-300
t done
