"""Timing benchmarks: the measurements behind chapters 04-07, as commands that write ``results/*.json``.

    python -m csm_lib.bench kv-cache         # chapter 04: the KV cache's speed-up vs context length
    python -m csm_lib.bench amortization     # chapter 05: a training step, decoder on every frame vs 1/16
    python -m csm_lib.bench context-cost     # chapter 06: prefill over a context vs one cached position
    python -m csm_lib.bench training-knobs   # chapter 07: fp32 vs bf16 autocast vs checkpointing

(``make bench`` runs them all.) Timings depend on the machine and on whatever else runs on it, so
they live here, not in the tests: a notebook reads the committed JSON and may re-measure a smaller
version in memory, and running the tests never rewrites a result. Every benchmark reports medians
over interleaved repeats (a burst of load from a neighbour then hits every setting alike) and the
thread count it ran with.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import torch

from csm_lib.backbone import KVCache, Transformer
from csm_lib.budget import saved_tensor_bytes, training_memory
from csm_lib.checkpoint import device_name, git_commit
from csm_lib.generate import REFERENCE_CODEC
from csm_lib.model import CSM, PRESETS, CSMConfig
from csm_lib.outputs import results_dir
from csm_lib.progress import progress
from csm_lib.train import TrainConfig, load_data


@contextmanager
def threads_set(n: int):
    """``with threads_set(n):`` run with ``n`` torch threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


# ----------------------------------------------------------------------------- chapter 04


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


# ----------------------------------------------------------------------------- chapter 05


def amortization_memory(cfg: CSMConfig, frames: torch.Tensor, mask: torch.Tensor, fraction: float) -> dict:
    """Decoder work and the activations autograd keeps for one training step at ``fraction``.

    ``saved_bytes`` is counted exactly (``budget.saved_tensor_bytes``); ``budget_model_MB`` is what the
    analytic memory model of chapter 07 predicts for the same batch.
    """
    torch.manual_seed(0)
    model = CSM(replace(cfg, decoder_fraction=fraction))
    K = cfg.n_codebooks
    n_audio = int(model.audio_targets(mask).sum())
    measured = saved_tensor_bytes(lambda: model(frames, mask, generator=torch.Generator().manual_seed(0))["loss"],
                                  list(model.parameters()), amp=False)
    B, S = mask.shape[:2]
    predicted = training_memory(model.cfg, model.num_parameters()["total"], B, S, amp=False,
                                audio_fraction=n_audio / (B * S))
    return {"decoder_fraction": fraction, "audio_frames": n_audio, "decoder_frames": model.decoder_frames(n_audio),
            "decoder_positions": model.decoder_frames(n_audio) * K, "saved_bytes": measured,
            "saved_MB": measured / 1e6, "budget_model_MB": (predicted.activations + predicted.logits) / 1e6}


def step_seconds(model: CSM, frames: torch.Tensor, mask: torch.Tensor, seed: int) -> float:
    """Seconds of one forward + backward of ``CSM.forward`` on a batch."""
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    model(frames, mask, generator=torch.Generator().manual_seed(seed))["loss"].backward()
    return time.perf_counter() - t0


def amortization_timing(cfg: CSMConfig, frames: torch.Tensor, mask: torch.Tensor, fractions=(1.0, 1 / 16),
                        repeats: int = 5) -> dict[float, list[float]]:
    """Seconds per training step at each decoder fraction, same weights, repeats interleaved."""
    models = {}
    for frac in fractions:
        torch.manual_seed(0)  # the same weights for all
        models[frac] = CSM(replace(cfg, decoder_fraction=frac))
    for model in models.values():
        step_seconds(model, frames, mask, seed=-1)  # warm-up, not timed
    times = {frac: [] for frac in models}
    for r in progress(range(repeats), desc="timing"):
        for frac, model in models.items():
            times[frac].append(step_seconds(model, frames, mask, seed=r))
    return times


def reference_batch(max_len: int, windows: int = 8):
    """The first ``windows`` training windows of the 1 h corpus, as chapters 05 and 07 use them."""
    train_w, _, cfg, info = load_data(TrainConfig(preset="reference", hours=1.0, corpus_seed=0,
                                                  codec=str(REFERENCE_CODEC), max_len=max_len, amp="fp32"))
    frames, mask = train_w.batch(list(range(windows)))
    return frames, mask, cfg, info


