#!/bin/bash
# call BR (2026-12-05): callBQ found that beginning the trainer's capture on autograd's thread does not keep the
# probe (captured on the main thread) fast. Here EVERY capture, the probe's too, is begun on autograd's thread
# (ON_AUTOGRAD=1): one capturing thread. Carry [".whl"].
export OUT
ON_AUTOGRAD=1 CASES="none bwd_small tiny_trainer" bash bench/results/steady_h200/callBP.sh
mv $OUT/trigger.txt $OUT/on_autograd.txt
