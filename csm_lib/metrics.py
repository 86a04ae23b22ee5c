"""The judges' instruments: word error rate, speaker similarity and prosody, all offline and deterministic.

* **WER** — pocketsphinx 5 with its *general* US-English acoustic model, language model
  (``en-us.lm.bin``) and dictionary, all shipped inside the PyPI wheel; scored with jiwer after
  text normalisation. pocketsphinx carries its cepstral mean over from one utterance to the next
  (even with ``cmn="batch"``), so the same audio could get different words depending on what was
  decoded before it; the feature extraction is reset before every utterance, and a transcript
  depends on its audio alone.
* **SIM** — cosine similarity of resemblyzer's 256-d speaker embeddings (GE2E, weights in the
  wheel). Its VAD import needs ``setuptools<81`` (``pkg_resources``).
* **Prosody** — F0 level and range (pYIN, voiced frames only), RMS energy, speech time and
  pauses (silero-vad, weights in the wheel) and speaking rate in syllables per second of
  speech (syllables counted with pocketsphinx's CMU dictionary).

``python -m csm_lib.metrics baseline`` judges the ground-truth test audio of the corpus and
writes ``results/judges_baseline.json``.

Explained in chapter 01 (``notebooks/01_data.ipynb``); the codec's training (chapter 03) and ``judges/``
(chapters 07b, 10) build on it.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from csm_lib import audio as A
from csm_lib.progress import progress

JUDGE_SR = 16_000  # every judge works at 16 kHz; inputs at other rates are resampled


def _as_16k(x: torch.Tensor | np.ndarray, sr: int) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() != 1:
        raise ValueError(f"judges expect mono audio of shape (T,), got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError("judges got empty audio")
    return A.resample(x, sr, JUDGE_SR)


# ----------------------------------------------------------------------------- WER

_SPEAKER_PREFIX = re.compile(r"^\s*\[\d+\]")


def normalize_text(text: str) -> str:
    """Lower-case words without punctuation or a ``[spk]`` prefix: "[0]Hi, it's me!" -> "hi it's me"."""
    text = _SPEAKER_PREFIX.sub("", text).lower().replace("-", " ")
    text = re.sub(r"[^a-z' ]+", " ", text)
    words = [w.strip("'") for w in text.split()]
    return " ".join(w for w in words if w)


class Transcriber:
    """pocketsphinx speech recognition with the general English model; deterministic per utterance."""

    def __init__(self, lm: str | None = None):
        from pocketsphinx import Decoder

        kwargs = {"lm": lm} if lm else {}
        self.decoder = Decoder(cmn="batch", loglevel="FATAL", **kwargs)
        self.lm = self.decoder.config["lm"]

    def __call__(self, audio: torch.Tensor | np.ndarray, sr: int) -> str:
        """Transcribe mono ``(T,)`` audio at ``sr`` into normalised lower-case words."""
        x = _as_16k(audio, sr)
        pcm = (x.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()
        d = self.decoder
        d.reinit_feat()  # forget the cepstral mean of the previous utterance
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return normalize_text(hyp.hypstr) if hyp else ""


@functools.cache
def transcriber() -> Transcriber:
    """A shared Transcriber (loading the model takes ~0.3 s)."""
    return Transcriber()


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus-level word error rate: total edits / total reference words, after normalisation."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    edits, words = map(sum, zip(*(word_errors(r, h) for r, h in zip(references, hypotheses, strict=True)),
                                strict=True))
    if not words:
        raise ValueError("WER needs at least one non-empty reference")
    return edits / words


def _errors(reference: str, hypothesis: str, chars: bool) -> tuple[int, int]:
    import jiwer

    ref = normalize_text(reference)
    if not ref:
        return 0, 0
    out = (jiwer.process_characters if chars else jiwer.process_words)(ref, normalize_text(hypothesis) or "")
    return out.substitutions + out.deletions + out.insertions, len(ref) if chars else len(ref.split())


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edits, reference words) of one turn, after normalisation: corpus WER is sum / sum."""
    return _errors(reference, hypothesis, chars=False)


