#!/bin/bash
# call L: after the fixes of call K: no graphs under cudaMallocAsync (ComfyUI), a capture out of memory takes a smaller plan;
# the ComfyUI run, GPU tests, the emulated 8 / 12 GB cards
cd "$(dirname "$0")/.."
T0=$(date +%s); t() { echo "=== +$(( $(date +%s) - T0 ))s $*"; }
t comfy
timeout 330 bash .gpu/comfy/run_comfy_gpu.sh > /dev/null 2>&1; echo "comfy exit $?"
grep -A40 "=== .*summary\|======== summary" $OUT/run.log | head -60
grep -i "prompt executed\|stylemamba:" $OUT/comfyui.log | cut -c1-220 | head -40
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
t tests
timeout 120 python3 -m pytest -q -p no:cacheprovider -o log_cli=false --tb=short tests/test_cuda_graphs.py > $OUT/tests.txt 2>&1
grep -v "DEBUG" $OUT/tests.txt | grep -A25 "^___" | head -40; tail -2 $OUT/tests.txt
t caps
timeout 200 python3 -m stylemamba bench --memory-caps 8,12 --memory-caps-only --caps-repeats 2 --json $OUT/caps.json > $OUT/caps_log.txt 2>&1
grep -v "DEBUG\|Warning\|warn" $OUT/caps_log.txt | tail -12
grep "memory plan\|launch\|GPU-bound\|capture\|earlier" $OUT/caps_log.txt | cut -c1-200 | sort | uniq -c | head -20
t done
