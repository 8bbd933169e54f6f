#!/bin/bash
# call BP2 (2026-12-05): callBP's trigger narrowed: which part of a captured backward, and does the order of the
# captures matter (PROBE_LATE: the case's capture first, then the probe's)? Carry [".whl"].
export OUT
CASES="bwd_relaxed bwd_grad_api bwd_input_only bwd_single_op eager_bwd_then_fwd_capture event_in_capture \
thread_kernels_global" bash bench/results/steady_h200/callBP.sh
mv $OUT/trigger.txt $OUT/trigger_parts.txt
PROBE_LATE=1 CASES="none bwd_small bwd_single_op tiny_trainer fwd_many_nodes_big_alloc" \
  bash bench/results/steady_h200/callBP.sh
mv $OUT/trigger.txt $OUT/probe_late.txt
