"""Chapter 08's streaming measurements, part of ``make bench-inference`` (``inference.bench_inference`` runs them):
time to first audio with 0, 2 and 8 turns of context, stateless and with a kept ``Conversation``, against the
chunk size; the streaming real-time factor; the second turn of a conversation both ways; and the floor no
implementation on this CPU can beat (the FLOPs before the first sample at the best matmul rate).
"""

from __future__ import annotations

import statistics
import time

import torch

from csm_lib.bench.common import REPLY, conversation_with, first_audio, flite_context, ms, threads_set
from csm_lib.codec import StreamingDecoder
from csm_lib.generate import Generator, Segment, as_heard
from csm_lib.progress import progress


def frame_decoding(gen: Generator) -> str:
    """How ``gen`` makes its frames, for the record."""
    if not gen.fast.compiled_frame:
        return "eager"
    return "compiled (Generator.compile)" if gen.codec.stream_features else "frames compiled, codec eager"


def heard(stream, sr: int) -> tuple[float, float, int, int]:
    """Consume an audio stream as a listener meets it (``generate.as_heard``): seconds to its first chunk,
    to its last, its samples, and its stalls (a chunk not there when the audio before it has played)."""
    _, h = as_heard(stream, sr)
    return h["first_audio_ms"] / 1000, h["last_audio_ms"] / 1000, round(h["audio_s"] * sr), h["stalls"]


def time_to_first_audio(gen: Generator, contexts=(0, 2, 8), chunks=(1, 2, 5, 10, 20), growing=(4, 16),
                        repeats: int = 5, max_ms: float = 8000) -> dict:
    """TTFA and RTF for the reply after 0/2/8 flite turns: stateless (``Generator.stream``: the context is
    encoded and prefilled in the call) and kept (``Conversation.stream``: it was added before). Sampled,
    temperature 0.9, seed 0: the same reply every time. Fixed chunk sizes with 2 turns; chunks that grow
    from one frame up to each of ``growing`` (``generate.chunk_sizes``) with every context."""
    ctx = {n: flite_context(n) for n in contexts}
    settings = ([(n, 1, 1) for n in contexts] + [(2, c, c) for c in chunks if c != 1]
                + [(n, g, 1) for n in contexts for g in growing])
    kw = dict(max_audio_length_ms=max_ms, temperature=0.9, topk=50, seed=0)
    runs = {(n, c, first, kept): [] for n, c, first in settings for kept in (False, True)}
    sr = gen.sample_rate
    for _ in progress(range(repeats), desc="first audio"):
        for n, c, first in settings:
            chunking = dict(chunk_frames=c, first_chunk_frames=first)
            runs[n, c, first, False].append(heard(gen.stream(REPLY, n % 2, ctx[n], **chunking, **kw), sr))
            conv = conversation_with(gen, ctx[n])  # not timed: the conversation already happened
            runs[n, c, first, True].append(heard(conv.stream(REPLY, n % 2, **chunking, **kw), sr))
    rows = []
    for (n, c, first, kept), rs in runs.items():
        firsts, total, samples, stalls = zip(*rs, strict=True)
        audio_s = samples[0] / sr
        ctx_s = sum(len(s.audio) for s in ctx[n]) / sr
        rows.append({"context_turns": n, "context_audio_s": round(ctx_s, 2),
                     "chunk_frames": c, "first_chunk_frames": first, "state": "kept" if kept else "stateless",
                     "first_audio_ms": ms(list(firsts)), "total_ms": ms(list(total)),
                     "audio_s": round(audio_s, 2), "rtf": round(statistics.median(total) / audio_s, 4),
                     "stalls_max": max(stalls)})
    return {"rows": rows, "reply": REPLY, "settings": kw, "repeats": repeats,
            "frame_decoding": frame_decoding(gen)}


