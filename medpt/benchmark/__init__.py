"""The benchmark runner: grid of runs, records, tables (``python benchmark/run.py``)."""
