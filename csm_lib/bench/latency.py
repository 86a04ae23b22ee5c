"""The latency table (chapter 09): ``make bench-latency`` -> ``results/latency_table.json``.

Four systems of the seed's table, each at the reference CSM's parameter count, on the same codec,
the same text front end (flite's phones), the same machine and the same run, batch 1, sampled
(temperature 0.9, top-k 50):

* ``pipeline`` (``baselines/pipeline.py``): the reference CSM without context, every frame, then one decode;
* ``audiolm`` (``baselines/audiolm.py``): semantic -> coarse -> fine, each stage over the whole utterance;
* ``valle`` (``baselines/valle.py``): codebook 0 autoregressively, then K-1 non-autoregressive passes;
* ``csm``: the reference CSM streaming frame by frame through the codec's causal decoder, the
  conversation kept (chapter 08: ``Conversation``); ``csm_stateless`` re-encodes the context instead.

Every system speaks a reply of the same length: ``n_frames = round(phone tokens x frames per
token)``, the corpus's mean rate (``frames_per_token``), so a system that has not learnt to stop
is not penalised and one that stops early does not gain. Phones are looked up in a table learnt
before timing (``text.learn``), as a deployed front end would cache them.

Sections of the JSON: ``speech_out`` and ``full_turn`` (medians and 95% intervals over the replies,
interleaved: every system speaks reply i before any speaks reply i+1), ``table`` (the seed's layout,
the improvement computed the seed's way: ``(pipeline - x) / pipeline``), ``length_curve`` (latency
against reply length, 1-20 s), ``cost_model`` (sequential steps and FLOPs before the first sample,
a two-parameter fit to this CPU, and what it predicts for GPUs), ``speaks`` (WER of each system on
held-out sentences, pocketsphinx, with 95% intervals).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict

import numpy as np
import torch

from csm_lib import audio as A
from csm_lib import data, metrics
from csm_lib import text as Tx
from csm_lib.baselines import pipeline
from csm_lib.baselines.train import CHECKPOINTS, load, load_text_lm, reply_prefix, write_reply  # noqa: F401
from csm_lib.bench.common import DEVICES, LAUNCH_US, conversation_with, first_audio, layer_weights, threads_set
from csm_lib.generate import REFERENCE_MODEL, Generator, Segment, load_generator, load_model
from csm_lib.judges.evaluate import corpus_folder, held_out_targets, trained_with
from csm_lib.progress import progress

SYSTEMS = ("pipeline", "audiolm", "valle", "csm")  # the seed's rows, in its order
SEED_MS = {"pipeline": 850, "audiolm": 1200, "valle": 950, "csm": 180}
SEED_IMPROVEMENT = {"pipeline": "Baseline", "audiolm": "-41%", "valle": "-12%", "csm": "+78.8%"}
SAMPLING = {"temperature": 0.9, "topk": 50}
CONVENTION = (
    "Latency: wall time from the end of the user's turn (its audio available) to the first audio sample of the "
    "reply leaving the system; batch 1, same reply text, same context, same machine, same run. speech_out: the "
    "reply's text given -> first audio. full_turn: the user's audio -> ASR (pocketsphinx) -> the reply's text from "
    "one small character LM shared by every system (CSM starts on its first sentence; the others need the whole "
    "reply) -> first audio. Every system speaks a reply of the same length (the corpus's frames per phone token). "
    "time to last sample and RTF (time to last sample / audio duration) beside it.")


# ----------------------------------------------------------------------------- the systems


def frames_per_token(gen: Generator, rows: list[dict], n: int = 400) -> float:
    """The corpus's mean audio frames per text token (phones): how long a reply of a given text is."""
    rows = rows[:n]
    tokens = sum(len(ids) for ids in gen.tokenizer.encode_many([(r["text"], r["speaker"]) for r in rows]))
    frames = sum(r["duration"] for r in rows) * 1000 / gen.frame_ms
    return frames / tokens


def reply_frames(gen: Generator, text: str, speaker: int, rate: float) -> int:
    return max(1, round(len(gen.tokenizer.encode(text, speaker)) * rate))


def decode_whole(gen: Generator, codes: torch.Tensor) -> torch.Tensor:
    """All frames ``(1, K, N)`` decoded in one call -> audio ``(T,)``."""
    return gen.codec.decode(codes)[0] if codes.shape[-1] else torch.zeros(0)


