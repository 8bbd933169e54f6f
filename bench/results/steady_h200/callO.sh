#!/bin/bash
# call O: after call N's fixes (one VAE wrapper + a fast fingerprint, training networks under ComfyUI's model
# management, a trial replay for steps not plainly launch-bound): GPU tests, ComfyUI (default allocator, then
# --disable-cuda-malloc), the Stylize node against the library, a new style in the library
cd "$(dirname "$0")/.."
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
t tests
PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 timeout 150 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_cuda_graphs.py > $OUT/tests.txt 2>&1
grep -v "DEBUG" $OUT/tests.txt | grep -A25 "^___" | head -50; tail -2 $OUT/tests.txt
t comfy
timeout 300 bash .gpu/comfy/run_comfy_gpu.sh --again "--disable-cuda-malloc" > /dev/null 2>&1; echo "comfy exit $?"
grep -A200 "======== summary" $OUT/run.log | grep -v "^\s*output\|after it:\|     | StyleMamba: \(identical\|saved\|Stylize\|selective\)" | cut -c1-330 | head -40
grep -A200 "======== summary" $OUT/run.log | grep "OK \|FAIL\|nodes (s)\|Train:\|replay\|launch" | cut -c1-330 | tail -12
(cd $OUT && tar -czf comfy.tar.gz comfyui.log again nvsmi.csv artifacts.tar.gz && rm -rf comfyui.log again nvsmi.csv artifacts.tar.gz)
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t nodes
timeout 120 python3 bench/gpu_nodes.py > $OUT/gpu_nodes_log.txt 2>&1; echo "gpu_nodes exit $?"
grep -v "Warn\|warn\|DEBUG" $OUT/gpu_nodes_log.txt | grep -A10 "stylize_one_image\|\"seconds\"" | cut -c1-200 | head -40
t conditions
timeout 80 python3 bench/new_style_conditions.py --runs 5 --label native-auto-nopreview 2>$OUT/conditions_err.txt | tee $OUT/conditions.txt
grep "replay\|launch" $OUT/conditions_err.txt | sort | uniq -c | cut -c1-200
t done
