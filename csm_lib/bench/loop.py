"""The voice loop measured (chapter 09): ``make bench-loop`` -> ``results/voice_loop.json``.

Chapter 09's four systems under one streaming loop (``csm_lib/voice_loop.py``): the same front end for all
(silero-vad per 80 ms chunk with the end-of-turn rule, pocketsphinx fed chunk by chunk, chapter 09's text LM,
greedy), only the speech generator differs (``latency.speakers``: chapter 09's wrappers, CSM streaming from a kept
``Conversation`` with chapter 08's chunks growing 1 -> 16 frames; the others speak the whole reply). Each reply
has chapter 09's length rule (the corpus's frames per phone token); the reply's words are looked up before
timing (``text.learn``), as chapter 09 does.

User turns: the held-out test turns of the reference model's own corpus (``latency.replies`` picks the same
kind: ``held_out_targets``, the turn before each target is the user's), synthesised from the corpus's plan
(``data.plan``: text, voice and style) with flite, loudness-normalised as the corpus is, so the 40 h corpus
need not be built. Played at real speed (``RealClock``), every system on turn i before any on turn i+1.

Sections of the JSON:
* ``systems``: per system, medians and p90 of each timeline mark (ms after the end of speech), of each step
  (detect = decision, recognise = hypothesis - decision, write = text - hypothesis, speak = first audio - text),
  false cut-ins, and ``ratio_to_pipeline`` (median end of speech -> first sample over the pipeline's);
* ``end_of_turn``: the trade-off, the rule replayed over silero's window probabilities for each silence threshold
  on *paused turns*: two held-out sentences spoken by one voice, joined with a pause of known length
  (``PAUSES_MS``, digital silence, from the first's last voiced sample to the second's first) - false cut-ins
  against the decision's delay after the end of speech (audio time: the chunk it arrives with; the detector's
  compute, ~0.25 ms per window, left out); the loop's threshold is the smallest whose false cut-in rate on the
  *valid* split's paused turns is <= 5%, and the *test* split's are reported; the same on the user turns
  themselves (flite's own pauses between sentences, 75-220 ms);
* ``recognition``: the silence the recogniser is still fed before the rule decides (``asr_tail``: chosen on the
  valid split's user turns, the smallest within a WER point of feeding every chunk), its work after the end of
  speech, WER of the streamed hypotheses against
  whole-utterance recognition (``metrics.Transcriber``, chapter 09's way, timed as it would run after the turn)
  on the same turns, and two streamed variants (pocketsphinx's default cepstral start; with its fwdflat pass);
* ``phrase_cut_cost``: what starting on the first phrase costs (``phrase_cut_cost``): each cut reply spoken whole
  and cut, WER, the longest pause and the pitch step at the join, paired differences with 95% intervals;
* ``headline``: the numbers the chapter and the README quote (targets beside them);
* ``turns``: what was heard and said, turn by turn.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np
import torch

from csm_lib import audio as A
from csm_lib import data, metrics
from csm_lib import text as Tx
from csm_lib import voice_loop as V
from csm_lib.baselines.train import load, load_text_lm, reply_prefix
from csm_lib.bench.common import conversation_with, threads_set
from csm_lib.bench.latency import CHECKPOINTS, SYSTEMS, reply_frames, speakers, wer_with_ci
from csm_lib.generate import REFERENCE_MODEL, Generator, Segment, load_generator
from csm_lib.judges.evaluate import held_out_targets, trained_with
from csm_lib.progress import progress

TURNS = 24  # chapter 09's number of held-out replies
PAIRS = 30  # sentence pairs per split for the paused turns
CALIBRATION_TURNS = 48  # training turns: the recogniser's cepstral start and the corpus's frames per phone token
CHUNKING = {"chunk_frames": 16, "first_chunk_frames": 1}  # chapter 08: growing from one frame, no stall
SILENCE_MS = (100, 150, 200, 250, 300, 400, 500, 600, 800, 1000, 1200)
PAUSES_MS = (150, 250, 400, 600, 900)
CUT_IN_TARGET = 0.05
ASR_TAILS_MS = (0.0, 80.0, 160.0, 320.0)  # silence still fed to the recogniser before the rule decides
ASR_TAIL_WER_POINTS = 1.0
TARGET_MS = 200  # the seed's 180 ms end to end, with its "sub-200 ms" rounding
ASR_TARGET_MS, WER_GAP_POINTS = 50, 2
PARTS = ("decision_ms", "hypothesis_ms", "phrase_ms", "text_ms", "first_audio_ms")
CONVENTION = (
    "Times in ms after the end of the user's speech: the last 10 ms frame of their audio within 40 dB of its "
    "loudest (voice_loop.end_of_speech, from the audio, never the detector). The user's audio is played at real "
    "speed in 80 ms chunks, then digital silence; clock 0 is its first sample. decision: the end-of-turn rule "
    "fires (silero-vad, 32 ms windows, P >= 0.5; silence_ms of non-speech after >= 64 ms of speech); hypothesis: "
    "pocketsphinx's end_utt returns (it was fed each chunk as it came); phrase: the text LM (greedy) has written "
    "the first phrase (voice_loop.PhraseCut); text: what the system starts on (CSM the first phrase, the others "
    "the whole reply); first_audio: the first reply sample leaves the generator. One process, 2 torch threads, "
    "each step after the one before.")


class Enough(Exception):
    """Raised inside the text LM's loop when the first phrase is out and the system needs no more."""