def speakers(gen: Generator, models: dict, chunking: dict | None = None) -> dict:
    """Each system as ``fn(text, speaker, context, n_frames, seed) -> iterator of audio chunks``.

    ``context``: the earlier turns (Segments); its last one is the user's turn, which has just ended.
    A non-streaming system yields its whole reply as one chunk; CSM's chunks follow ``chunking``
    (``chunk_frames``, ``first_chunk_frames`` of ``Generator.stream``; default one frame each)."""
    kw = SAMPLING | (chunking or {})

    def ids(text: str, speaker: int) -> torch.Tensor:
        return torch.tensor([gen.tokenizer.encode(text, speaker)])

    def csm(text, speaker, context, n, seed, conv=None, stop=False):
        conv.add(context[-1])  # the user's turn: encoded and run through the backbone now
        yield from conv.stream(text, speaker, n * gen.frame_ms, seed=seed, stop_at_end=stop, **kw)

    def csm_stateless(text, speaker, context, n, seed, conv=None, stop=False):
        yield from gen.stream(text, speaker, context, n * gen.frame_ms, seed=seed, stop_at_end=stop, **kw)

    def pipe(text, speaker, context, n, seed, conv=None, stop=False):
        yield pipeline.speak(gen, text, speaker, n, seed=seed, stop_at_end=stop, **SAMPLING)

    def staged(model):
        def run(text, speaker, context, n, seed, conv=None, stop=False):
            yield decode_whole(gen, model.codes(ids(text, speaker), n, seed=seed, stop_at_end=stop, **SAMPLING))
        return run

    return {"pipeline": pipe, "audiolm": staged(models["audiolm"]), "valle": staged(models["valle"]),
            "csm": csm, "csm_stateless": csm_stateless}


def run_system(name: str, fn, gen: Generator, text: str, speaker: int, context: list[Segment], n: int,
               seed: int, stop: bool = False):
    """The reply's audio chunks, as they come (``fn`` of ``speakers``). For CSM, the conversation up to
    the user's turn is built first, untimed: in a live conversation it happened before."""
    conv = conversation_with(gen, context[:-1]) if name == "csm" else None
    return fn(text, speaker, context, n, seed, conv=conv, stop=stop)


def timed(name: str, fn, gen: Generator, text: str, speaker: int, context: list[Segment], n: int,
          seed: int) -> tuple[float, float, int]:
    """(seconds to first audio, seconds to last sample, samples) of one reply of ``n`` frames."""
    stream = run_system(name, fn, gen, text, speaker, context, n, seed)  # a generator: nothing has run yet
    return first_audio(stream)


# ----------------------------------------------------------------------------- the replies


def replies(gen: Generator, n: int) -> tuple[list[dict], float]:
    """``n`` held-out test turns (third turn on) with their earlier turns, and the corpus's frames per token."""
    _, meta = load_model(REFERENCE_MODEL)
    t = trained_with(meta)
    folder = corpus_folder(t)
    rate = frames_per_token(gen, data.load_manifest(folder, "train"))
    out = []
    for row, earlier in held_out_targets(data.load_manifest(folder, "test"), n):
        context = [Segment(r["speaker"], r["text"], A.load(r["wav"])[0]) for r in earlier[-2:]]  # the last two
        out.append({"text": row["text"], "speaker": row["speaker"], "context": context, "row": row,
                    "n_frames": reply_frames(gen, row["text"], row["speaker"], rate)})
    return out, rate


def summary(values: list[float]) -> dict:
    """Median in ms with a bootstrap 95% interval of the median, and n."""
    v = np.array(values) * 1000
    return {"median_ms": round(float(np.median(v)), 1),
            "ci95_ms": [round(x, 1) for x in metrics.bootstrap_ci(lambda idx: float(np.median(v[idx])), len(v))],
            "n": len(v)}


# ----------------------------------------------------------------------------- speech out, full turn


def speech_out(gen: Generator, fns: dict, reps: list[dict]) -> dict:
    """Reply text given -> first audio, every system on every reply (interleaved)."""
    runs: dict[str, list] = {k: [] for k in fns}
    for i, r in enumerate(progress(reps, desc="speech out", unit="reply")):
        for name, fn in fns.items():
            runs[name].append(timed(name, fn, gen, r["text"], r["speaker"], r["context"], r["n_frames"], i))
    out = {}
    for name, rs in runs.items():
        first, last, samples = (list(x) for x in zip(*rs, strict=True))
        audio_s = [s / gen.sample_rate for s in samples]
        out[name] = {"first_audio": summary(first), "last_sample": summary(last),
                     "rtf_median": round(statistics.median(b / a for b, a in zip(last, audio_s, strict=True)), 3),
                     "audio_s_median": round(statistics.median(audio_s), 2)}
    return out