def char_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edits, reference characters) of one turn, after normalisation: CER credits partly right words."""
    return _errors(reference, hypothesis, chars=True)


def bootstrap_ci(stat, n: int, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of ``stat(indices)`` over ``n`` items resampled with replacement."""
    if n < 2:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    values = np.sort([stat(rng.integers(0, n, n)) for _ in range(n_boot)])
    lo, hi = np.nanquantile(values, [(1 - level) / 2, (1 + level) / 2])
    return [round(float(lo), 4), round(float(hi), 4)]


def bootstrap_groups_ci(stat, groups: list[list[int]], **kw) -> list[float]:
    """``bootstrap_ci`` resampling whole groups of items (a held-out turn with all its sampling seeds):
    ``stat(item_indices)`` is computed on the items of the groups drawn."""
    return bootstrap_ci(lambda g: stat(np.concatenate([groups[j] for j in g])), len(groups), **kw)


def paired_difference(a: dict, b: dict) -> dict:
    """``a - b`` over the same turns, from two ``per_turn`` records (``edits``, ``words``, and ``sim`` when both
    have it): pooled WER and mean SIM, each with a paired bootstrap 95% interval over turns: far tighter than
    comparing two intervals, since a turn hard for one is hard for the other."""
    if a["words"] != b["words"]:
        raise ValueError("the two were not judged on the same turns")
    ea, eb, n = (np.array(x, dtype=float) for x in (a["edits"], b["edits"], a["words"]))
    wer = lambda i: (ea[i].sum() - eb[i].sum()) / n[i].sum()  # noqa: E731
    out = {"wer": round(float(wer(np.arange(len(n)))), 4), "wer_ci95": bootstrap_ci(wer, len(n))}
    if "sim" in a and "sim" in b:
        d = np.array(a["sim"], dtype=float) - np.array(b["sim"], dtype=float)
        out |= {"sim": round(float(d.mean()), 4), "sim_ci95": bootstrap_ci(lambda i: d[i].mean(), len(d))}
    return out


# ----------------------------------------------------------------------------- SIM

@functools.cache
def _voice_encoder():
    from resemblyzer import VoiceEncoder

    return VoiceEncoder(device="cpu", verbose=False)


def speaker_embedding(audio: torch.Tensor | np.ndarray, sr: int) -> np.ndarray:
    """Unit-norm 256-d resemblyzer embedding of mono ``(T,)`` audio."""
    from resemblyzer import preprocess_wav

    x = _as_16k(audio, sr).numpy()
    return _voice_encoder().embed_utterance(preprocess_wav(x, source_sr=JUDGE_SR))


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two speaker embeddings (1 = same direction)."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def speaker_similarity(x: torch.Tensor, sr_x: int, y: torch.Tensor, sr_y: int) -> float:
    """SIM between two clips: cosine of their speaker embeddings."""
    return similarity(speaker_embedding(x, sr_x), speaker_embedding(y, sr_y))


# ----------------------------------------------------------------------------- prosody

_VOWELS = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}


@functools.cache
def _cmudict() -> dict[str, int]:
    import pocketsphinx

    path = Path(pocketsphinx.__file__).parent / "model" / "en-us" / "cmudict-en-us.dict"
    counts = {}
    for line in path.read_text().splitlines():
        word, *phones = line.split()
        if "(" not in word:  # keep the first pronunciation only
            counts[word] = sum(p in _VOWELS for p in phones)
    return counts


def count_syllables(text: str) -> int:
    """Syllables in ``text``: vowels of the CMU dictionary pronunciation, vowel groups otherwise."""
    d = _cmudict()
    return sum(d.get(w) or max(1, len(re.findall(r"[aeiouy]+", w))) for w in normalize_text(text).split())


