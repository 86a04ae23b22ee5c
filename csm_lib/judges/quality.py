"""The quality table: the seed's five scores given operational meanings, and each one validated.

The seed reports Character Consistency 0.88, Emotional Coherence 0.91, Prosodic Naturalness 0.85,
Turn-taking Fluency 0.89 and Voice Consistency 0.92 without saying what they measure. Here each
is a share of held-out turns (0..1) that pass one check made by the offline judges of chapter 01,
on a turn spoken after its conversation's earlier turns (its *context*):

* **character consistency** — the turn sounds like its own speaker, not the other one: its speaker
  embedding is closer to its speaker's earlier turns than to the other speaker's (resemblyzer).
* **emotional coherence** — the turn keeps the speaking style its speaker has in *this*
  conversation (the corpus's hidden per-conversation pitch level, pitch range and pace): its style
  is closer to the speaker's style in the earlier turns than to the same voice's style in other
  conversations (pYIN, silero-vad; the share of those other conversations it beats; 0.5 is chance).
* **prosodic naturalness** — every prosody feature of the turn (voiced share, pitch jumps between
  10 ms frames, relative pitch range, syllable rate, longest pause) lies inside the range of
  natural (ground-truth) turns, the 1st to 99th percentiles of the calibration turns.
* **turn-taking fluency** — the turn starts promptly, ends cleanly and does not stall: it ended by
  itself (generated turns: the end-of-speech frame), its speech starts and its longest pause stays
  within the calibration turns' 99th percentile, and it does not stop in the middle of speech (its
  last 50 ms are as quiet, against its speech, as 99% of calibration turns' are).
* **voice consistency** — the voice does not drift within the turn: the speaker embeddings of the
  first and second half of its speech are at least as similar as in 98% of calibration turns.

Thresholds are fitted on ground-truth turns of the **valid** split (``calibrate``) and applied to
turns of the **test** split, so ground truth is not scored on the turns that set its bar. Each
score is checked by **broken controls** built from the same test turns (``CONTROLS``): a judge
must give ground truth a high score and the control aimed at it a clearly lower one
(``validate``, ``make bench-quality``). Beside the five: WER, SIM to the speaker's earlier turns,
style error (``evaluate``'s definition), the share of turns that ended by themselves, and the
duration ratio to ground truth. Every summary carries a bootstrap 95% interval over turns.

Shapes: audio ``(T,)`` float at ``sr``; an embedding ``(256,)``; a style vector ``(3,)`` (log F0
level, log F0 range, log syllable rate).

Explained in chapter 10 (``notebooks/10_quality_table.ipynb``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from csm_lib import audio as A
from csm_lib import data, metrics
from csm_lib.judges.evaluate import held_out_targets, style_vector
from csm_lib.progress import progress

SCORES = ("character_consistency", "emotional_coherence", "prosodic_naturalness", "turn_taking_fluency",
          "voice_consistency")
SEED_SCORES = {"character_consistency": 0.88, "emotional_coherence": 0.91, "prosodic_naturalness": 0.85,
               "turn_taking_fluency": 0.89, "voice_consistency": 0.92}
DEFINITIONS = {
    "character_consistency": "share of turns whose voice is closer to their speaker's earlier turns than to the "
                             "other speaker's (resemblyzer)",
    "emotional_coherence": "share of other conversations of the same voice whose style the turn is farther from "
                           "than from its speaker's style in this conversation (pitch level, range, pace)",
    "prosodic_naturalness": "share of turns whose voiced share, pitch jumps, pitch range, syllable rate and "
                            "longest pause all lie within natural turns' 1st-99th percentiles",
    "turn_taking_fluency": "share of turns that ended by themselves, start speaking and pause no longer than "
                           "natural turns, and do not stop mid-speech",
    "voice_consistency": "share of turns whose two halves sound like one speaker as much as 98% of natural "
                         "turns do (resemblyzer)",
}
PN_FEATURES = ("voiced_share", "f0_jump_st", "f0_rel_range", "rate", "longest_pause_s")
N_DECOYS = 5  # other conversations of the same voice, for emotional coherence
SAMPLING = {"temperature": 0.9, "topk": 50}  # every system of the quality table, and the pronunciation checks
SR = metrics.JUDGE_SR


# ----------------------------------------------------------------------------- one clip

def pitch_track(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pYIN over 10 ms frames of 16 kHz audio -> (f0 Hz with NaN where unvoiced, voiced flags)."""
    import librosa

    f0, voiced, _ = librosa.pyin(x, fmin=50.0, fmax=400.0, sr=SR, frame_length=1024, hop_length=160,
                                 n_thresholds=50)
    return np.where(voiced, f0, np.nan), voiced


