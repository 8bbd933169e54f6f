#!/bin/bash
# call AT: the review fixes of stop 25 on the GPU (tests, incl. the cudaMallocAsync re-runs); packaging a style in
# one device-to-host copy (callAT_package.py); whether the tiny run's x1.14 is CUPTI left attached by the profiler
# (callAT_cupti.py, fresh processes); the nodes inside ComfyUI with the new packaging. Carry [".whl", ".gpu"].
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
S=bench/results/steady_h200
t package
timeout 120 python3 $S/callAT_package.py $OUT/package.json > $OUT/package_log.txt 2>&1; echo "package exit $?"
grep "RESULT\|Error" $OUT/package_log.txt | cut -c1-300
t cupti
for mode in noprof prof; do
  timeout 90 python3 $S/callAT_cupti.py $mode > $OUT/cupti_$mode.txt 2>&1; echo "cupti $mode exit $?"
  grep "RESULT\|Error" $OUT/cupti_$mode.txt | cut -c1-300
done
TEARDOWN_CUPTI=1 timeout 90 python3 $S/callAT_cupti.py prof > $OUT/cupti_prof_teardown.txt 2>&1; echo "cupti teardown exit $?"
grep "RESULT\|Error" $OUT/cupti_prof_teardown.txt | cut -c1-300
t comfy
timeout 240 bash .gpu/comfy/run_comfy_gpu.sh > /dev/null 2>&1; echo "comfy exit $?"
grep -A200 "======== summary" $OUT/run.log | grep -v "^\s*output\|after it:\|     | StyleMamba: \(identical\|saved\|Stylize\|selective\|memory plan\|training steps may\)" | cut -c1-300 | head -30
echo "uncaptured-free warnings: $(grep -c 'uncaptured free' $OUT/comfyui.log)"
grep -h "Train: 20 steps\|replay\|eagerly" $OUT/comfyui.log | cut -c1-220 | head -8
(cd $OUT && tar -czf comfy.tar.gz comfyui.log nvsmi.csv artifacts.tar.gz 2>/dev/null && rm -rf comfyui.log nvsmi.csv artifacts.tar.gz)
t tests
timeout 220 python3 -m pytest -q -p no:cacheprovider tests/test_triton_addresses.py tests/test_workspace.py tests/test_cuda_graphs.py tests/test_style_model.py > $OUT/tests.txt 2>&1; echo "tests exit $?"
tail -2 $OUT/tests.txt; grep "^FAILED\|^ERROR" $OUT/tests.txt | cut -c1-300 | head
t done