def full_turn(gen: Generator, fns: dict, reps: list[dict], lm, tok, rate: float) -> dict:
    """User audio -> ASR -> text LM -> first audio. The ASR and LM steps are timed once per reply and
    shared; each system then speaks (timed) what it can start on: CSM the first sentence, the rest all."""
    asr = metrics.transcriber()
    rows, times = [], {k: [] for k in fns}
    for i, r in enumerate(progress(reps, desc="full turn", unit="reply")):
        user = r["context"][-1]
        t0 = time.perf_counter()
        heard = asr(user.audio, gen.sample_rate)
        asr_s = time.perf_counter() - t0
        reply = write_reply(lm, tok, heard or "yes", user.speaker, r["speaker"])
        Tx.learn([reply["text"]])  # the phone table, as for the corpus replies (not timed)
        rows.append({"heard": heard, "reference": user.text, "reply": reply["text"], "asr_ms": round(asr_s * 1e3, 1),
                     "lm_first_sentence_ms": round(reply["first_s"] * 1e3, 1),
                     "lm_total_ms": round(reply["total_s"] * 1e3, 1)})
        for name, fn in fns.items():
            streaming = name.startswith("csm")
            text = reply["first_sentence"] if streaming else reply["text"]
            n = reply_frames(gen, text, r["speaker"], rate)
            first, _, _ = timed(name, fn, gen, text, r["speaker"], r["context"], n, i)
            times[name].append(asr_s + (reply["first_s"] if streaming else reply["total_s"]) + first)
    wer = metrics.wer([x["reference"] for x in rows], [x["heard"] for x in rows])
    return {"systems": {k: summary(v) for k, v in times.items()}, "asr_wer_on_user_turns": round(wer, 3),
            "asr": summary([x["asr_ms"] / 1e3 for x in rows]),
            "lm_first_sentence": summary([x["lm_first_sentence_ms"] / 1e3 for x in rows]),
            "lm_total": summary([x["lm_total_ms"] / 1e3 for x in rows]), "examples": rows[:5]}


# ----------------------------------------------------------------------------- latency vs reply length


def length_curve(gen: Generator, fns: dict, context: list[Segment], seconds=(1, 2, 5, 10, 20),
                 repeats: int = 3) -> dict:
    """Speech-out latency against the reply's length (the same text, its length forced to ``seconds``)."""
    text = "the quick brown fox jumps over the lazy dog"
    out = {name: [] for name in fns}
    for s in progress(seconds, desc="length curve"):
        n = round(s * 1000 / gen.frame_ms)
        runs = {name: [] for name in fns}
        for rep in range(repeats):
            for name, fn in fns.items():
                runs[name].append(timed(name, fn, gen, text, 0, context, n, rep))
        for name, rs in runs.items():
            out[name].append({"reply_s": s, "n_frames": n,
                              "first_audio_ms": round(statistics.median(r[0] for r in rs) * 1e3, 1),
                              "last_sample_ms": round(statistics.median(r[1] for r in rs) * 1e3, 1)})
    return {"text": text, "repeats": repeats, "curves": out}


# ----------------------------------------------------------------------------- cost model


def step_weights(t, head: int) -> int:
    """Weights read by one step of a transformer (all layers, then its output head of ``head`` columns)."""
    return t.n_layers * layer_weights(t) + t.dim * head


