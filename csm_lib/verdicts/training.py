"""The seed's training claims: 422M parameters, training on an 8 GB GPU, mixed precision, gradient accumulation and
``empty_cache``, judged from chapter 07a's GPU grid (``results/paper_422m_gpu.json``) and, for mixed precision's cost on
this CPU, ``results/training_knobs.json``.
"""

from __future__ import annotations

from functools import partial

from .rules import (
    GPU,
    KNOBS,
    MEASURED,
    MLP_RATIO,
    NOT_ADDRESSED,
    NOT_MEASURED,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    REPRODUCED,
    SEED,
    Claim,
    Results,
    llama_stack_parameters,
    span,
)


def training_claims(r: Results) -> list[Claim]:
    """422M parameters, 8 GB, mixed precision, accumulation, empty_cache: the GPU grid of chapter 07a."""
    g, knobs, cap = r[GPU], r[KNOBS], r[GPU]["cap_bytes"] / 1e9
    judged = partial(Claim, evidence=MEASURED, sources=(GPU,), chapter="07a")
    peaks = lambda rows: span([x["max_allocated_gb"] for x in rows])  # noqa: E731
    fit = [x for x in g["grid"] if x["max_allocated_gb"] <= cap]
    kind = lambda x: (x["fused_adam"], x["checkpointing"])  # noqa: E731
    kinds = {k: [x for x in fit if kind(x) == k] for k in map(kind, fit)}  # (fused, checkpointing) -> under the cap
    under_cap = "; ".join(f"{'fused' if fused else 'default'} AdamW {'with' if ckpt else 'without'} checkpointing at "
                          f"micro-batch {', '.join(map(str, sorted({x['micro_batch'] for x in rows})))} ({peaks(rows)})"
                          for (fused, ckpt), rows in sorted(kinds.items()))
    ran = [c for c in g["capped"] if c["fits"]]
    run = (ran or g["capped"])[0]
    batch = (f"{run['micro_batch'] * run['accum']} windows of {g['positions_per_window']} positions in "
             f"{run['accum']} micro-batches of {run['micro_batch']}")
    peak = f"{run['max_allocated_gb']:.2f} GB" if run["fits"] else "out of memory"
    big = max(x["micro_batch"] for x in g["grid"])
    state = sum(g["grid"][0]["estimate_parts_gb"][k] for k in ("weights", "gradients", "optimizer"))
    oom = any(not c["fits"] and not c["fused_adam"] for c in g["capped"])
    return [judged(
        "params", '"Parameters: 422M" with `d_model=512, n_layers=12`', NOT_TESTABLE,
        f"because the seed's modules are not specified. As our Llama blocks (an MLP {MLP_RATIO}x as wide) its own "
        f"d_model and n_layers give {llama_stack_parameters(SEED['d_model'], SEED['n_layers']) / 1e6:.1f}M parameters; "
        f"the model of the seed's size here (`{g['model']}`, {g['parameters'] / 1e6:.1f}M, exact) has our dimensions",
        chapter="06, 07a"), judged(
        "gpu_8gb", '"fits in 8GB GPU memory": training on an 8 GB GPU', REPRODUCED if fit and ran else NOT_REPRODUCED,
        f"on an {g['provenance']['device']}, peak `max_memory_allocated` of {len(g['grid'])} configurations run "
        f"uncapped, against a {cap:.1f} GB cap (an {SEED['gpu_gb']} GB card less its CUDA context). Under it: "
        f"{under_cap or 'none'}. With PyTorch's default AdamW none "
        f"({peaks([x for x in g['grid'] if not x['fused_adam']])})"
        + (", and its run under an allocator cap of that size ran out of memory" if oom else "")
        + f". Run under that cap: {batch}, checkpointing, fused AdamW, {' or '.join(c['amp'] for c in ran) or '-'}: "
        f"peak {peak}, {run.get('positions_per_s', 0):,.0f} positions/s",
        qualifier="with a fused AdamW step" if fit and ran and all(x["fused_adam"] for x in fit + ran) else ""), judged(
        "amp", 'mixed precision is "essential for GPU memory efficiency"', NOT_ADDRESSED,
        f"because no run without it was measured on the GPU (the grid ran "
        f"{' and '.join(sorted({x['amp'] for x in g['grid'] + g['capped']}))} only). AMP keeps fp32 weights, gradients "
        f"and AdamW moments, {state:.1f} GB for `{g['model']}` with or without it, and shrinks activations. On this "
        f"CPU ({knobs['torch_threads']} threads) bf16 autocast takes {knobs['vs_fp32']['bf16 autocast']:.2f}x the time "
        f"of fp32 per training step: speed, not memory", evidence=NOT_MEASURED, sources=(GPU, KNOBS)), judged(
        "accumulation", 'gradient accumulation gives "larger effective batch sizes"',
        REPRODUCED if any(c["accum"] > 1 for c in ran) else NOT_REPRODUCED,
        f"{batch} under the {cap:.1f} GB cap: peak {peak}, where one micro-batch of {big} windows peaks at "
        f"{peaks([x for x in g['grid'] if x['micro_batch'] == big])}; `tests/test_train.py` checks that accumulated "
        f"steps give the weights of one batch"), judged(
        "empty_cache", '`torch.cuda.empty_cache()` every 20 steps, "critical for 8GB GPUs"', NOT_ADDRESSED,
        "because no run compared training with and without it; the runs under the allocator cap did not call it",
        evidence=NOT_MEASURED)]
