#!/bin/bash
# call AX: callAW again after its failure under cudaMallocAsync (the restart freed gradients a recorded graph had
# allocated before it ever ran: an abort): under that allocator the recorded graph now runs once when recorded.
# GPU tests (the async subprocess re-runs the workspace tests), the nodes inside ComfyUI. Carry [".whl", ".gpu"].
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t comfy
timeout 200 bash .gpu/comfy/run_comfy_gpu.sh > /dev/null 2>&1; echo "comfy exit $?"
grep -A200 "======== summary" $OUT/run.log | grep -v "^\s*output\|after it:\|     | StyleMamba: \(identical\|saved\|Stylize\|selective\|memory plan\|training steps may\)" | cut -c1-300 | head -30
echo "uncaptured-free warnings: $(grep -c 'uncaptured free' $OUT/comfyui.log)"
grep -B2 -A12 "terminate called" $OUT/comfyui.log | cut -c1-200 | head -20
(cd $OUT && tar -czf comfy.tar.gz comfyui.log nvsmi.csv artifacts.tar.gz 2>/dev/null && rm -rf comfyui.log nvsmi.csv artifacts.tar.gz)
t tests
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_workspace.py tests/test_triton_addresses.py > $OUT/tests.txt 2>&1; echo "tests exit $?"
tail -1 $OUT/tests.txt; grep "^FAILED\|^ERROR\|^E  " $OUT/tests.txt | cut -c1-300 | head
t done