def lm_writer(lm, tok, user_speaker: int, speaker: int, max_chars: int = 160) -> V.Writer:
    """Chapter 09's text LM (``latency.write_reply``'s call: greedy, 160 characters at most) as a ``Writer``:
    each character goes to ``on_char`` as it is written, and the LM stops when ``on_char`` returns True."""

    def write(heard: str, on_char) -> None:
        prefix = torch.tensor([reply_prefix(tok, heard, user_speaker, speaker)])

        def seen(i: int, code: torch.Tensor) -> None:
            if on_char(tok.decode([int(code)])):
                raise Enough

        try:
            lm.generate(prefix, max_chars, temperature=0, on_target=seen)
        except Enough:
            pass

    return write


# ----------------------------------------------------------------------------- the turns


def reference_plan() -> tuple[str, list[dict]]:
    """The reference model's corpus (its key) and every turn of its plan, as manifest-like rows (no audio yet)."""
    meta = json.loads(REFERENCE_MODEL.with_suffix(".json").read_text())
    cfg = data.corpus_of(trained_with(meta))
    return cfg.key(), [asdict(t) for t in data.plan(cfg)]


def spoken(row: dict, text: str | None = None) -> torch.Tensor:
    """A plan row's turn (or ``text`` in its voice and style) spoken by flite, at the corpus's loudness (T,)."""
    x, _ = data.synthesize(text or row["text"], row["voice"], data.Style(**row["style"]))
    return A.normalize_loudness(x)


def user_turns(rows: list[dict], n: int, split: str = "test") -> list[dict]:
    """``n`` held-out user turns: the turn before each of ``held_out_targets``'s ``split`` turns, with the turn
    before it."""
    out = []
    for row, earlier in held_out_targets([r for r in rows if r["split"] == split], n):
        user, before = earlier[-1], earlier[-2]
        out.append({"user": user, "before": before, "speaker": row["speaker"], "audio": spoken(user),
                    "context": [Segment(before["speaker"], before["text"], spoken(before))]})
    return out


def paused_turns(rows: list[dict], split: str, pairs: int, pauses=PAUSES_MS) -> list[dict]:
    """Two sentences of ``split`` (consecutive rows), both in the first one's voice and style, joined with each
    pause of ``pauses`` (ms of digital silence from the first's last voiced sample to the second's first)."""
    rows = [r for r in rows if r["split"] == split][: 2 * pairs]
    out, sr = [], V.SAMPLE_RATE
    for a_row, b_row in zip(rows[::2], rows[1::2], strict=False):
        a, b = spoken(a_row), spoken(a_row, b_row["text"])
        a_end, (b_start, b_end) = V.end_of_speech(a, sr), V.speech_span(b, sr)
        head, tail = a[: round(a_end * sr)], b[round(b_start * sr):]
        for p in pauses:
            x = torch.cat([head, torch.zeros(round(p * sr / 1000)), tail])
            out.append({"pause_ms": p, "audio": x, "eos_s": len(head) / sr + p / 1000 + b_end - b_start,
                        "text": f"{a_row['text']} {b_row['text']}"})
    return out


# ----------------------------------------------------------------------------- the end-of-turn trade-off


