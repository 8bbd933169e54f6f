#!/bin/bash
# call BA: torch-captured graphs replay ~18 % slower than driver-API ones and the instantiate flags are not why
# (callAZ): the capture mode, or torch's replay() around the launch? (callBA_graphs.py). Carry nothing.
export PYTHONUNBUFFERED=1
timeout 150 python3 bench/results/steady_h200/callBA_graphs.py > $OUT/graphs.txt 2>&1; echo "graphs exit $?"
grep RESULT $OUT/graphs.txt | cut -c1-300
