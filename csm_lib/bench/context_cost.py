"""What a context costs (chapter 06): prefill over S positions against one cached position after them.
``python -m csm_lib.bench context-cost`` writes ``results/context_cost.json``.

Timings depend on the machine and on whatever else runs on it, so they live in a command, not in the tests:
the notebook reads the committed JSON and may re-measure a smaller version in memory, and running the tests never
rewrites a result. Medians over interleaved repeats (a burst of load from a neighbour then hits every setting
alike), with the thread count it ran with.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from csm_lib.backbone import KVCache, Transformer
from csm_lib.bench.common import median_ms, threads_set
from csm_lib.checkpoint import device_name
from csm_lib.model import PRESETS


@torch.no_grad()
def context_cost(model: Transformer, lengths: list[int], repeats: int = 7) -> list[dict]:
    """Prefill of a context of S positions, then one new position with the cache: median and min ms."""
    rows = []
    for S in lengths:
        h, one = torch.randn(1, S, model.cfg.dim), torch.randn(1, 1, model.cfg.dim)
        prefill, step = [], []
        for _ in range(repeats):
            cache = KVCache(model.cfg, 1, max_len=S + 1)
            t0 = time.perf_counter()
            model(h, cache=cache)
            t1 = time.perf_counter()
            model(one, cache=cache)
            prefill.append(t1 - t0)
            step.append(time.perf_counter() - t1)
        rows.append({"context_positions": S, "prefill_ms": median_ms(prefill), "next_position_ms": median_ms(step),
                     "prefill_min_ms": 1000 * min(prefill), "next_position_min_ms": 1000 * min(step)})
    return rows


def bench_context_cost(threads: int = 2, repeats: int = 7) -> dict:
    cfg = PRESETS["reference"].backbone
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    with threads_set(threads):
        rows = context_cost(model, [128, 256, 512, 1024, 1920], repeats)
        device = device_name("cpu")
    return {"what": "reference backbone (untrained): median prefill time over a context, and one cached position "
                    "after it", "device": device, "torch_threads": threads, "repeats": repeats,
            "config": asdict(cfg), "rows": [{k: round(v, 3) for k, v in r.items()} for r in rows]}
