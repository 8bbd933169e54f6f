#!/bin/bash
# call BC: which one action after a cold graph slows its replays (callBC_graphs.py). Carry nothing.
export PYTHONUNBUFFERED=1
timeout 150 python3 bench/results/steady_h200/callBC_graphs.py > $OUT/graphs.txt 2>&1; echo "graphs exit $?"
grep RESULT $OUT/graphs.txt | cut -c1-300
