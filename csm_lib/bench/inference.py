"""Chapter 08's measurements: how fast CSM generates on this machine, and what each technique buys.

``make bench-inference`` (``python -m csm_lib.bench inference``) writes ``results/inference.json``.
Every timing is a median over interleaved repeats (a burst of load from a neighbour hits every
setting alike), on the shipped reference model unless said otherwise, greedy unless said
otherwise, at the thread count recorded in the file. Sections:

* ``vs_transformers``: per-frame time of the plain path (``CSM.generate_frame`` in a loop), the
  fast path (``inference.FastCSM``), and transformers' ``CsmForConditionalGeneration.generate``
  with the same weights (``convert.to_hf``), same prompt, and whether their codes are identical;
* ``context``: per-frame time against the number of positions already in the cache;
* ``attention``: one position's attention and a prefill's, plain math against each SDPA backend;
* ``compile``: ``torch.compile`` of the fast path: its warm-up and what it saves per frame;
* ``first_audio``, ``second_turn``, ``first_audio_floor`` (``streaming.py``): time to first audio
  (call -> first sample out of the streaming decoder) with 0, 2 and 8 context turns of flite speech,
  stateless and with a kept ``Conversation``, against the chunk size; streaming real-time factor;
  the second turn of a conversation both ways; the floor of the first audio on this CPU;
* ``int8``: PyTorch's dynamic INT8 linear layers, per-frame time at the reference size and at
  ``paper_422m`` size (random weights), and the WER change on held-out turns at the reference;
* ``speculative``: n-gram ("prompt lookup") speculative decoding of whole frames, its acceptance
  rate and speed-up, greedy and sampled;
* ``frame_cost``: FLOPs and bytes of one frame from the configuration, and what they predict
  for GPUs (``frame_cost`` in this module; the figures assumed are in the file).

The reply and the flite conversation every section speaks (``REPLY``, ``flite_context``) are in
``common.py``, shared with chapter 09.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

from csm_lib import frames as Fr
from csm_lib.bench.common import DEVICES, LAUNCH_US, REPLY, flite_context, layer_weights, ms, threads_set
from csm_lib.bench.streaming import first_audio_floor, gemm_peak_gflops, second_turn, time_to_first_audio
from csm_lib.generate import Generator, load_generator
from csm_lib.inference import FastCSM, LayerCache, int8, plain_frames
from csm_lib.model import CSM, PRESETS, CSMConfig
from csm_lib.progress import progress
from csm_lib.speculative import speculative_frames

# ----------------------------------------------------------------------------- against transformers


def fast_codes(fast: FastCSM, frames: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy frames after the prompt until end of speech (included) or ``n`` -> (F, K)."""
    cache = fast.new_cache(1, frames.shape[1] + n)
    h, out = fast.prefill(frames, mask, cache), []
    for i in range(n):
        if i:
            h = fast.feed(out[-1], cache)
        out.append(fast.frame(h, temperature=0))
        if Fr.is_end_of_speech(out[-1]).item():
            break
    return torch.cat(out)


