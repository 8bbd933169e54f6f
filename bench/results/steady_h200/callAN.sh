#!/bin/bash
# call AN (prepared, NOT YET RUN: the device time ran out): the nodes inside ComfyUI with the trained decoder in channels_last (TrainConfig.channels_last flipped to
# True in the working tree for this call only), one server with --disable-cuda-malloc (graphs)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
grep -n "channels_last: bool" stylemamba/train.py
timeout 140 bash .gpu/comfy/run_comfy_gpu.sh --args "--disable-cuda-malloc" > /dev/null 2>&1; echo "comfy exit $?"
grep -A200 "======== summary" $OUT/run.log | grep -v "^\s*output\|after it:\|     | StyleMamba: \(identical\|saved\|Stylize\|selective\)" | cut -c1-300 | head -30
grep -h "Train: 20 steps\|replay\|workspace\|Error\|error" $OUT/comfyui.log 2>/dev/null | cut -c1-250 | head -12
(cd $OUT && tar -czf comfy.tar.gz comfyui.log nvsmi.csv artifacts.tar.gz 2>/dev/null && rm -rf comfyui.log nvsmi.csv artifacts.tar.gz)