def bench_amortization(threads: int = 1, repeats: int = 5) -> dict:
    frames, mask, cfg, info = reference_batch(max_len=128)
    with threads_set(threads):
        times = amortization_timing(cfg, frames, mask, (1.0, 1 / 16), repeats)
        device = device_name("cpu")
    memory = {f: amortization_memory(cfg, frames, mask, f) for f in (1, 1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32)}
    med = {f: statistics.median(ts) for f, ts in times.items()}
    return {
        "what": "reference CSM, one training step (forward + backward of CSM.forward): decoder on every frame "
                "vs 1/16; activations kept for backward counted exactly",
        "preset": "reference", "config": asdict(cfg) | {"decoder_fraction": "varied"},
        "batch": {"shape": list(frames.shape), "windows": len(frames), "target_audio_frames": memory[1]["audio_frames"],
                  "data": f"{info['corpus']} training windows 0-7, max_len 128"},
        "device": f"{device}, torch {torch.__version__}", "torch_threads": threads,
        "timing": {"repeats": repeats, "statistic": "median over interleaved repeats",
                   "speedup_median": round(med[1.0] / med[1 / 16], 3),
                   "speedup_min": round(min(times[1.0]) / min(times[1 / 16]), 3)},
        "settings": [{"decoder_fraction": f, "median_step_s": round(med[f], 4), "min_step_s": round(min(ts), 4),
                      "step_s": [round(t, 4) for t in ts]}
                     | {k: int(memory[f][k]) for k in ("audio_frames", "decoder_frames", "decoder_positions",
                                                        "saved_bytes")}
                     for f, ts in times.items()],
        "saved_bytes_by_fraction": {f"{f:g}": int(m["saved_bytes"]) for f, m in memory.items()},
    }


# ----------------------------------------------------------------------------- chapter 06


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


# ----------------------------------------------------------------------------- chapter 07


def step_ms(model: CSM, frames: torch.Tensor, mask: torch.Tensor, amp: str, checkpointing: bool = False,
            repeats: int = 5) -> tuple[float, float]:
    """Median ms of a training step (forward + backward) after one warm-up, and the step's loss."""
    model.backbone.gradient_checkpointing = checkpointing
    times, loss = [], float("nan")
    try:
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
                out = model(frames, mask, generator=torch.Generator().manual_seed(0))
            out["loss"].backward()
            times.append(time.perf_counter() - t0)
            loss = out["loss"].detach().item()
    finally:
        model.zero_grad()
        model.backbone.gradient_checkpointing = False
    return median_ms(times[1:]), loss


TRAINING_KNOBS = {"fp32": ("fp32", False), "bf16 autocast": ("bf16", False), "fp32 + checkpointing": ("fp32", True)}


def training_knobs(model: CSM, frames: torch.Tensor, mask: torch.Tensor, repeats: int = 5) -> dict[str, dict]:
    """ms per step and loss for each of ``TRAINING_KNOBS``."""
    out = {}
    for name, (amp, ckpt) in TRAINING_KNOBS.items():
        ms, loss = step_ms(model, frames, mask, amp, ckpt, repeats)
        out[name] = {"ms_per_step": ms, "loss": loss}
    return out


def bench_training_knobs(threads: int = 2, repeats: int = 5) -> dict:
    frames, mask, cfg, _ = reference_batch(max_len=192)  # the windows of chapter 07
    torch.manual_seed(0)
    model = CSM(cfg)
    with threads_set(threads):
        knobs = training_knobs(model, frames, mask, repeats)
        device = device_name("cpu")
    fp32 = knobs["fp32"]["ms_per_step"]
    return {"what": f"reference CSM, one training step (forward + backward) on 8 windows of the 1 h corpus, "
                    f"median of {repeats}", "device": device, "torch_threads": threads,
            "positions": int(mask.any(-1).sum()),
            "ms_per_step": {k: round(v["ms_per_step"], 1) for k, v in knobs.items()},
            "vs_fp32": {k: round(v["ms_per_step"] / fp32, 2) for k, v in knobs.items()},
            "loss": {k: round(v["loss"], 4) for k, v in knobs.items()}}


# ----------------------------------------------------------------------------- the command


def bench_inference(**kwargs) -> dict:
    """Chapter 08's benchmark; it lives in ``csm_lib/bench_inference.py``, which imports this module's helpers."""
    from csm_lib.bench.inference import bench_inference as run

    return run(**kwargs)


def bench_latency(**kwargs) -> dict:
    """Chapter 09's latency table; it lives in ``csm_lib/bench_latency.py``."""
    from csm_lib.bench.latency import bench_latency as run

    return run(**kwargs)


def bench_serve(**kwargs) -> dict:
    """Chapter 11's serving benchmark; it lives in ``csm_lib/bench_serve.py``."""
    from csm_lib.bench.serve import bench_serve as run

    return run(**kwargs)


BENCHMARKS: dict[str, tuple[Callable[..., dict], str, int]] = {  # name -> (function, output file, default threads)
    "kv-cache": (bench_kv_cache, "kv_cache_speedup.json", 1),
    "amortization": (bench_amortization, "amortization.json", 1),
    "context-cost": (bench_context_cost, "context_cost.json", 2),
    "training-knobs": (bench_training_knobs, "training_knobs.json", 2),
    "inference": (bench_inference, "inference.json", 2),
    "latency": (bench_latency, "latency_table.json", 2),
    "serve": (bench_serve, "serving.json", 1),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(BENCHMARKS))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the benchmark's own)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default=None, help="default: results/<the benchmark's file>")
    a = p.parse_args(argv)
    fn, filename, threads = BENCHMARKS[a.name]
    kwargs = {"threads": a.threads or threads} | ({"repeats": a.repeats} if a.repeats else {})
    t0 = time.perf_counter()
    record = fn(**kwargs)
    command = "python -m csm_lib.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    record = {"command": command, "commit": git_commit(), "torch": torch.__version__,
              "wall_s": round(time.perf_counter() - t0, 1)} | record
    out = Path(a.out) if a.out else results_dir() / filename
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