def features(audio: torch.Tensor, sr: int, text: str, asr: bool = True) -> dict:
    """Everything the scores need from one clip (``asr=False`` skips the transcript: context turns).

    An (almost) empty clip gets ``{"empty": True}`` and fails every check.
    """
    x = A.resample(torch.as_tensor(audio, dtype=torch.float32), sr, SR)
    segs = metrics.speech_segments(x, SR) if x.numel() >= SR // 10 else []
    if not segs:
        return {"empty": True, "seconds": x.numel() / SR, "hyp": ""}
    xn = x.numpy()
    f0, voiced = pitch_track(xn)
    frames = np.arange(len(f0)) * 0.01  # frame times (s)
    in_speech = np.zeros(len(f0), dtype=bool)
    for s, e in segs:
        in_speech |= (frames >= s) & (frames < e)
    speech_s = sum(e - s for s, e in segs)
    f = f0[np.isfinite(f0)]
    st = 12 * np.log2(f0 / 100.0)  # semitones; NaN where unvoiced
    jumps = np.abs(np.diff(st))
    jumps = jumps[np.isfinite(jumps)]  # between consecutive voiced frames only
    pauses = [b[0] - a[1] for a, b in zip(segs, segs[1:], strict=False)]
    start, end = segs[0][0], segs[-1][1]
    mid = int(SR * (start + end) / 2)
    halves = [xn[int(SR * start):mid], xn[mid:int(SR * end)]]
    p = {"f0_mean": float(f.mean()) if len(f) >= 5 else float("nan"),
         "f0_std": float(f.std()) if len(f) >= 5 else float("nan"),
         "rate": metrics.count_syllables(text) / speech_s}
    return {
        "empty": False, "seconds": x.numel() / SR, "speech_s": speech_s,
        "hyp": metrics.transcriber()(x, SR) if asr else None,
        "embedding": metrics.speaker_embedding(x, SR),
        "half_sim": metrics.similarity(*(metrics.speaker_embedding(h, SR) for h in halves))
        if min(len(h) for h in halves) >= SR // 4 else float("nan"),
        "style": style_vector(p),
        "voiced_share": float(voiced[in_speech].mean()) if in_speech.any() else 0.0,
        "f0_jump_st": float(np.mean(jumps)) if len(jumps) >= 5 else float("nan"),
        "f0_rel_range": p["f0_std"] / p["f0_mean"] if len(f) >= 5 else float("nan"),
        "rate": p["rate"],
        "longest_pause_s": max(pauses, default=0.0),
        "lead_s": start, "end_db": end_db(x, segs),
    }


def end_db(x: torch.Tensor, segs: list[tuple[float, float]], ms: float = 50.0) -> float:
    """Loudness of the clip's last ``ms`` against its speech (dB): a turn that ends fades out (natural
    turns: -40 dB and below); one cut off mid-speech does not (mostly above -20 dB)."""
    speech = torch.cat([x[int(s * SR):int(e * SR)] for s, e in segs])
    return A.rms_db(x[-int(SR * ms / 1000):]) - A.rms_db(speech)


# ----------------------------------------------------------------------------- calibration

