#!/bin/bash
# call BE: how many eager copies, fills or kernels on another stream slow the graphs (callBE_graphs.py).
export PYTHONUNBUFFERED=1
timeout 150 python3 bench/results/steady_h200/callBE_graphs.py > $OUT/graphs.txt 2>&1; echo "graphs exit $?"
grep RESULT $OUT/graphs.txt | cut -c1-300