def f0_stats(audio: torch.Tensor | np.ndarray, sr: int, fmin: float = 50.0, fmax: float = 400.0) -> dict:
    """pYIN pitch over voiced 10 ms frames: ``{"f0_mean": Hz, "f0_std": Hz, "voiced": fraction}``."""
    import librosa

    x = _as_16k(audio, sr).numpy()
    f0, voiced, _ = librosa.pyin(x, fmin=fmin, fmax=fmax, sr=JUDGE_SR, frame_length=1024, hop_length=160)
    f = f0[voiced & np.isfinite(f0)]
    if len(f) < 5:
        return {"f0_mean": float("nan"), "f0_std": float("nan"), "voiced": float(voiced.mean())}
    return {"f0_mean": float(f.mean()), "f0_std": float(f.std()), "voiced": float(voiced.mean())}


@functools.cache
def _vad():
    threads = torch.get_num_threads()
    from silero_vad import load_silero_vad  # importing silero_vad sets torch to one thread, for everyone

    torch.set_num_threads(threads)
    return load_silero_vad()


def speech_segments(audio: torch.Tensor | np.ndarray, sr: int) -> list[tuple[float, float]]:
    """Speech regions ``[(start_s, end_s), ...]`` found by silero-vad."""
    vad = _vad()  # first: it imports silero_vad and gives torch its threads back
    from silero_vad import get_speech_timestamps

    x = _as_16k(audio, sr)
    ts = get_speech_timestamps(x, vad, sampling_rate=JUDGE_SR, min_silence_duration_ms=100)
    return [(t["start"] / JUDGE_SR, t["end"] / JUDGE_SR) for t in ts]


def prosody(audio: torch.Tensor | np.ndarray, sr: int, text: str | None = None) -> dict:
    """Prosody features of one clip.

    Returns f0_mean, f0_std (Hz), energy_db (RMS over speech, dBFS), speech_s (seconds of
    speech), pause_s and n_pauses (silences of 100 ms or more between speech regions), and,
    when the ``text`` is given, rate (syllables per second of speech).
    """
    x = _as_16k(audio, sr)
    segs = speech_segments(x, JUDGE_SR)
    speech_s = sum(e - s for s, e in segs)
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(segs)]
    if segs:
        speech = torch.cat([x[int(s * JUDGE_SR):int(e * JUDGE_SR)] for s, e in segs])
    else:
        speech = x
    out = f0_stats(x, JUDGE_SR) | {
        "energy_db": A.rms_db(speech),
        "speech_s": speech_s,
        "pause_s": float(sum(gaps)),
        "n_pauses": len(gaps),
    }
    if text is not None:
        out["rate"] = count_syllables(text) / speech_s if speech_s > 0 else float("nan")
    return out


# ----------------------------------------------------------------------------- baseline

def judge_turns(rows: list[dict], desc: str = "judging") -> list[dict]:
    """Run every judge on the ground-truth audio of manifest rows: adds hyp, embedding, prosody."""
    asr = transcriber()
    out = []
    for r in progress(rows, desc=desc, unit="turn"):
        x, sr = A.load(r["wav"])
        out.append(r | {"hyp": asr(x, sr), "embedding": speaker_embedding(x, sr)} | prosody(x, sr, r["text"]))
    return out


def sim_matrix(judged: list[dict], voices: list[str]) -> tuple[np.ndarray, float, float]:
    """Mean SIM between every pair of voices over distinct clips, plus same-/different-voice means.

    Returns ``(M, same_voice_mean, different_voice_mean)`` with ``M[i, j]`` the mean cosine
    between clips of ``voices[i]`` and ``voices[j]`` (a clip is never paired with itself).
    """
    emb = np.stack([j["embedding"] for j in judged])
    cos = emb @ emb.T
    v = np.array([j["voice"] for j in judged])
    off_diag = ~np.eye(len(judged), dtype=bool)
    m = np.zeros((len(voices), len(voices)))
    for a, b in itertools.product(range(len(voices)), repeat=2):
        mask = np.outer(v == voices[a], v == voices[b]) & off_diag
        m[a, b] = cos[mask].mean() if mask.any() else np.nan
    same = np.equal.outer(v, v) & off_diag
    return m, float(cos[same].mean()), float(cos[~np.equal.outer(v, v)].mean())