def stats(values: list[float]) -> dict:
    v = np.array(values, dtype=float)
    if not len(v):
        return {"median": None, "p90": None, "n": 0}
    return {"median": round(float(np.median(v)), 1), "p90": round(float(np.percentile(v, 90)), 1), "n": len(v)}


def replay(turns: list[dict], silence_ms: float, tail_ms: float = 2000) -> list[dict]:
    """Each turn's decision under the rule at ``silence_ms``, from its window probabilities (``turn["probs"]``):
    the audio time it is made at (its chunk's arrival) and whether it cut in before the end of speech."""
    rule, out = V.EndOfTurn(silence_ms=silence_ms), []
    for t in turns:
        w = rule.first_end(t["probs"])
        at = V.decision_time(w) if w is not None else len(t["audio"]) / V.SAMPLE_RATE + tail_ms / 1000
        out.append({"cut_in": at < t["eos_s"], "after_eos_ms": 1000 * (at - t["eos_s"]), "decided": w is not None})
    return out


def with_probs(turns: list[dict], detector, tail_ms: float = 2000) -> list[dict]:
    """``turns`` with the detector's window probabilities over each one's audio and ``tail_ms`` of silence."""
    for t in progress(turns, desc="voice activity", unit="turn"):
        t["probs"] = V.window_probs(torch.cat([t["audio"], torch.zeros(round(V.SAMPLE_RATE * tail_ms / 1000))]),
                                    detector)
    return turns


def sweep(groups: dict[str, list[dict]], thresholds=SILENCE_MS) -> list[dict]:
    """Per silence threshold: false cut-in rate (and by pause length) and delay after the end of speech."""
    rows = []
    for s in thresholds:
        row: dict = {"silence_ms": s}
        for name, turns in groups.items():
            d = replay(turns, s)
            row[name] = {"false_cut_in_rate": round(float(np.mean([x["cut_in"] for x in d])), 4),
                         "decision_after_eos_ms": stats([x["after_eos_ms"] for x in d if not x["cut_in"]]),
                         "undecided": sum(not x["decided"] for x in d)}
            if "pause_ms" in turns[0]:
                row[name]["by_pause_ms"] = {p: round(float(np.mean([x["cut_in"] for x, t in zip(d, turns, strict=True)
                                                                    if t["pause_ms"] == p])), 4)
                                            for p in sorted({t["pause_ms"] for t in turns})}
        rows.append(row)
    return rows


def chosen_threshold(rows: list[dict], key: str = "paused_valid") -> int:
    """The smallest silence threshold whose false cut-in rate on ``key``'s turns is at most ``CUT_IN_TARGET``."""
    ok = [r["silence_ms"] for r in rows if r[key]["false_cut_in_rate"] <= CUT_IN_TARGET]
    return min(ok) if ok else max(r["silence_ms"] for r in rows)


# ----------------------------------------------------------------------------- the loop, every system


def systems(gen: Generator, fns: dict, turn: dict, rate: float, seed: int, names=SYSTEMS) -> list[V.ReplySystem]:
    """Chapter 09's systems for one user turn, each a fresh ``ReplySystem`` (CSM's conversation is built here,
    untimed: in a live conversation it happened before)."""
    spk, ctx = turn["speaker"], turn["context"]
    out = []
    for name in names:
        conv = conversation_with(gen, ctx) if name == "csm" else None

        def speak(text: str, user: Segment, name=name, conv=conv):
            return fns[name](text, spk, [*ctx, user], reply_frames(gen, text, spk, rate), seed, conv=conv)

        out.append(V.ReplySystem(name, "phrase" if name == "csm" else "reply", speak))
    return out


def front_end(turn: dict, detector, recognizer, rule, writer, cut, asr_tail_ms: float | None) -> dict:
    """The loop's listening and writing for one turn, untimed (``SimulatedClock``): what every system will
    hear and say (deterministic), so the reply's words can be looked up before timing."""
    heard = V.listen(turn["audio"], detector, recognizer, rule, V.SimulatedClock(), asr_tail_ms=asr_tail_ms)
    chars: list[str] = []
    writer(heard.text or "yes", lambda c: chars.append(c) and False)
    reply = "".join(chars).strip() or "yes."
    phrase = next((reply[:i + 1].strip() for i in range(len(reply)) if cut.done(reply[:i + 1])), reply)
    return {"heard": heard, "reply": reply, "phrase": phrase}


