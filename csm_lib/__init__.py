"""csm_lib: Sesame's Conversational Speech Model rebuilt at CPU scale, the code the workbook's chapters read.

The top level is the model and its training (chapters 01-08): one file per concept. What serves it sits
in parts above it, and imports only point down (``tests/test_layout.py``): ``judges/`` (a trained model
scored on held-out turns), ``baselines/`` (the latency table's other systems), ``bench/`` (the benchmarks,
``python -m csm_lib.bench``), ``serve/`` (the HTTP server, ``python -m csm_lib.serve``) and ``widgets.py``
(the notebooks' players). The README's "Layout" table says which chapter explains each module.
"""
