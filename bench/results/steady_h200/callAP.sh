#!/bin/bash
# call AP: CUDA graphs under torch's cudaMallocAsync allocator (ComfyUI's default) now that our Triton kernels take
# device addresses while such a capture records (stylemamba/triton_addresses.py): GPU tests (incl. the graph tests
# re-run in a cudaMallocAsync process), the default recipe under cudaMallocAsync with graphs auto vs off, then
# ComfyUI with its default allocator. Carry [".whl", ".gpu"].
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t tests
timeout 330 python3 -m pytest -q -p no:cacheprovider tests/test_triton_addresses.py tests/test_cuda_graphs.py tests/test_precision.py tests/test_group_norm.py > $OUT/tests.txt 2>&1; echo "tests exit $?"
tail -3 $OUT/tests.txt; grep "^FAILED\|^ERROR" $OUT/tests.txt | cut -c1-300 | head
t async
PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync timeout 200 python3 bench/results/steady_h200/callAP_async.py $OUT/async.json auto,off > $OUT/async_log.txt 2>&1; echo "async exit $?"
grep "RESULT\|allocator\|Error\|error\|replay\|eager\|graph" $OUT/async_log.txt | cut -c1-300 | head -24
t comfy
timeout 150 bash .gpu/comfy/run_comfy_gpu.sh > /dev/null 2>&1; echo "comfy exit $?"
grep -A200 "======== summary" $OUT/run.log | grep -v "^\s*output\|after it:\|     | StyleMamba: \(identical\|saved\|Stylize\|selective\)" | cut -c1-300 | head -30
grep -h "Train: 20 steps\|replay\|workspace\|Error\|error\|eagerly\|Warning" $OUT/comfyui.log 2>/dev/null | cut -c1-250 | head -14
(cd $OUT && tar -czf comfy.tar.gz comfyui.log nvsmi.csv artifacts.tar.gz 2>/dev/null && rm -rf comfyui.log nvsmi.csv artifacts.tar.gz)
t done