def choose_asr_tail(turns: list[dict], cmninit: str, rule, detector, tails=ASR_TAILS_MS) -> dict:
    """Streamed WER on ``turns`` (the valid split's) for each silence the recogniser is still fed before the rule
    decides, and for every chunk fed; chosen: the smallest tail within ``ASR_TAIL_WER_POINTS`` of every chunk."""
    refs, recognizer = [t["user"]["text"] for t in turns], V.StreamingRecognizer(cmninit)

    def wer(tail: float | None) -> dict:
        return wer_with_ci(refs, [V.listen(t["audio"], detector, recognizer, rule, V.SimulatedClock(),
                                           asr_tail_ms=tail).text for t in turns])

    every, by_tail = wer(None), {tail: wer(tail) for tail in tails}
    chosen = min(t for t, w in by_tail.items() if 100 * (w["wer"] - every["wer"]) <= ASR_TAIL_WER_POINTS)
    return {"split": "valid", "every_chunk": every, "by_tail_ms": {str(t): w for t, w in by_tail.items()},
            "rule": f"the smallest tail whose WER is within {ASR_TAIL_WER_POINTS} point(s) of every chunk fed",
            "chosen_ms": chosen}


def recognition(turns: list[dict], cmninit: str, lines: list[V.Timeline], rule, detector,
                asr_tail_ms: float | None) -> dict:
    """Streamed against whole-utterance recognition on the same turns, and the recogniser's work after the end
    of speech (the loop's, for every system and turn)."""
    refs = [t["user"]["text"] for t in turns]
    whole, whole_s = [], []
    asr = metrics.transcriber()
    for t in turns:
        t0 = time.perf_counter()
        whole.append(asr(t["audio"], V.SAMPLE_RATE))
        whole_s.append(1000 * (time.perf_counter() - t0))
    streamed = [t["front"]["heard"].text for t in turns]
    def heard(recognizer: V.StreamingRecognizer) -> list[V.Heard]:
        return [V.listen(t["audio"], detector, recognizer, rule, V.SimulatedClock(), asr_tail_ms=asr_tail_ms)
                for t in turns]

    default_cmn, fw = heard(V.StreamingRecognizer(None)), heard(V.StreamingRecognizer(cmninit, fwdflat=True))
    s, w = wer_with_ci(refs, streamed), wer_with_ci(refs, whole)
    return {"streamed": s, "whole_utterance": w, "wer_gap_points": round(100 * (s["wer"] - w["wer"]), 1),
            "asr_after_eos_ms": stats([x.asr_after_eos_ms for x in lines]),
            "asr_finalise_ms": stats([x.asr_finalise_ms for x in lines]),
            "whole_utterance_ms": stats(whole_s),
            "cmninit": cmninit,
            "variants": {"streamed_default_cepstral_start": wer_with_ci(refs, [h.text for h in default_cmn]),
                         "streamed_with_fwdflat": wer_with_ci(refs, [h.text for h in fw])
                         | {"finalise_ms": stats([1000 * (h.hypothesis_s - h.decision_s) for h in fw])}},
            "examples": [{"reference": r, "streamed": a, "whole": b} for r, a, b in zip(refs, streamed, whole,
                                                                                         strict=True)][:6]}


def longest_pause_ms(audio: torch.Tensor, floor_db: float = 35.0, frame_ms: float = 10.0) -> float:
    """The longest run of ``frame_ms`` frames quieter than the loudest minus ``floor_db``, inside the speech
    (``V.speech_span``): the longest pause of a reply, in ms."""
    start, end = (round(t * 1000 / frame_ms) for t in V.speech_span(audio, V.SAMPLE_RATE))
    db, _ = V.frame_db(audio, V.SAMPLE_RATE, frame_ms)
    quiet, run, best = (db < db.max() - floor_db)[start:end].tolist(), 0, 0
    for q in quiet:
        run = run + 1 if q else 0
        best = max(best, run)
    return best * frame_ms


def pitch_step(audio: torch.Tensor, before_s: float, after_s: float, span_s: float = 0.3) -> float:
    """|log2| of the median F0 in the ``span_s`` after ``after_s`` over the median in the ``span_s`` before
    ``before_s``, in semitones (pYIN, voiced frames only; NaN where either side has fewer than 5)."""
    from csm_lib.judges.quality import pitch_track

    f0, _ = pitch_track(audio.numpy())
    i, j, w = round(before_s * 100), round(after_s * 100), round(span_s * 100)
    before, after = f0[max(0, i - w): i], f0[j: j + w]
    before, after = before[np.isfinite(before)], after[np.isfinite(after)]
    if len(before) < 5 or len(after) < 5:
        return float("nan")
    return float(12 * abs(np.log2(np.median(after) / np.median(before))))