def cost_before_first_sample(name: str, cfgs: dict, n: int, prompt: int = 40) -> dict:
    """Sequential transformer steps, FLOPs and weight bytes read (fp32) before the first audio sample.

    A step of batch 1 reads every weight once (2 FLOPs per weight per position); a pass over S
    positions costs S times the FLOPs but reads the weights once. Codec decoding and attention
    over the context are left out (the same for all, and small at these lengths)."""
    steps, flops, weights = 0, 0, 0

    def add(n_steps: int, w: int, positions_per_step: int = 1) -> None:
        nonlocal steps, flops, weights
        steps += n_steps
        flops += 2 * w * positions_per_step * n_steps
        weights += w * n_steps

    if name in ("csm", "pipeline"):
        c = cfgs["csm"]
        bb, dec = step_weights(c.backbone, c.audio_vocab_size), step_weights(c.decoder, c.audio_vocab_size)
        frames = 1 if name == "csm" else n
        add(1, bb, prompt)  # the prompt's prefill
        add(frames - 1, bb)
        add(frames * (c.n_codebooks - 1), dec)
    elif name == "valle":
        c = cfgs["valle"]
        add(1, step_weights(c.ar, c.audio_vocab_size + 1), prompt)
        add(n, step_weights(c.ar, c.audio_vocab_size + 1))
        add(c.n_codebooks - 1, step_weights(c.nar, c.audio_vocab_size), prompt + n)
    elif name == "audiolm":
        c = cfgs["audiolm"]
        V = c.audio_vocab_size
        for t, prefix, targets, head in ((c.semantic, prompt, n, V + 1), (c.coarse, n, 3 * n, 3 * V + 1),
                                         (c.fine, 3 * n, 4 * n, 4 * V + 1)):
            w = step_weights(t, head)
            add(1, w, prefix)
            add(targets, w)
    return {"sequential_steps": steps, "GFLOP": round(flops / 1e9, 3), "weight_GB_read": round(weights * 4 / 1e9, 3)}


def fit_cost(points: list[dict]) -> dict:
    """Least squares ``ms = a * sequential_steps + b * GFLOP`` over measured points; relative errors."""
    X = np.array([[p["sequential_steps"], p["GFLOP"]] for p in points])
    y = np.array([p["measured_ms"] for p in points])
    (a, b), *_ = np.linalg.lstsq(X, y, rcond=None)
    pred = X @ np.array([a, b])
    rel = np.abs(pred - y) / y
    return {"ms_per_step": round(float(a), 4), "ms_per_GFLOP": round(float(b), 3),
            "median_relative_error": round(float(np.median(rel)), 3), "max_relative_error": round(float(rel.max()), 3)}


def predict_gpu(cost: dict, kernels_per_step: int = 40) -> dict:
    """Lower bound per device of ``DEVICES``: each step costs its launches or its weight reads, whichever is
    larger, plus the FLOPs at peak (fp32). ``kernels_per_step``: an eager step of our small models."""
    out = {}
    for dev, d in DEVICES.items():
        per_step_read = cost["weight_GB_read"] / max(cost["sequential_steps"], 1) / d["bandwidth_GBps"] * 1e3
        for mode, us in LAUNCH_US.items():
            launch = kernels_per_step * us / 1e3
            ms = cost["sequential_steps"] * max(launch, per_step_read) + cost["GFLOP"] / (d["fp32_TFLOPs"] * 1e3) * 1e3
            out[f"{dev} {mode}"] = round(ms, 2)
    return out


def cost_model(cfgs: dict, curve: dict) -> dict:
    points = []
    for name in SYSTEMS:
        for p in curve["curves"][name]:
            points.append({"system": name, "n_frames": p["n_frames"], "measured_ms": p["first_audio_ms"]}
                          | cost_before_first_sample(name, cfgs, p["n_frames"]))
    fit = fit_cost(points)
    for p in points:
        p["fitted_ms"] = round(fit["ms_per_step"] * p["sequential_steps"] + fit["ms_per_GFLOP"] * p["GFLOP"], 1)
        p["gpu_predicted_ms"] = predict_gpu(p)
    return {"what": "work before the first audio sample, per system and reply length; ms = a * steps + b * GFLOP "
                    "fitted to this CPU's measurements (length_curve); GPU lower bounds from launches, weight reads "
                    "and peak FLOPs", "devices_assumed": DEVICES, "launch_us_assumed": LAUNCH_US,
            "fit": fit, "points": points}


# ----------------------------------------------------------------------------- do they speak?


def speaks(gen: Generator, fns: dict, reps: list[dict]) -> dict:
    """WER (pocketsphinx) of each system's speech of the held-out replies (their own length rule), with CIs.

    The ground truth (flite's own audio of the reply) is judged alongside."""
    asr = metrics.transcriber()
    hyps: dict[str, list[str]] = {k: [] for k in (*SYSTEMS, "ground_truth")}
    for i, r in enumerate(progress(reps, desc="judging speech", unit="reply")):
        for name in SYSTEMS:
            chunks = run_system(name, fns[name], gen, r["text"], r["speaker"], r["context"], 2 * r["n_frames"], i,
                                stop=True)  # its own ending, up to twice the corpus length
            audio = torch.cat([torch.zeros(0), *chunks])
            hyps[name].append(asr(audio, gen.sample_rate))
        hyps["ground_truth"].append(asr(A.load(r["row"]["wav"])[0], gen.sample_rate))
    refs = [r["text"] for r in reps]
    return {name: wer_with_ci(refs, h) for name, h in hyps.items()}


