"""The benchmarks (chapters 04-11): timings and tables, as commands that write ``results/*.json``.

``python -m csm_lib.bench NAME`` (``__main__.py``) runs one; the notebooks read the committed files and
re-measure smaller versions in memory, and the tests never rewrite them. ``common.py`` holds what the
benchmarks share (threads, medians, a stream timed to its first audio, the conversation chapters 08 and 09
speak, the hardware the cost models assume); every other module is one benchmark and imports from it:
``kv_cache`` (chapter 04), ``amortization`` (05), ``context_cost`` (06), ``training_knobs`` (07a),
``inference`` and ``streaming`` (08), ``latency`` (09), ``quality`` (10: ``python -m csm_lib.bench.quality``)
and ``serve`` (11).
"""