def phrase_cut_cost(gen: Generator, turns: list[dict], seed: int = 0) -> dict:
    """What starting on the first phrase costs in prosody, untimed: each reply that was cut spoken whole (one
    turn) and cut (the first phrase a turn, then the rest the next turn, the phrase in its context), both with the
    public ``generate`` (the model ends each turn itself; the same seed), after the user's turn as heard.

    Judged: WER against the reply's text (the cut one as the two turns joined), the longest pause inside the
    reply (``longest_pause_ms``: for the cut one, where the phrase's end-of-speech and the rest's start meet),
    and the pitch step (``pitch_step``) across the join (the phrase's last 300 ms of speech against the rest's
    first), against the step at the same share of the whole reply's speech (the phrase's share of its words): a
    reset of the intonation shows as a larger step."""
    asr, rows = metrics.transcriber(), []
    for t in progress(turns, desc="phrase cut: whole and cut", unit="reply"):
        reply, phrase = t["front"]["reply"], t["front"]["phrase"]
        rest = reply[len(phrase):].strip() if reply.startswith(phrase) else ""
        if not rest or not any(c.isalnum() for c in rest):
            continue
        heard = t["front"]["heard"]
        ctx = [*t["context"], Segment(t["user"]["speaker"], heard.text or "yes", heard.audio)]
        spk = t["speaker"]
        whole = gen.generate(reply, spk, ctx, seed=seed)
        first = gen.generate(phrase, spk, ctx, seed=seed)
        then = gen.generate(rest, spk, [*ctx, Segment(spk, phrase, first)], seed=seed)
        if not (whole.numel() and first.numel() and then.numel()):
            continue
        cut = torch.cat([first, then])
        start, end = V.speech_span(whole, V.SAMPLE_RATE)
        at = start + len(phrase.split()) / len(reply.split()) * (end - start)
        join = first.numel() / V.SAMPLE_RATE
        rows.append({"reply": reply, "phrase": phrase,
                     "whole": {"hyp": asr(whole, V.SAMPLE_RATE), "pause_ms": longest_pause_ms(whole),
                               "pitch_step_st": pitch_step(whole, at, at),
                               "seconds": round(whole.numel() / V.SAMPLE_RATE, 3)},
                     "cut": {"hyp": asr(cut, V.SAMPLE_RATE), "pause_ms": longest_pause_ms(cut),
                             "pitch_step_st": pitch_step(cut, V.speech_span(first, V.SAMPLE_RATE)[1],
                                                         join + V.speech_span(then, V.SAMPLE_RATE)[0]),
                             "seconds": round(cut.numel() / V.SAMPLE_RATE, 3)}})
    out: dict = {"n": len(rows), "seed": seed, "sampling": "generate's defaults"}
    if not rows:
        return out
    refs = [r["reply"] for r in rows]
    per = {k: {"edits": [], "words": []} for k in ("whole", "cut")}
    for k in per:
        for r in rows:
            e, w = metrics.word_errors(r["reply"], r[k]["hyp"])
            per[k]["edits"].append(e)
            per[k]["words"].append(w)
        out[k] = {"wer": wer_with_ci(refs, [r[k]["hyp"] for r in rows]),
                  "longest_pause_ms": stats([r[k]["pause_ms"] for r in rows]),
                  "pitch_step_st": stats([r[k]["pitch_step_st"] for r in rows if np.isfinite(r[k]["pitch_step_st"])]),
                  "seconds": stats([r[k]["seconds"] for r in rows])}
    gap = np.array([r["cut"]["pause_ms"] - r["whole"]["pause_ms"] for r in rows])
    step = np.array([r["cut"]["pitch_step_st"] - r["whole"]["pitch_step_st"] for r in rows])
    step = step[np.isfinite(step)]
    out["cut_minus_whole"] = {
        "wer": metrics.paired_difference(per["cut"], per["whole"]),
        "longest_pause_ms": {"median": round(float(np.median(gap)), 1),
                             "ci95": metrics.bootstrap_ci(lambda i: float(np.median(gap[i])), len(gap))},
        "pitch_step_st": {"median": round(float(np.median(step)), 2), "n": len(step),
                          "ci95": metrics.bootstrap_ci(lambda i: float(np.median(step[i])), len(step))}}
    out["examples"] = rows[:4]
    return out


