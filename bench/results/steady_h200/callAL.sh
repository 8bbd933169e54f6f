#!/bin/bash
# call AL: copies and fills in a process's first and later CUDA graphs, plain torch (callAL_graphs.py)
timeout 100 python3 bench/results/steady_h200/callAL_graphs.py 2>&1 | grep -v "USDT\|profiler\|Warn" | tail -12 | cut -c1-250
