#!/bin/bash
# call BB: which stream a graph replays on, after other streams ran work (callBB_graphs.py). Carry nothing.
export PYTHONUNBUFFERED=1
timeout 150 python3 bench/results/steady_h200/callBB_graphs.py > $OUT/graphs.txt 2>&1; echo "graphs exit $?"
grep RESULT $OUT/graphs.txt | cut -c1-300
