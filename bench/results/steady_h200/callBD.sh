#!/bin/bash
# call BD: which eager operation on another stream slows the graphs (callBD_graphs.py). Carry nothing.
export PYTHONUNBUFFERED=1
timeout 150 python3 bench/results/steady_h200/callBD_graphs.py > $OUT/graphs.txt 2>&1; echo "graphs exit $?"
grep RESULT $OUT/graphs.txt | cut -c1-300
