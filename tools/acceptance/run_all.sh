#!/bin/bash
# Runs every small-value copy of the example workflows in the real ComfyUI server (CPU).
cd /work/shared/tools/comfy-acceptance
IN="--input /tmp/sm-accept/input/example.png --input /tmp/sm-accept/input/astronaut_masked.png --input /tmp/sm-accept/input/example_video.mp4 --input /tmp/sm-accept/input/content_batch --input /tmp/sm-accept/input/reference.png"
for wf in ${@:-train_and_stylize train_two_prompts_mix load_style_stylize_batch stylize_video_frames mix_two_styles stylize_in_mask stylize_latent universal_prompt_and_reference}; do
  start=$(date +%s)
  timeout 1200 /opt/comfy-venv/bin/python run_workflow.py --pack /tmp/sm-accept/ComfyUI-StyleMamba --models-dir /tmp/sm-models $IN \
     --workflow /tmp/sm-accept/small/$wf.json --min-outputs 1 --timeout 1100 > /tmp/sm-accept/logs/$wf.log 2>&1
  echo "$wf rc=$? $(( $(date +%s) - start ))s $(grep RESULT /tmp/sm-accept/logs/$wf.log)"
done