def summarize_judges(judged: list[dict]) -> dict:
    """Aggregate judged turns (from ``judge_turns``) into the numbers of ``results/judges_baseline.json``.

    * ``wer_by_voice``: corpus-level WER per voice (and ``all``).
    * ``sim``: same-voice and different-voice mean SIM over all pairs of distinct clips,
      and the voice-by-voice matrix.
    * ``f0_tracking``: per voice, median |measured F0 mean / requested F0 mean - 1| and the
      Spearman correlation of measured with requested F0; ``rms`` ignores the pitch knobs, so its
      error only says that the requested range sits near its natural pitch, and its correlation
      is the tell.
    * ``rate_tracking``: per voice, the speaking rate (syllables/s) should be proportional to
      1/stretch. We fit one base rate per voice (median of rate x stretch) and report the median
      relative error of rate against base/stretch, and the Spearman correlation of rate with
      1/stretch.
    """
    from csm_lib.data import VOICES

    voices = sorted({r["voice"] for r in judged})
    result: dict = {"n_turns": len(judged), "lm": Path(transcriber().lm).name,
                    "hours": sum(r["duration"] for r in judged) / 3600}
    result["wer_by_voice"] = {v: wer([j["text"] for j in judged if j["voice"] == v],
                                     [j["hyp"] for j in judged if j["voice"] == v]) for v in voices}
    result["wer_by_voice"]["all"] = wer([j["text"] for j in judged], [j["hyp"] for j in judged])
    m, same, diff = sim_matrix(judged, voices)
    result["sim"] = {"same_voice_mean": same, "different_voice_mean": diff, "voices": voices,
                     "matrix": m.round(4).tolist()}
    f0_err, rate_err, rate_rho = {}, {}, {}
    for v in voices:
        js = [j for j in judged if j["voice"] == v]
        rel = [j["f0_mean"] / j["style"]["f0_mean"] - 1 for j in js if np.isfinite(j["f0_mean"])]
        voiced = [j for j in js if np.isfinite(j["f0_mean"])]
        f0_err[v] = {"median_abs_rel_error": float(np.median(np.abs(rel))),
                     "spearman_measured_vs_requested": _spearman(np.array([j["f0_mean"] for j in voiced]),
                                                                 np.array([j["style"]["f0_mean"] for j in voiced])),
                     "honours_pitch": VOICES[v]["honours_pitch"], "n": len(rel)}
        rate = np.array([j["rate"] for j in js])
        stretch = np.array([j["style"]["stretch"] for j in js])
        base = np.median(rate * stretch)
        rate_err[v] = float(np.median(np.abs(rate / (base / stretch) - 1)))
        rate_rho[v] = _spearman(rate, 1 / stretch)
    result["f0_tracking"] = f0_err
    result["rate_tracking"] = {"median_abs_rel_error": rate_err, "spearman_rate_vs_1_over_stretch": rate_rho}
    return result


def judges_baseline(folder: str | Path, split: str = "test") -> dict:
    """Judge the ground-truth audio of one split of a built corpus and summarise it."""
    from csm_lib.data import load_manifest

    judged = judge_turns(load_manifest(folder, split), desc=f"judging {split}")
    return {"split": split} | summarize_judges(judged)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Judge the corpus' ground-truth audio.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("baseline", help="write results/judges_baseline.json")
    b.add_argument("--hours", type=float, default=1.0, help="corpus size (built if missing)")
    b.add_argument("--split", default="test")
    b.add_argument("--out", default="results/judges_baseline.json")
    a = p.parse_args(argv)
    from csm_lib.data import CorpusConfig, build

    torch.manual_seed(0)
    folder = build(CorpusConfig.for_hours(a.hours))
    res = judges_baseline(folder, a.split) | {"corpus": folder.name,
                                              "command": f"python -m csm_lib.metrics baseline --hours {a.hours}"}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    os.replace(tmp, out)
    print(json.dumps({k: res[k] for k in ("wer_by_voice", "sim", "f0_tracking", "rate_tracking")}, indent=1))


if __name__ == "__main__":
    main()