@dataclass
class Calibration:
    """Thresholds fitted on ground-truth turns of the valid split (``calibrate``)."""

    pn_ranges: dict[str, tuple[float, float]]  # feature -> (1st, 99th percentile)
    lead_max_s: float  # speech starts within this (99th percentile)
    pause_max_s: float  # longest pause within this (99th percentile)
    end_db_max: float  # the last 50 ms at most this loud against the speech (99th percentile)
    half_sim_min: float  # the halves of a turn at least this similar (2nd percentile)
    style_spread: list[float]  # std of each style dimension over the calibration turns
    n: int


def calibrate(feats: list[dict]) -> Calibration:
    """Fit the thresholds on ground-truth clips' ``features``."""
    ok = [f for f in feats if not f["empty"]]

    def pct(key: str, q: float) -> float:
        v = np.array([f[key] for f in ok], dtype=float)
        return float(np.nanpercentile(v, q))

    return Calibration(
        pn_ranges={k: (pct(k, 1), pct(k, 99)) for k in PN_FEATURES},
        lead_max_s=pct("lead_s", 99), pause_max_s=pct("longest_pause_s", 99),
        end_db_max=pct("end_db", 99), half_sim_min=pct("half_sim", 2),
        style_spread=[float(s) for s in np.nanstd(np.stack([f["style"] for f in ok]), axis=0)], n=len(ok))


# ----------------------------------------------------------------------------- one turn's checks

def style_distance(a: np.ndarray, b: np.ndarray, spread: list[float]) -> float:
    """Mean over the finite style dimensions of ``|a - b| / spread`` (NaN when none is finite)."""
    d = np.abs(np.asarray(a) - np.asarray(b)) / np.asarray(spread)
    return float(np.nanmean(d)) if np.isfinite(d).any() else float("nan")


def turn_scores(f: dict, ref: dict, cal: Calibration, ended: bool = True) -> dict:
    """The five checks (0/1, or a share for emotional coherence) and SIM, style error of one judged clip.

    ``ref``: ``own_embedding``, ``other_embedding`` (the speakers' earlier turns in the conversation),
    ``own_style`` and ``decoy_styles`` (the same voice in other conversations).
    """
    if f["empty"]:
        return dict.fromkeys(SCORES, 0.0) | {"sim": 0.0, "style_error": float("nan"), "cc_margin": -1.0,
                                             "natural_features": 0, "fluency_checks": 0, "half_sim": float("nan")}
    own = metrics.similarity(f["embedding"], ref["own_embedding"])
    other = metrics.similarity(f["embedding"], ref["other_embedding"])
    d_own = style_distance(f["style"], ref["own_style"], cal.style_spread)
    beats = [d_own < style_distance(f["style"], d, cal.style_spread) for d in ref["decoy_styles"]]
    in_range = [bool(np.isfinite(f[k]) and lo <= f[k] <= hi) for k, (lo, hi) in cal.pn_ranges.items()]
    fluency = [ended, f["lead_s"] <= cal.lead_max_s, f["longest_pause_s"] <= cal.pause_max_s,
               f["end_db"] <= cal.end_db_max]
    return {"character_consistency": float(own > other),
            "emotional_coherence": float(np.mean(beats)) if np.isfinite(d_own) and beats else 0.0,
            "prosodic_naturalness": float(all(in_range)),
            "turn_taking_fluency": float(all(fluency)),
            "voice_consistency": float(np.isfinite(f["half_sim"]) and f["half_sim"] >= cal.half_sim_min),
            "sim": own, "style_error": d_own,
            # how far each check passed or failed, to rank samples (worst, median, best)
            "cc_margin": own - other, "natural_features": sum(in_range), "fluency_checks": sum(fluency),
            "half_sim": f["half_sim"]}


# ----------------------------------------------------------------------------- held-out turns and references

