#!/bin/bash
# call BU (2026-12-05): graph_slowdown_repro.py after callBT (the backward case now warms up on a side stream, as
# PyTorch's docs do; backward_default_stream is callBS's former backward case), every case in a fresh process.
export OUT
CASES="none backward backward_default_stream warm_thread cold_thread" bash bench/results/steady_h200/callBS.sh
