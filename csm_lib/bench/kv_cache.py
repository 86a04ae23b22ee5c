"""The KV cache's speed-up against context length (chapter 04): ``python -m csm_lib.bench kv-cache`` writes
``results/kv_cache_speedup.json``.

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
from csm_lib.progress import progress


@torch.no_grad()
def time_generation(model: Transformer, h: torch.Tensor, context: int, use_cache: bool):
    """Generate positions ``context..`` of ``h`` (1, S, D) one at a time, with or without a KV cache.

    Returns the seconds of each generated position (a list), the prefill's seconds (0 without a
    cache) and the new positions' hidden states (1, S - context, D): without a cache every step
    reruns the whole sequence so far; with one, the prompt is run once and each step is one position.
    """
    times, outs, prefill, cache = [], [], 0.0, None
    if use_cache:
        cache = KVCache(model.cfg, batch_size=1, max_len=h.shape[1])
        t0 = time.perf_counter()
        model(h[:, :context], cache=cache)
        prefill = time.perf_counter() - t0
    for t in range(context, h.shape[1]):
        t0 = time.perf_counter()
        out = model(h[:, t:t + 1], cache=cache) if use_cache else model(h[:, :t + 1])  # no cache: rerun it all
        times.append(time.perf_counter() - t0)
        outs.append(out[:, -1])
    return times, prefill, torch.stack(outs, 1)


@torch.no_grad()
def kv_cache_speedup(model: Transformer, contexts: list[int], new_positions: int = 8, repeats: int = 5,
                     seed: int = 0) -> list[dict]:
    """Median ms per generated position without / with the cache, and the prefill, per context length."""
    g = torch.Generator().manual_seed(seed)
    inputs = {S: torch.randn(1, S + new_positions, model.cfg.dim, generator=g) for S in contexts}
    runs = {(S, mode): [] for S in contexts for mode in ("no_cache", "cache", "prefill")}
    model(inputs[contexts[-1]])  # warm-up
    for _ in progress(range(repeats), desc="repeat"):
        for S, h in inputs.items():  # each repeat sweeps all contexts, so a burst of load hits all alike
            slow, _, out_slow = time_generation(model, h, S, use_cache=False)
            fast, prefill, out_fast = time_generation(model, h, S, use_cache=True)
            if (out_slow - out_fast).abs().max() > 1e-4:
                raise AssertionError("the cache changed the numbers")  # same numbers, only faster
            runs[S, "no_cache"] += slow
            runs[S, "cache"] += fast
            runs[S, "prefill"].append(prefill)
    rows = []
    for S in contexts:
        row = {"context": S, **{f"{m}_ms": round(median_ms(runs[S, m]), 3) for m in ("no_cache", "cache", "prefill")}}
        rows.append(row | {"speedup_x": round(row["no_cache_ms"] / row["cache_ms"], 3)})
    return rows


def bench_kv_cache(threads: int = 1, repeats: int = 5) -> dict:
    cfg = PRESETS["reference"].backbone
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    contexts, new = [64, 128, 256, 512, 1024, 2000], 8
    with threads_set(threads):
        rows = kv_cache_speedup(model, contexts, new, repeats)
        device = device_name("cpu")
    return {"what": "reference backbone (untrained): ms per generated position without / with the KV cache",
            "device": device, "torch_threads": threads, "preset": "reference", "config": asdict(cfg),
            "new_positions": new, "repeats": repeats, "statistic": "median over new_positions x repeats steps",
            "rows": rows}