@dataclass
class Target:
    """A held-out turn to speak, its context and what its scores compare it with."""

    row: dict
    earlier: list[dict]  # the earlier turns of its conversation (manifest rows)
    other_row: dict  # the other speaker's latest earlier turn (its voice and style)
    decoys: list[dict]  # one turn of the same voice from each of N_DECOYS other conversations


def targets(rows: list[dict], n: int, seed: int = 0) -> list[Target]:
    """``n`` held-out turns (from the third turn of a conversation on) with their decoys, from ``rows``."""
    by_conv: dict[str, list[dict]] = {}
    for r in rows:
        by_conv.setdefault(r["conversation"], []).append(r)
    rng = random.Random(seed)
    out = []
    for row, earlier in held_out_targets(rows, n):
        others = [r for r in earlier if r["speaker"] != row["speaker"]]
        convs = sorted(c for c, rs in by_conv.items() if c != row["conversation"]
                       and any(r["voice"] == row["voice"] for r in rs))
        picked = rng.sample(convs, min(N_DECOYS, len(convs)))
        decoys = [min((r for r in by_conv[c] if r["voice"] == row["voice"]), key=lambda r: r["turn"]) for c in picked]
        out.append(Target(row, earlier, others[-1], decoys))
    return out


class Judge:
    """Features of ground-truth clips computed once (by path), and the references of each target."""

    def __init__(self, cal: Calibration | None = None):
        self.cal = cal
        self._cache: dict[tuple[str, bool], dict] = {}

    def wav_features(self, row: dict, asr: bool = False) -> dict:
        key = (row["wav"], asr)
        if key not in self._cache:
            self._cache[key] = features(A.load(row["wav"])[0], A.load(row["wav"])[1], row["text"], asr)
        return self._cache[key]

    def references(self, t: Target) -> dict:
        def mean_embedding(rows: list[dict]) -> np.ndarray:
            embs = [self.wav_features(r)["embedding"] for r in rows if not self.wav_features(r)["empty"]]
            e = np.mean(embs, axis=0)
            return e / np.linalg.norm(e)

        own_rows = [r for r in t.earlier if r["speaker"] == t.row["speaker"]]
        other_rows = [r for r in t.earlier if r["speaker"] != t.row["speaker"]]
        own_styles = [self.wav_features(r)["style"] for r in own_rows]
        return {"own_embedding": mean_embedding(own_rows), "other_embedding": mean_embedding(other_rows),
                "own_style": np.nanmean(np.stack(own_styles), axis=0),
                "decoy_styles": [self.wav_features(d)["style"] for d in t.decoys]}


# ----------------------------------------------------------------------------- the broken controls

def _flite(text: str, row: dict) -> torch.Tensor:
    """``text`` spoken by flite with the voice and style of manifest ``row`` (as the corpus made it)."""
    x, _ = data.synthesize(text, row["voice"], data.Style(**row["style"]))
    return A.normalize_loudness(torch.as_tensor(x))


def turn_audio(row: dict) -> torch.Tensor:
    """A manifest row's audio: its file, or (where the corpus is not built, as in CI) flite again with
    the row's voice and style, which is how the corpus made it."""
    return A.load(row["wav"])[0] if Path(row["wav"]).exists() else _flite(row["text"], row)


