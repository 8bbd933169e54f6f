#!/bin/bash
# call AY (prepared 2026-12-04, run 2026-12-05). On the GPU: the review fixes
# ce64257 / 629e3c6 and the current-device guards 52e7621 / 2ca66b9 (the workspace, graph, style-model and
# current-device tests, with the cudaMallocAsync re-run; the nodes inside ComfyUI); which step of a second graph
# slows every replay (callAY_graphs.py); where a new style's Stylize time goes (callAY_build.py).
# Carry [".whl", ".gpu"]; run as: bash bench/results/steady_h200/callAY.sh
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t tests
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_workspace.py tests/test_triton_addresses.py tests/test_style_model.py tests/test_cuda_graphs.py tests/test_current_device.py > $OUT/tests.txt 2>&1; echo "tests exit $?"
tail -1 $OUT/tests.txt; grep "^FAILED\|^ERROR\|^E  " $OUT/tests.txt | cut -c1-300 | head
t comfy
timeout 200 bash .gpu/comfy/run_comfy_gpu.sh > /dev/null 2>&1; echo "comfy exit $?"
grep -A200 "======== summary" $OUT/run.log | grep -v "^\s*output\|after it:\|     | StyleMamba: \(identical\|saved\|Stylize\|selective\|memory plan\|training steps may\)" | cut -c1-300 | head -30
echo "uncaptured-free warnings: $(grep -c 'uncaptured free' $OUT/comfyui.log)"
grep -B2 -A12 "terminate called" $OUT/comfyui.log | cut -c1-200 | head -20
(cd $OUT && tar -czf comfy.tar.gz comfyui.log nvsmi.csv artifacts.tar.gz 2>/dev/null && rm -rf comfyui.log nvsmi.csv artifacts.tar.gz)
t graphs
timeout 200 python3 bench/results/steady_h200/callAY_graphs.py > $OUT/graphs.txt 2>&1; echo "graphs exit $?"
grep RESULT $OUT/graphs.txt
t build
timeout 120 python3 bench/results/steady_h200/callAY_build.py $OUT/build.json > $OUT/build.txt 2>&1; echo "build exit $?"
grep RESULT $OUT/build.txt; tail -3 $OUT/build.txt | grep -i error
t done