def second_turn(gen: Generator, repeats: int = 5, max_ms: float = 8000) -> dict:
    """The turn after a generated reply (2 flite turns, then the reply): kept state against two stateless
    calls, one given the reply as its codes (same codes as kept) and one given it as audio, as Sesame's
    ``generate(text, speaker, context)`` gets it (the codec encodes it again: other codes)."""
    ctx = flite_context(2)
    kw = dict(max_audio_length_ms=max_ms, temperature=0.9, topk=50)
    conv = conversation_with(gen, ctx)
    reply = torch.cat(list(conv.frames(REPLY, 0, seed=0, **kw))).T  # (K, F): the first turn, generated
    as_codes = [*ctx, Segment(0, REPLY, codes=reply)]
    as_audio = [*ctx, Segment(0, REPLY, audio=gen.decode(list(reply.T[:, None])))]
    nxt = "That is fine with me, I will get the car."
    kept_codes = torch.cat(list(conversation_with(gen, as_codes).frames(nxt, 1, seed=1, **kw)))
    same = torch.equal(kept_codes, torch.cat(list(gen.frames(nxt, 1, as_codes, seed=1, **kw))))
    times = {"stateless": [], "stateless_audio": [], "kept": []}
    for _ in range(repeats):
        times["stateless"].append(first_audio(gen.stream(nxt, 1, as_codes, seed=1, **kw))[0])
        times["stateless_audio"].append(first_audio(gen.stream(nxt, 1, as_audio, seed=1, **kw))[0])
        conv = conversation_with(gen, as_codes)
        times["kept"].append(first_audio(conv.stream(nxt, 1, seed=1, **kw))[0])
    s, a, k = ms(times["stateless"]), ms(times["stateless_audio"]), ms(times["kept"])
    return {"context": "2 flite turns + the generated reply (as codes)", "positions": conv.positions,
            "stateless_first_audio_ms": s, "kept_first_audio_ms": k, "kept_vs_stateless_x": round(s / k, 2),
            "codes_identical": bool(same),
            "stateless_from_audio_first_audio_ms": a, "kept_vs_stateless_from_audio_x": round(a / k, 2),
            "frame_decoding": frame_decoding(gen)}


def gemm_peak_gflops(threads: int, repeats: int = 20) -> float:
    """The best fp32 matmul rate on this CPU at ``threads``: the largest of a few square-ish GEMMs
    (medians of ``repeats``), an upper bound on what any layer here can reach."""
    best = 0.0
    with threads_set(threads):
        for m, k, n in ((512, 768, 768), (1024, 1024, 1024), (2048, 256, 1536)):
            a, b = torch.randn(m, k), torch.randn(k, n)
            for _ in range(3):
                a @ b
            t = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                a @ b
                t.append(time.perf_counter() - t0)
            best = max(best, 2 * m * k * n / statistics.median(t) / 1e9)
    return round(best, 1)


def flops(fn) -> int:
    """Floating-point operations of ``fn()`` as PyTorch counts them (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return counter.get_total_flops()


def first_audio_floor(gen: Generator, peak_gflops: float, n_turns: int = 2) -> dict:
    """A lower bound on time to first audio: the FLOPs the first sample needs (encode the context,
    prefill the prompt, one frame, one frame through the streaming decoder), at ``peak_gflops``.

    No kernel here runs faster than the best matmul rate, so no implementation on this CPU in fp32
    starts sooner than this; a kept conversation skips the first two parts but for its new text."""
    ctx = flite_context(n_turns)
    K = gen.model.cfg.n_codebooks
    codes = torch.zeros(1, K, dtype=torch.long)
    parts: dict[str, int] = {}
    parts["encode context"] = flops(lambda: [gen.segment_frames(s) for s in ctx])
    frames, mask = gen.prompt(REPLY, n_turns % 2, ctx, 100)
    cache = gen.fast.new_cache(1, frames.shape[1] + 1)
    parts["prefill context"] = flops(lambda: gen.fast.prefill(frames, mask, cache))
    text, tmask = (t[None] for t in gen.text_frames(REPLY, n_turns % 2))
    new_text = "prefill new text (kept: only this)"
    parts[new_text] = flops(lambda: gen.fast.prefill(text, tmask, gen.fast.new_cache(1, text.shape[1])))
    parts["prefill context"] -= parts[new_text]
    h = torch.zeros(1, gen.model.cfg.backbone.dim)
    parts["first frame"] = flops(lambda: gen.fast.decode_frame(h, 0.0, 1, None, None))
    parts["decode it"] = flops(lambda: StreamingDecoder(gen.codec).push(codes[..., None]))
    mflop = {k: round(v / 1e6, 1) for k, v in parts.items()}
    stateless = sum(parts.values())
    kept = stateless - parts["encode context"] - parts["prefill context"]
    return {"context_turns": n_turns, "prompt_positions": frames.shape[1], "MFLOP": mflop,
            "peak_gflops": peak_gflops,
            "stateless_floor_ms": round(stateless / peak_gflops / 1e6, 1),
            "kept_floor_ms": round(kept / peak_gflops / 1e6, 1)}