def control_audio(name: str, t: Target, codec, seed: int = 0) -> torch.Tensor:
    """The control ``name`` of target ``t`` (``CONTROLS``), at the corpus rate (16 kHz)."""
    gt = turn_audio(t.row)
    g = torch.Generator().manual_seed(seed + t.row["turn"] + 1000 * int(t.row["conversation"][1:]))
    if name == "ground_truth":
        return gt
    if name == "codec_resynthesis":  # a positive control: the codec's own loss only
        return codec.decode(codec.encode(gt[None]))[0]
    if name == "wrong_speaker":
        return _flite(t.row["text"], t.other_row)
    if name == "other_style":  # the same voice in the first decoy conversation's style
        return _flite(t.row["text"], t.decoys[0])
    if name == "shuffled_frames":
        codes = codec.encode(gt[None])
        return codec.decode(codes[..., torch.randperm(codes.shape[-1], generator=g)])[0]
    if name == "truncated":  # cut in the middle of the turn
        return gt[: gt.numel() // 2]
    if name == "spliced_voices":  # the first half in the speaker's voice, the second in the other speaker's
        other = _flite(t.row["text"], t.other_row)
        return torch.cat([gt[: gt.numel() // 2], other[other.numel() // 2:]])
    if name == "random_codes":
        F = codec.encode(gt[None]).shape[-1]
        return codec.decode(torch.randint(0, codec.cfg.codebook_size, (1, codec.cfg.n_q, F), generator=g))[0]
    raise ValueError(f"unknown control {name!r}; expected one of {list(CONTROLS)}")


TRANSCRIBED = ("ground_truth", "codec_resynthesis")  # validation transcribes these only (the judges' WER floor)
CONTROLS = {  # control -> the scores it is built to break (ground truth and codec resynthesis break none)
    "ground_truth": (),
    "codec_resynthesis": (),
    "wrong_speaker": ("character_consistency",),
    "other_style": ("emotional_coherence",),
    "shuffled_frames": ("prosodic_naturalness",),
    "truncated": ("turn_taking_fluency",),
    "spliced_voices": ("voice_consistency",),
    "random_codes": ("prosodic_naturalness", "turn_taking_fluency"),
}


# ----------------------------------------------------------------------------- summaries

def summarize(turns: list[dict]) -> dict:
    """Per-turn records (``turn_scores`` + ``turn``, ``text``, ``hyp``, ``seconds``, ``gt_seconds``, ``ended``) ->
    each score, WER, SIM, style error, endings and duration ratio with bootstrap 95% intervals and n.

    Records of the same ``turn`` (several sampling seeds) are resampled together: the intervals are
    over held-out turns, not over samples."""
    groups: dict[str, list[int]] = {}  # the samples of each held-out turn (one per sampling seed)
    for i, t in enumerate(turns):
        groups.setdefault(t.get("turn", str(i)), []).append(i)
    rows = list(groups.values())

    def ci(stat) -> list[float]:  # resample turns, each with all its samples
        return metrics.bootstrap_groups_ci(stat, rows)

    out: dict = {"n": len(turns), "n_turns": len(rows)}
    for key in (*SCORES, "sim", "style_error"):
        v = np.array([t[key] for t in turns], dtype=float)
        out[key] = round(float(np.nanmean(v)), 4) if np.isfinite(v).any() else None
        out[f"{key}_ci95"] = ci(lambda i, v=v: np.nanmean(v[i]))
    if all(t["hyp"] is not None for t in turns):  # not transcribed: no WER
        edits, words = np.array([metrics.word_errors(t["text"], t["hyp"]) for t in turns]).T
        out["wer"] = round(float(edits.sum() / words.sum()), 4)
        out["wer_ci95"] = ci(lambda i: edits[i].sum() / words[i].sum())
    else:
        out["wer"], out["wer_ci95"] = None, None
    ended = np.array([t["ended"] for t in turns], dtype=float)
    out["ended"] = round(float(ended.mean()), 4)
    out["ended_ci95"] = ci(lambda i: ended[i].mean())
    ratio = np.array([t["seconds"] / t["gt_seconds"] for t in turns])
    out["duration_ratio_median"] = round(float(np.median(ratio)), 4)
    out["duration_ratio_ci95"] = ci(lambda i: np.median(ratio[i]))
    return out


def judge_system(judge: Judge, ts: list[Target], speak: Callable[[Target], tuple[torch.Tensor, int, bool]],
                 desc: str, asr: bool = True) -> list[dict]:
    """Judge one system (or control): ``speak(target) -> (audio, sr, ended)`` for every target
    (``asr=False``: no transcript, no WER; the five scores do not need one)."""
    out = []
    for t in progress(ts, desc=desc, unit="turn"):
        audio, sr, ended = speak(t)
        f = features(audio, sr, t.row["text"], asr=asr)
        out.append(turn_scores(f, judge.references(t), judge.cal, ended)
                   | {"turn": f"{t.row['conversation']}/{t.row['turn']}", "text": t.row["text"], "hyp": f["hyp"],
                      "seconds": f["seconds"], "gt_seconds": t.row["duration"], "ended": ended})
    return out


def separated(a: dict, b: dict, key: str) -> bool:
    """True when the 95% intervals of ``key`` in summaries ``a`` and ``b`` do not overlap."""
    (lo_a, hi_a), (lo_b, hi_b) = a[f"{key}_ci95"], b[f"{key}_ci95"]
    return hi_b < lo_a or hi_a < lo_b


def validate(folder: Path, codec, n_turns: int = 120, n_calibration: int = 80, seed: int = 0) -> dict:
    """Calibrate on the valid split, then score ground truth and every control on ``n_turns`` test turns."""
    t0 = time.perf_counter()
    judge = Judge()
    valid = targets(data.load_manifest(folder, "valid"), n_calibration, seed)
    judge.cal = calibrate([judge.wav_features(t.row, asr=False) for t in
                           progress(valid, desc="calibrating", unit="turn")])
    ts = targets(data.load_manifest(folder, "test"), n_turns, seed)
    results = {}
    for name in CONTROLS:
        turns = judge_system(judge, ts, lambda t, name=name: (control_audio(name, t, codec, seed), SR, True), name,
                             asr=name in TRANSCRIBED)
        results[name] = {"summary": summarize(turns), "turns": turns}
    gt = results["ground_truth"]["summary"]
    checks = {f"{name}:{score}": {"ground_truth": gt[score], "control": results[name]["summary"][score],
                                  "separated": separated(gt, results[name]["summary"], score)
                                  and gt[score] > results[name]["summary"][score]}
              for name, broken in CONTROLS.items() for score in broken}
    train_texts = [r["text"] for r in data.load_manifest(folder, "train")]
    shared = sum(t.row["text"] in set(train_texts) for t in ts)
    return {"corpus": folder.name, "split": "test", "calibration_split": "valid", "n_turns": len(ts),
            "test_sentences_in_train": shared, "definitions": DEFINITIONS, "controls": {k: list(v) for k, v in
                                                                                         CONTROLS.items()},
            "calibration": judge.cal.__dict__, "checks": checks,
            "summaries": {k: v["summary"] for k, v in results.items()},
            "turns": {k: v["turns"] for k, v in results.items()},
            "wall_time_s": round(time.perf_counter() - t0, 1)}


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else round(float(x), 5)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def write_json(result: dict, path: str | Path) -> None:
    """Write ``result`` atomically (NaN as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_jsonable(result), indent=1) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    from csm_lib.checkpoint import provenance
    from csm_lib.generate import REFERENCE_CODEC, REFERENCE_MODEL, load_codec
    from csm_lib.outputs import RESULTS

    p = argparse.ArgumentParser(description="The quality table's judges: validate them on broken controls.")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="write results/quality_validation.json")
    v.add_argument("--turns", type=int, default=100)
    v.add_argument("--calibration_turns", type=int, default=80)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--out", default=str(RESULTS / "quality_validation.json"))
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(2)
    meta = json.loads(Path(REFERENCE_MODEL).with_suffix(".json").read_text())
    folder = data.build(data.corpus_of(meta["train"]))
    codec, _ = load_codec(REFERENCE_CODEC)
    result = validate(folder, codec, a.turns, a.calibration_turns, a.seed)
    result["provenance"] = provenance("csm_lib.judges.quality", "cpu")
    write_json(result, a.out)
    print(json.dumps(_jsonable({k: result[k] for k in ("checks", "summaries")}), indent=1)[:6000])


if __name__ == "__main__":
    main()
