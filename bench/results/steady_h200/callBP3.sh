#!/bin/bash
# call BP3 (2026-12-05): is it autograd's thread having launched eagerly before it launches into a capture? A host
# thread that launched eagerly, then into a capture (kernels; kernels + allocations; global / relaxed mode); the
# backward captured in thread-local mode. Carry [".whl"].
export OUT
CASES="warm_thread_kernels warm_thread_kernels_alloc warm_thread_relaxed_kernels warm_thread_relaxed_alloc \
bwd_thread_local bwd_single_op" bash bench/results/steady_h200/callBP.sh
mv $OUT/trigger.txt $OUT/threads.txt