def hf_codes(hf, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """transformers' greedy generate on text ``tokens`` (1, T) -> (F, K) (it too stops after end of speech)."""
    out = hf.generate(input_ids=tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=n, do_sample=False,
                      depth_decoder_do_sample=False)
    return (out if isinstance(out, torch.Tensor) else out.sequences)[0]


def vs_transformers(gen: Generator, compiled: FastCSM, n_frames: int = 40, repeats: int = 7) -> dict:
    """Per-frame time of plain, fast (eager and compiled) and transformers, same weights and prompt, greedy;
    codes compared."""
    from transformers.utils import logging as hf_logging

    from csm_lib.convert import to_hf

    hf_logging.set_verbosity_error()
    hf = to_hf(gen.model).eval()
    tokens = torch.tensor([gen.tokenizer.encode(REPLY, 0)])
    frames, mask = Fr.text_frames(tokens[0].tolist(), gen.model.cfg.n_codebooks)
    frames, mask = frames[None], mask[None]
    runs = {
        "plain": lambda n: torch.cat(plain_frames(gen.model, frames, mask, n, temperature=0)),
        "fast": lambda n: fast_codes(gen.fast, frames, mask, n),
        "fast_compiled": lambda n: fast_codes(compiled, frames, mask, n),
        "transformers": lambda n: hf_codes(hf, tokens, n),
    }
    codes = {name: run(n_frames) for name, run in runs.items()}  # warm-up, and the codes compared
    times = {(name, n): [] for name in runs for n in (1, n_frames)}
    for _ in progress(range(repeats), desc="vs transformers"):
        for name, run in runs.items():
            for n in (1, n_frames):
                t0 = time.perf_counter()
                run(n)
                times[name, n].append(time.perf_counter() - t0)
    F_ = len(codes["fast"])  # frames computed by each, the end-of-speech frame included if it came

    def speech(c: torch.Tensor) -> torch.Tensor:  # without a final end-of-speech frame
        return c[:-1] if len(c) and Fr.is_end_of_speech(c[-1]).item() else c

    fast = speech(codes["fast"])
    out = {"prompt_tokens": tokens.shape[1], "frames_requested": n_frames, "frames": F_,
           "ended_by_eos": len(fast) < F_,
           "codes_identical": {name: bool(speech(c).shape == fast.shape and torch.equal(speech(c), fast))
                               for name, c in codes.items() if name != "fast"}}
    for name in runs:
        whole, one = ms(times[name, n_frames]), ms(times[name, 1])
        out[name] = {"whole_ms": whole, "first_frame_ms": one, "per_frame_ms": round(whole / F_, 3),
                     "marginal_per_frame_ms": round((whole - one) / (F_ - 1), 3)}
    for fast_name in ("fast", "fast_compiled"):
        for name in ("plain", "transformers"):
            out[f"{fast_name}_vs_{name}_x"] = round(out[name]["marginal_per_frame_ms"]
                                                    / out[fast_name]["marginal_per_frame_ms"], 2)
    return out


# ----------------------------------------------------------------------------- context length, attention


def step_ms(fast: FastCSM, cache: LayerCache, at: int, steps: int = 8) -> list[float]:
    """Seconds of each of ``steps`` frames (feed + frame) after ``at`` cached positions."""
    codes = torch.ones(1, fast.cfg.n_codebooks, dtype=torch.long)
    out = []
    for _ in range(steps):
        cache.length = at
        t0 = time.perf_counter()
        fast.frame(fast.feed(codes, cache), temperature=0)
        out.append(time.perf_counter() - t0)
    return out


def per_frame_vs_context(gen: Generator, contexts=(50, 200, 500, 1000, 2000), repeats: int = 5) -> dict:
    """Per-frame time (feed + frame) after S cached positions, with each attention of ``FastCSM``."""
    fasts = {a: FastCSM(gen.model, attention=a) for a in ("math", "sdpa")}
    caches = {}
    for a, fast in fasts.items():  # fill a cache with 2,000 positions of real-looking frames
        caches[a] = fast.new_cache(1, max(contexts) + 1)
        g = torch.Generator().manual_seed(0)
        codes = torch.randint(1, fast.cfg.audio_vocab_size, (1, max(contexts), fast.cfg.n_codebooks + 1), generator=g)
        codes[..., -1] = 0  # no text column
        mask = torch.ones_like(codes, dtype=torch.bool)
        mask[..., -1] = False
        fast.prefill(codes, mask, caches[a])
    times = {(a, S): [] for a in fasts for S in contexts}
    for _ in progress(range(repeats), desc="context"):
        for S in contexts:
            for a, fast in fasts.items():
                times[a, S] += step_ms(fast, caches[a], S)
    rows = [{"context": S, **{f"{a}_ms": ms(times[a, S]) for a in fasts}} for S in contexts]
    for a in fasts:
        for r in rows:
            r[f"{a}_vs_first"] = round(r[f"{a}_ms"] / rows[0][f"{a}_ms"], 3)
    return {"rows": rows, "statistic": f"median over 8 frames x {repeats} repeats"}


def attention_backends(gen: Generator, lengths=(64, 512, 2000), repeats: int = 20) -> dict:
    """One attention call of the reference backbone's shapes: plain math, and SDPA under each CPU backend.

    ``decode``: 1 query over S cached keys (what each frame does, per layer); ``prefill``: S queries, causal.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = gen.model.cfg.backbone
    H, G, Dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    g = torch.Generator().manual_seed(0)

    def math_attention(q, k, v, causal):
        k, v = k.repeat_interleave(H // G, dim=1), v.repeat_interleave(H // G, dim=1)
        s = q @ k.transpose(-1, -2) / Dh ** 0.5
        if causal:
            s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
        return s.softmax(-1) @ v

    def sdpa(backend):
        def run(q, k, v, causal):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        return run

    kinds = {"plain math (repeat K/V)": math_attention, "sdpa math": sdpa(SDPBackend.MATH),
             "sdpa flash (CPU kernel)": sdpa(SDPBackend.FLASH_ATTENTION)}
    rows = []
    with torch.inference_mode():
        for S in lengths:
            for mode, n_q in (("decode", 1), ("prefill", S)):
                q = torch.randn(1, H, n_q, Dh, generator=g)
                k, v = torch.randn(1, G, S, Dh, generator=g), torch.randn(1, G, S, Dh, generator=g)
                causal = mode == "prefill"
                ref = math_attention(q, k, v, causal)
                row = {"length": S, "mode": mode}
                for name, fn in kinds.items():
                    try:
                        if (fn(q, k, v, causal) - ref).abs().max() > 1e-4:
                            raise AssertionError(f"{name} disagrees with plain math")
                        ts = []
                        for _ in range(repeats):
                            t0 = time.perf_counter()
                            fn(q, k, v, causal)
                            ts.append(time.perf_counter() - t0)
                        row[f"{name}_ms"] = ms(ts)
                    except RuntimeError as e:  # a backend that cannot run these inputs
                        row[f"{name}_ms"] = None
                        row[f"{name}_error"] = str(e).splitlines()[0][:160]
                rows.append(row)
    return {"rows": rows, "shapes": {"heads": H, "kv_heads": G, "head_dim": Dh}}


# ----------------------------------------------------------------------------- torch.compile


def compile_fast(gen: Generator, n_frames: int = 40, repeats: int = 5) -> tuple[dict, FastCSM]:
    """``FastCSM.compile``: warm-up seconds (greedy, then sampled), then per-frame time beside eager, greedy
    and sampled (temperature 0.9, top-k 50; each frame fed back, as when streaming).

    Run first in a fresh process (inductor's on-disk cache makes a second process compile faster).
    Returns the record and the compiled fast path, for ``vs_transformers``."""
    tokens = gen.tokenizer.encode(REPLY, 0)
    frames, mask = (t[None] for t in Fr.text_frames(tokens, gen.model.cfg.n_codebooks))
    eager, compiled = gen.fast, FastCSM(gen.model).compile()
    t0 = time.perf_counter()
    ref = fast_codes(compiled, frames, mask, n_frames)  # the first call compiles
    warm = time.perf_counter() - t0
    same = torch.equal(ref, fast_codes(eager, frames, mask, n_frames))

    def sampled(fast: FastCSM, n: int) -> torch.Tensor:
        g, cache = torch.Generator().manual_seed(0), fast.new_cache(1, frames.shape[1] + n)
        h, out = fast.prefill(frames, mask, cache), []
        for i in range(n):
            if i:
                h = fast.feed(out[-1], cache)
            out.append(fast.frame(h, 0.9, 50, g))
        return torch.cat(out)

    t0 = time.perf_counter()
    same_sampled = torch.equal(sampled(compiled, n_frames), sampled(eager, n_frames))
    warm_sampled = time.perf_counter() - t0
    times = {"eager": [], "compiled": [], "eager_sampled": [], "compiled_sampled": []}
    for _ in range(repeats):
        for name, fast in (("eager", eager), ("compiled", compiled)):
            t0 = time.perf_counter()
            n = len(fast_codes(fast, frames, mask, n_frames))
            times[name].append((time.perf_counter() - t0) / n)
            t0 = time.perf_counter()
            n = len(sampled(fast, n_frames))
            times[f"{name}_sampled"].append((time.perf_counter() - t0) / n)
    return {"what": "FastCSM.compile: each frame's decoding (codebook 0 and the audio decoder) and its pass back "
                    "through the backbone compiled by inductor; per frame includes the 75-position prompt's prefill "
                    "spread over the frames",
            "warm_up_greedy_s": round(warm, 1), "warm_up_sampled_s": round(warm_sampled, 1),
            "codes_identical_greedy": bool(same), "codes_identical_sampled": bool(same_sampled),
            **{f"{k}_per_frame_ms": ms(v) for k, v in times.items()},
            "speedup_x": round(statistics.median(times["eager"]) / statistics.median(times["compiled"]), 3),
            "speedup_sampled_x": round(statistics.median(times["eager_sampled"])
                                       / statistics.median(times["compiled_sampled"]), 3)}, compiled


# ----------------------------------------------------------------------------- INT8


def per_frame_ms(fast: FastCSM, n_frames: int, repeats: int, prompt: int = 32) -> list[float]:
    """Seconds per frame of ``n_frames`` greedy frames (no early end) after ``prompt`` text positions."""
    K = fast.cfg.n_codebooks
    frames = torch.zeros(1, prompt, K + 1, dtype=torch.long)
    mask = torch.zeros_like(frames, dtype=torch.bool)
    mask[..., K] = True
    out = []
    for _ in range(repeats):
        cache = fast.new_cache(1, prompt + n_frames)
        h = fast.prefill(frames, mask, cache)
        t0 = time.perf_counter()
        for i in range(n_frames):
            codes = fast.frame(h, temperature=0)
            if i < n_frames - 1:
                h = fast.feed(codes, cache)
        out.append((time.perf_counter() - t0) / n_frames)
    return out


def int8_speed(model: CSM, n_frames: int, repeats: int) -> dict:
    fp32 = FastCSM(model)
    q = int8(fp32)
    t = {"fp32": [], "int8": []}
    for _ in range(repeats):
        t["fp32"] += per_frame_ms(fp32, n_frames, 1)
        t["int8"] += per_frame_ms(q, n_frames, 1)
    return {"parameters": model.num_parameters()["total"], **{f"{k}_per_frame_ms": ms(v) for k, v in t.items()},
            "speedup_x": round(statistics.median(t["fp32"]) / statistics.median(t["int8"]), 3)}


def int8_quality(model_path, turns: int) -> dict:
    """WER/SIM of fp32 and INT8 on the same held-out turns (with context, same seeds)."""
    from csm_lib.generate import load_model
    from csm_lib.judges.evaluate import evaluate_model, model_tokenizer, trained_with

    model, meta = load_model(model_path)
    t = trained_with(meta)
    out = {}
    for name in ("fp32", "int8"):
        r = evaluate_model(model, t, max_turns=turns, tokenizer=model_tokenizer(model_path), without_context=False,
                           int8=name == "int8")
        out[name] = {k: r["with_context"][k] for k in ("wer", "wer_ci95", "cer", "sim", "sim_ci95", "ended_by_eos")}
    out["turns"] = turns
    out["wer_change"] = round(out["int8"]["wer"] - out["fp32"]["wer"], 4)
    return out


def bench_int8(gen: Generator, model_path, quality_turns: int, repeats: int) -> dict:
    torch.manual_seed(0)
    big = CSM(PRESETS["paper_422m"]).eval()
    return {"reference": int8_speed(gen.model, 40, repeats), "paper_422m_random": int8_speed(big, 4, 3),
            "quality": int8_quality(model_path, quality_turns) if quality_turns else None}


# ----------------------------------------------------------------------------- speculative decoding


def bench_speculative(gen: Generator, repeats: int = 3, max_ms: float = 8000, draft: int = 4) -> dict:
    """n-gram speculative decoding of whole frames after 2 flite turns: acceptance and speed-up, greedy and
    sampled (temperature 0.9), against the same loop without drafts (``draft=0``)."""
    ctx = flite_context(2)
    n = int(max_ms // gen.frame_ms)
    frames, mask = gen.prompt(REPLY, 0, ctx, n)
    out = {"draft_frames": draft, "ngram": 2}
    for name, temp in (("greedy", 0.0), ("sampled", 0.9)):
        times = {"plain": [], "speculative": []}
        for r in range(repeats):
            runs = {}
            for mode, d in (("plain", 0), ("speculative", draft)):
                stats = {}
                t0 = time.perf_counter()
                runs[mode] = list(speculative_frames(gen.fast, frames, mask, n, temp, 50, seed=r, draft=d, stats=stats))
                times[mode].append((time.perf_counter() - t0) / max(1, len(runs[mode])))
            spec_stats, frames_out = stats, len(runs["speculative"])
        same = len(runs["plain"]) == len(runs["speculative"]) and all(
            torch.equal(a, b) for a, b in zip(runs["plain"], runs["speculative"], strict=True))
        out[name] = {"frames": frames_out, **spec_stats, "codes_identical_to_plain": bool(same),
                     "plain_per_frame_ms": ms(times["plain"]),
                     "speculative_per_frame_ms": ms(times["speculative"]),
                     "speedup_x": round(statistics.median(times["plain"]) / statistics.median(times["speculative"]), 3)}
    return out


# ----------------------------------------------------------------------------- a cost model of one frame
# (the figures it assumes for each device: ``common.DEVICES``, ``common.LAUNCH_US``)


def frame_cost(cfg: CSMConfig, context: int, bytes_per_weight: int = 4) -> dict:
    """FLOPs, weight and cache bytes, and sequential kernels of one generated frame at ``context`` positions.

    Matmul FLOPs are 2 x multiply-adds. Per frame: one backbone position (its layers' matvecs, attention
    over ``context`` keys), the codebook-0 head, then K-1 decoder steps (positions 1..K-1, attention over
    them) each with an audio head. Embedding lookups read K rows, not the tables.
    """
    b, d, K, V = cfg.backbone, cfg.decoder, cfg.n_codebooks, cfg.audio_vocab_size
    bb_w, dec_w = b.n_layers * layer_weights(b), d.n_layers * layer_weights(d)
    bb_attn = b.n_layers * 2 * 2 * b.n_heads * b.head_dim * context  # q.K and p.V, multiply-add = 2 FLOPs
    dec_attn = sum(d.n_layers * 2 * 2 * d.n_heads * d.head_dim * (k + 1) for k in range(1, K))
    flops = 2 * bb_w + bb_attn + 2 * b.dim * V + (K - 1) * (2 * dec_w + 2 * d.dim * V) + dec_attn + 2 * b.dim * d.dim
    weights = bb_w + b.dim * V + dec_w * (K - 1) + (K - 1) * d.dim * V + b.dim * d.dim  # read per frame
    cache = 2 * b.n_layers * b.n_kv_heads * b.head_dim * context * 4  # fp32 K and V
    kernels = b.n_layers * 16 + 4 + (K - 1) * (d.n_layers * 16 + 4)  # ~16 ops per layer (our fused path)
    return {"context": context, "MFLOP": round(flops / 1e6, 2),
            "weight_MB": round(weights * bytes_per_weight / 1e6, 2), "kv_cache_MB": round(cache / 1e6, 2),
            "sequential_kernels": kernels}


def predict_gpu(cost: dict, bytes_per_weight: int) -> dict:
    """Lower bounds on a frame's time on each of ``DEVICES``: the larger of compute and memory, plus launches."""
    out = {}
    for name, d in DEVICES.items():
        peak = d["bf16_TFLOPs"] if bytes_per_weight == 2 else d["fp32_TFLOPs"]
        compute = cost["MFLOP"] * 1e6 / (peak * 1e12) * 1e3
        memory = (cost["weight_MB"] + cost["kv_cache_MB"]) * 1e6 / (d["bandwidth_GBps"] * 1e9) * 1e3
        launch = {k: cost["sequential_kernels"] * us / 1e3 for k, us in LAUNCH_US.items()}
        out[name] = {"compute_ms": round(compute, 4), "memory_ms": round(memory, 4),
                     **{f"{k}_launch_ms": round(v, 3) for k, v in launch.items()},
                     **{f"predicted_{k}_ms": round(max(compute, memory) + v, 3) for k, v in launch.items()}}
    return out


def cost_model(measured_ms: float, context: int = 100) -> dict:
    """The cost model for the reference (checked against ``measured_ms`` on this CPU) and paper_422m."""
    out = {"devices_assumed": DEVICES, "launch_us_assumed": LAUNCH_US}
    for preset, nbytes in (("reference", 4), ("paper_422m", 2)):
        cost = frame_cost(PRESETS[preset], context, nbytes)
        out[preset] = {"bytes_per_weight": nbytes, **cost, "gpu": predict_gpu(cost, nbytes)}
    ref = out["reference"]
    out["reference"]["this_cpu"] = {"measured_per_frame_ms": measured_ms,
                                    "implied_GBps": round(ref["weight_MB"] / measured_ms, 1),
                                    "implied_GFLOPs": round(ref["MFLOP"] / measured_ms, 1)}
    return out


# ----------------------------------------------------------------------------- the whole benchmark


def bench_inference(threads: int = 2, repeats: int = 5, quality_turns: int = 20) -> dict:
    from csm_lib.checkpoint import device_name, model_record
    from csm_lib.generate import REFERENCE_MODEL

    gen = load_generator()
    record = {"what": "reference CSM generating on this machine: the fast path against the plain path and "
                      "transformers, context length, attention backends, torch.compile, time to first audio, "
                      "INT8, speculative decoding, and a cost model of one frame",
              "model": str(REFERENCE_MODEL.relative_to(REFERENCE_MODEL.parents[1])),
              "measured_with": model_record(REFERENCE_MODEL),
              "config": asdict(gen.model.cfg), "torch_threads": threads}
    with threads_set(threads):
        record["device"] = device_name("cpu")
        t0 = time.perf_counter()
        record["compile"], compiled = compile_fast(gen, repeats=repeats)  # first: a fresh process compiles
        print(f"compile: {time.perf_counter() - t0:.1f} s", flush=True)
        served = copy.copy(gen)  # what a server runs: the generator with its frames and its streaming decoder compiled
        served.fast = compiled
        served.codec = copy.deepcopy(gen.codec).compile_streaming()
        t0 = time.perf_counter()
        for chunk in (1, 4):  # warm-up: pushes of one frame and of several compile once each
            list(served.stream(REPLY, 0, chunk_frames=chunk, max_audio_length_ms=2000, seed=0))
        record["compile"]["warm_up_codec_s"] = round(time.perf_counter() - t0, 1)
        stages = {
            "vs_transformers": lambda: vs_transformers(gen, compiled, repeats=repeats + 2),
            "context": lambda: per_frame_vs_context(gen, repeats=repeats),
            "attention": lambda: attention_backends(gen),
            "first_audio": lambda: time_to_first_audio(served, repeats=repeats),
            "second_turn": lambda: second_turn(served, repeats=repeats),
            "first_audio_floor": lambda: first_audio_floor(gen, gemm_peak_gflops(threads)),
            "speculative": lambda: bench_speculative(gen),
            "int8": lambda: bench_int8(gen, REFERENCE_MODEL, quality_turns, repeats),
        }
        for name, stage in stages.items():
            t0 = time.perf_counter()
            record[name] = stage()
            print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    record["cost_model"] = cost_model(record["vs_transformers"]["fast"]["marginal_per_frame_ms"])
    return record
