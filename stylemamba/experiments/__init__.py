"""Measuring the method, apart from it: evaluation (``eval``), the benchmark (``bench``), metrics, baselines.

The core library never imports this package; it imports the core.
"""
