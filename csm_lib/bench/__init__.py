"""The benchmarks: timings and tables that write ``results/*.json`` (``python -m csm_lib.bench NAME``)."""
