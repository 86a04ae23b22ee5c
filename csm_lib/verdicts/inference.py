"""The seed's inference claims: "3.5ms inference (GPU)" (a cost model only), the KV cache, speculative decoding, flash
attention, INT8's speed and quality, and 200 ms streaming chunks, judged from ``results/inference.json`` (chapter 08),
``results/kv_cache_speedup.json`` (chapter 04) and the codec's frame rate in ``checkpoints/codec_reference.json``.
"""

from __future__ import annotations

from functools import partial

from .rules import (
    CODEC_CK,
    COST_MODEL,
    INF,
    KV,
    MEASURED,
    MINIMAL_WER_POINTS,
    NOT_ADDRESSED,
    NOT_MEASURED,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    REPRODUCED,
    SEED,
    Claim,
    Results,
    apart,
    speedup,
)


def inference_claims(r: Results) -> list[Claim]:
    """GPU inference, the KV cache, speculation, flash attention, INT8 and chunks: chapters 04 and 08."""
    inf, kv = r[INF], r[KV]
    judged = partial(Claim, evidence=MEASURED, sources=(INF,), chapter="08", measured_with=r.reference_step(INF))
    vs, spec, q8, wer = inf["vs_transformers"], inf["speculative"], inf["int8"], inf["int8"]["quality"]
    gpu = {k: inf["cost_model"][k]["gpu"]["RTX 4090 (consumer GPU)"] for k in ("reference", "paper_422m")}
    att = {(x["length"], x["mode"]): x for x in inf["attention"]["rows"]}
    n, rows, big = max(length for length, _ in att), kv["rows"], q8["paper_422m_random"]
    flash, math = "sdpa flash (CPU kernel)_ms", "plain math (repeat K/V)_ms"
    rise, overlap = wer["int8"]["wer"] - wer["fp32"]["wer"], not apart(wer["int8"]["wer_ci95"], wer["fp32"]["wer_ci95"])
    frame_ms, fa = 1e3 / r[CODEC_CK]["config"]["frame_rate"], inf["first_audio"]["rows"]
    fixed = sorted({x["chunk_frames"] for x in fa if x["chunk_frames"] == x["first_chunk_frames"]})
    growing = sorted({x["chunk_frames"] for x in fa if x["chunk_frames"] != x["first_chunk_frames"]})
    below = max(c for c in fixed if c * frame_ms < SEED["chunk_ms"])  # the largest fixed chunk under the seed's
    turns = inf["first_audio_floor"]["context_turns"]  # the context of chapter 08's time-to-first-audio rows
    near = {x["state"]: x["first_audio_ms"] for x in fa
            if x["chunk_frames"] == x["first_chunk_frames"] == below and x["context_turns"] == turns}
    spec_verdict, spec_label = speedup(max(spec[m]["speedup_x"] for m in ("greedy", "sampled")), *SEED["speculative_x"])
    int8_verdict, int8_label = speedup(big["speedup_x"], SEED["int8_x"], SEED["int8_x"])
    return [judged(
        "gpu_ms", '"3.5ms inference (GPU)"', NOT_TESTABLE,
        f"because no GPU ran inference here (nor does the seed say per what: a frame? a token?). A cost model of one "
        f"frame (FLOPs, bytes read, kernels in sequence) predicts on an RTX 4090 "
        f"{gpu['reference']['predicted_eager_ms']:.2f} ms for the reference in eager PyTorch, "
        f"{gpu['reference']['predicted_cuda_graphs_ms']:.2f} ms with CUDA graphs; "
        f"{gpu['paper_422m']['predicted_eager_ms']:.2f} / {gpu['paper_422m']['predicted_cuda_graphs_ms']:.2f} ms for "
        f"`paper_422m` in bf16. On this CPU the reference takes {vs['fast_compiled']['marginal_per_frame_ms']:.2f} ms "
        f"per frame compiled; transformers' `generate`, uncompiled and without its static cache, "
        f"{vs['transformers']['marginal_per_frame_ms']:.2f} ms ({vs['fast_compiled_vs_transformers_x']:.2f}x slower): "
        f"its compiled recipe was not measured, so this is no comparison with transformers at its best",
        evidence=COST_MODEL), Claim(
        "kv_cache", 'KV cache: "reuse attention computations"',
        REPRODUCED if all(x["speedup_x"] > 1 for x in rows) else NOT_REPRODUCED,
        f"as a speed-up at every context measured (the seed gives no number): {rows[-1]['speedup_x']:.0f}x per "
        f"generated position at {rows[-1]['context']:,} positions of context ({rows[-1]['no_cache_ms']:.0f} vs "
        f"{rows[-1]['cache_ms']:.1f} ms), {rows[0]['speedup_x']:.1f}x at {rows[0]['context']}; the reference "
        f"backbone, untrained weights, {kv['torch_threads']} thread", MEASURED, (KV,), "04"), judged(
        "speculative", 'speculative decoding: "2-3x speedup for common phrases"', spec_verdict,
        f"an n-gram draft of whole frames (prompt lookup over the conversation's codes, {spec['draft_frames']} frames "
        f"checked in one backbone pass) kept {spec['greedy']['kept']} of {spec['greedy']['drafted']} drafted frames "
        f"greedy and {spec['sampled']['kept']} of {spec['sampled']['drafted']} sampled: "
        f"{spec['greedy']['speedup_x']:.2f}x / {spec['sampled']['speedup_x']:.2f}x. No trained draft model was tried",
        qualifier=spec_label), judged(
        "flash", 'flash attention: "memory-efficient attention computation"', NOT_ADDRESSED,
        f"because only time was measured, not memory: PyTorch's CPU flash kernel takes {att[n, 'prefill'][flash]:.1f} "
        f"ms for a {n:,}-position causal prefill at the reference backbone's shapes, plain math "
        f"{att[n, 'prefill'][math]:.1f} ms; decoding one position, {att[n, 'decode'][flash]:.3f} vs "
        f"{att[n, 'decode'][math]:.3f} ms", evidence=NOT_MEASURED), judged(
        "int8_speed", 'INT8: "2x inference speedup"', int8_verdict,
        f"PyTorch's dynamic INT8 linear layers on this CPU (no GPU): {big['speedup_x']:.2f}x faster per frame at the "
        f"seed's size (`paper_422m`, {big['parameters'] / 1e6:.1f}M parameters, random weights), "
        f"{q8['reference']['speedup_x']:.2f}x at the reference's {q8['reference']['parameters'] / 1e6:.1f}M, where "
        f"quantising each input costs more than the smaller weights save",
        qualifier=", ".join(filter(None, [int8_label, "at the seed's size"]))), judged(
        "int8_quality", 'INT8: "minimal quality loss"', REPRODUCED if rise <= MINIMAL_WER_POINTS else NOT_REPRODUCED,
        f"WER on {wer['turns']} held-out turns at the reference (where INT8 is slower), not at the seed's size: "
        f"{wer['fp32']['wer']:.1%} fp32, {wer['int8']['wer']:.1%} INT8, {100 * rise:+.1f} points"
        + (", intervals overlapping: too few turns to tell a minimal loss from a real one" if overlap else "")
        + f"; rule: at most {100 * MINIMAL_WER_POINTS:g} points",
        qualifier="not shown" if overlap and rise > MINIMAL_WER_POINTS else ""), judged(
        "chunks", 'streaming: "Current: 200ms chunks"', NOT_TESTABLE,
        f"because a {SEED['chunk_ms']} ms chunk is {SEED['chunk_ms'] / frame_ms:g} frames of the {1e3 / frame_ms:g} "
        f"Hz codec. Chunks measured: fixed {', '.join(f'{c * frame_ms:,.0f}' for c in fixed)} ms, and growing from "
        f"one frame to {' and '.join(map(str, growing))} frames. With {below * frame_ms:.0f} ms chunks after {turns} "
        f"context turns the first audio comes in {near['stateless']:.1f} ms (stateless) / {near['kept']:.1f} ms "
        f"(kept state)", sources=(INF, CODEC_CK))]
