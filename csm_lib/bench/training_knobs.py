"""Training knobs on this CPU (chapter 07a): a training step in fp32, under bf16 autocast, and with gradient
checkpointing. ``python -m csm_lib.bench training-knobs`` writes ``results/training_knobs.json``.

Timings depend on the machine and on whatever else runs on it, so they live in a command, not in the tests:
the notebook reads the committed JSON and may re-measure a smaller version in memory, and running the tests never
rewrites a result. Medians over interleaved repeats (a burst of load from a neighbour then hits every setting
alike), with the thread count it ran with.
"""

from __future__ import annotations

import time

import torch

from csm_lib.bench.common import median_ms, reference_batch, threads_set
from csm_lib.checkpoint import device_name
from csm_lib.model import CSM


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
    frames, mask, cfg, _ = reference_batch(max_len=192)  # the windows of chapter 07a
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
