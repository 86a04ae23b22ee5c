"""Compute amortization measured (chapter 05): a training step with the audio decoder on every frame against
1/16 of them, time and the activations kept for backward. ``python -m csm_lib.bench amortization`` writes
``results/amortization.json``.

Timings depend on the machine and on whatever else runs on it, so they live in a command, not in the tests:
the notebook reads the committed JSON and may re-measure a smaller version in memory, and running the tests never
rewrites a result. Medians over interleaved repeats (a burst of load from a neighbour then hits every setting
alike), with the thread count it ran with.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, replace

import torch

from csm_lib.bench.common import reference_batch, threads_set
from csm_lib.budget import saved_tensor_bytes, training_memory
from csm_lib.checkpoint import device_name
from csm_lib.model import CSM, CSMConfig
from csm_lib.progress import progress


def amortization_memory(cfg: CSMConfig, frames: torch.Tensor, mask: torch.Tensor, fraction: float) -> dict:
    """Decoder work and the activations autograd keeps for one training step at ``fraction``.

    ``saved_bytes`` is counted exactly (``budget.saved_tensor_bytes``); ``budget_model_MB`` is what the
    analytic memory model of chapter 07a predicts for the same batch.
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