def summarise(lines: list[V.Timeline]) -> dict:
    """Per system: each mark and step (medians, p90) over the turns it did not cut in on, and its cut-ins."""
    out = {}
    for name in dict.fromkeys(x.system for x in lines):
        mine = [x for x in lines if x.system == name]
        ok = [x for x in mine if not x.cut_in]
        steps = {"detect": [x.decision_ms for x in ok],
                 "recognise": [x.hypothesis_ms - x.decision_ms for x in ok],
                 "write": [x.text_ms - x.hypothesis_ms for x in ok],
                 "speak": [x.first_audio_ms - x.text_ms for x in ok]}
        out[name] = {"timeline_ms": {p: stats([getattr(x, p) for x in ok]) for p in PARTS},
                     "steps_ms": {k: stats(v) for k, v in steps.items()},
                     "false_cut_ins": len(mine) - len(ok), "turns": len(mine),
                     "max_chunk_lag_ms": max(x.max_lag_ms for x in mine),
                     "reply_audio_s": stats([x.reply_audio_s for x in mine])}
    if "pipeline" in out:
        pipe = out["pipeline"]["timeline_ms"]["first_audio_ms"]["median"]
        for v in out.values():
            v["ratio_to_pipeline"] = round(v["timeline_ms"]["first_audio_ms"]["median"] / pipe, 3)
    return out