def wer_with_ci(refs: list[str], hyps: list[str]) -> dict:
    """Corpus WER, n and its bootstrap 95% interval (utterances resampled)."""
    errs = np.array([metrics.word_errors(a, b) for a, b in zip(refs, hyps, strict=True)])  # (n, 2): edits, words
    ci = metrics.bootstrap_ci(lambda idx: float(errs[idx, 0].sum() / errs[idx, 1].sum()), len(refs))
    return {"wer": round(float(errs[:, 0].sum() / errs[:, 1].sum()), 3), "n": len(refs), "ci95": ci}


def bench_latency(threads: int = 2, replies_n: int = 24, repeats: int = 3) -> dict:
    from csm_lib.checkpoint import device_name, model_record

    gen = load_generator()
    gen.fast.compile()  # chapter 08's fast path, for CSM and the pipeline's TTS alike
    loaded = {name: load(CHECKPOINTS[name]) for name in ("valle", "audiolm")}  # (model, sidecar)
    models = {name: m for name, (m, _) in loaded.items()}
    metas = {name: meta for name, (_, meta) in loaded.items()}
    lm, tok, lm_meta = load_text_lm(CHECKPOINTS["textlm"])
    cfgs = {"csm": gen.model.cfg, **{k: m.cfg for k, m in models.items()}}
    params = {"csm": gen.model.num_parameters()["total"], "pipeline": gen.model.num_parameters()["total"],
              **{k: m.num_parameters()["total"] for k, m in models.items()}}
    fns = speakers(gen, models)
    record = {"what": "the seed's latency table, measured: four systems at matched parameter count, one run",
              "convention": CONVENTION, "sampling": SAMPLING, "torch_threads": threads, "parameters": params,
              "text_lm_parameters": lm.num_parameters(),
              "measured_with": model_record(REFERENCE_MODEL),  # the CSM (and the pipeline's TTS)
              "training": {"csm": "checkpoints/csm_reference.json",
                           **{k: {"steps": m["steps"], "wall_time_s": m["wall_time_s"], "valid": m["valid"]}
                              for k, m in metas.items()},
                           "textlm": {"steps": lm_meta["steps"], "wall_time_s": lm_meta["wall_time_s"],
                                      "valid": lm_meta["valid"]}},
              "matched": "parameter count (within 1% of the reference CSM; the pipeline's TTS is the CSM itself)"}
    with threads_set(threads):
        record["device"] = device_name("cpu")
        reps, rate = replies(gen, replies_n)
        Tx.learn([r["text"] for r in reps] + ["the quick brown fox jumps over the lazy dog"])
        record["frames_per_token"] = round(rate, 3)
        t0 = time.perf_counter()
        for name, fn in fns.items():  # warm-up: inductor compiles, first calls allocate
            timed(name, fn, gen, reps[0]["text"], reps[0]["speaker"], reps[0]["context"], 4, 0)
        record["warm_up_s"] = round(time.perf_counter() - t0, 1)
        record["speech_out"] = speech_out(gen, fns, reps)
        record["full_turn"] = full_turn(gen, fns, reps, lm, tok, rate)
        record["length_curve"] = length_curve(gen, fns, reps[0]["context"], repeats=repeats)
        record["cost_model"] = cost_model(cfgs, record["length_curve"])
        record["speaks"] = speaks(gen, fns, reps)
    pipe = record["speech_out"]["pipeline"]["first_audio"]["median_ms"]
    record["table"] = [{"system": name, "seed_ms": SEED_MS[name], "seed_improvement": SEED_IMPROVEMENT[name],
                        "speech_out_ms": record["speech_out"][name]["first_audio"]["median_ms"],
                        "full_turn_ms": record["full_turn"]["systems"][name]["median_ms"],
                        "improvement_pct": round(100 * (pipe - record["speech_out"][name]["first_audio"]["median_ms"])
                                                 / pipe, 1)} for name in SYSTEMS]
    record["replies"] = [{"text": r["text"], "speaker": r["speaker"], "n_frames": r["n_frames"],
                          "conversation": r["row"]["conversation"], "turn": r["row"]["turn"]} for r in reps]
    record["configs"] = {k: asdict(v) for k, v in cfgs.items()}
    return record