def bench_voice_loop(threads: int = 2, repeats: int = 1, turns: int = TURNS, pairs: int = PAIRS, compile: bool = True,
                     names=SYSTEMS, silence_ms: float | None = None, clock: type = V.RealClock) -> dict:
    """Everything of the module docstring; every system takes each turn ``repeats`` times (another sampling
    seed each time); ``silence_ms=None``: the threshold chosen on the valid split."""
    from csm_lib.checkpoint import device_name, model_record

    record: dict = {"what": "chapter 09's systems under one streaming voice loop, timed from the end of the "
                            "user's speech", "convention": CONVENTION, "torch_threads": threads,
                    "measured_with": model_record(REFERENCE_MODEL),
                    "baselines": {k: model_record(p) for k, p in CHECKPOINTS.items()},
                    "chunking": CHUNKING, "chunk_ms": V.CHUNK_MS, "clock": clock.__name__}
    with threads_set(threads):
        record["device"] = device_name("cpu")
        t0 = time.perf_counter()
        gen = load_generator()
        if compile:
            gen.fast.compile()
        models = {name: load(CHECKPOINTS[name])[0] for name in ("valle", "audiolm")}
        lm, tok, _ = load_text_lm(CHECKPOINTS["textlm"])
        fns = speakers(gen, models, CHUNKING)
        key, rows = reference_plan()
        record["corpus"] = {"key": key, "split": "test", "source": "data.plan of the reference model's corpus, "
                                                                    "spoken by flite here (not read from disk)"}
        train = [r for r in rows if r["split"] == "train"][:CALIBRATION_TURNS]
        train_audio = [spoken(r) for r in progress(train, desc="calibration turns", unit="turn")]
        cmninit = V.calibrate_cmn(train_audio)
        tokens = sum(len(gen.tokenizer.encode(r["text"], r["speaker"])) for r in train)
        rate = sum(len(x) for x in train_audio) / gen.sample_rate * 1000 / gen.frame_ms / tokens
        record["frames_per_token"] = round(rate, 3)

        detector = V.SileroDetector()
        groups = {"paused_valid": with_probs(paused_turns(rows, "valid", pairs), detector),
                  "paused_test": with_probs(paused_turns(rows, "test", pairs), detector)}
        users = user_turns(rows, turns)
        for u in users:
            u["eos_s"] = V.end_of_speech(u["audio"], V.SAMPLE_RATE)
        groups["user_turns"] = with_probs(users, detector)
        curve = sweep(groups)
        threshold = silence_ms or chosen_threshold(curve)
        rule, cut = V.EndOfTurn(silence_ms=threshold), V.PhraseCut()
        record["rule"], record["phrase_cut"] = asdict(rule), asdict(cut)
        tail = choose_asr_tail(user_turns(rows, turns, "valid"), cmninit, rule, detector)
        asr_tail_ms = tail["chosen_ms"]
        recognizer = V.StreamingRecognizer(cmninit)
        for u in progress(users, desc="front end (untimed)", unit="turn"):
            writer = lm_writer(lm, tok, u["user"]["speaker"], u["speaker"])
            u["front"] = front_end(u, detector, recognizer, rule, writer, cut, asr_tail_ms)
            Tx.learn([u["front"]["reply"], u["front"]["phrase"]])
        record["setup_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        for s in systems(gen, fns, users[0], rate, 0, names):  # warm-up: inductor compiles, first calls allocate
            u = users[0]
            V.take_turn(u["audio"], u["user"]["speaker"], s, lm_writer(lm, tok, u["user"]["speaker"], u["speaker"]),
                        detector, recognizer, rule, cut, V.SimulatedClock(), asr_tail_ms=asr_tail_ms)
        record["warm_up_s"] = round(time.perf_counter() - t0, 1)

        lines: list[V.Timeline] = []
        same = True  # the front end is deterministic: every run of every system should hear the same words
        for i in progress(range(repeats * len(users)), desc="voice loop", unit="turn"):
            u = users[i % len(users)]
            writer = lm_writer(lm, tok, u["user"]["speaker"], u["speaker"])
            for s in systems(gen, fns, u, rate, i, names):
                line, _ = V.take_turn(u["audio"], u["user"]["speaker"], s, writer, detector, recognizer, rule, cut,
                                      clock(), eos_s=u["eos_s"], asr_tail_ms=asr_tail_ms)
                lines.append(line)
                same = same and line.heard == u["front"]["heard"].text
        record["systems"] = summarise(lines)
        record["heard_the_same_in_every_run"] = same
        record["repeats"] = repeats
        record["recognition"] = recognition(users, cmninit, lines, rule, detector, asr_tail_ms) | {"asr_tail": tail}
        record["phrase_cut_cost"] = phrase_cut_cost(gen, users)
    csm = record["systems"].get("csm", {}).get("timeline_ms", {})
    after_decision = (np.median([x.first_audio_ms - x.decision_ms for x in lines if x.system == "csm"])
                      if csm else None)
    for row in curve:
        d = row["paused_test"]["decision_after_eos_ms"]["median"]
        row["csm_first_audio_ms_predicted"] = (round(d + float(after_decision), 1)
                                               if d is not None and after_decision is not None else None)
    record["end_of_turn"] = {"silence_ms_chosen": threshold, "chosen_on": "paused_valid" if not silence_ms else
                             "given", "pauses_ms": PAUSES_MS, "pairs_per_split": pairs, "sweep": curve}
    at = next(r for r in curve if r["silence_ms"] == threshold) if threshold in SILENCE_MS else None
    rec = record["recognition"]
    record["headline"] = {
        "csm_first_audio_median_ms": csm.get("first_audio_ms", {}).get("median"), "target_ms": TARGET_MS,
        "silence_ms": threshold,
        "false_cut_in_rate_paused_test": at and at["paused_test"]["false_cut_in_rate"],
        "meets_target": bool(csm and csm["first_audio_ms"]["median"] <= TARGET_MS and at
                             and at["paused_test"]["false_cut_in_rate"] <= CUT_IN_TARGET),
        "first_audio_median_ms": {k: v["timeline_ms"]["first_audio_ms"]["median"]
                                  for k, v in record["systems"].items()},
        "ratio_to_pipeline": {k: v.get("ratio_to_pipeline") for k, v in record["systems"].items()},
        "asr_after_eos_median_ms": rec["asr_after_eos_ms"]["median"],
        "asr_finalise_median_ms": rec["asr_finalise_ms"]["median"], "asr_target_ms": ASR_TARGET_MS,
        "asr_tail_ms": rec["asr_tail"]["chosen_ms"],
        "wer_gap_points": rec["wer_gap_points"], "wer_gap_target_points": WER_GAP_POINTS}
    record["turns"] = [asdict(x) | {"user_turn": i // len(names) % len(users)} for i, x in enumerate(lines)]
    record["user_turns"] = [{"conversation": u["user"]["conversation"], "turn": u["user"]["turn"],
                             "text": u["user"]["text"], "voice": u["user"]["voice"], "eos_s": round(u["eos_s"], 3)}
                            for u in users]
    return record
