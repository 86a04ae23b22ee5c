"""Chapter 10's table: every system speaks the same held-out turns with two sampling seeds, judged by ``quality``.

The turns are ``quality.targets`` of the reference corpus's **test** split (sentences training never
saw), each spoken after its conversation's earlier turns (ground-truth audio and text, as
``Segment``s). The thresholds are ``quality.calibrate``'d on the **valid** split, as in validation.
Systems:

* ``ground_truth`` — the corpus's own audio (flite);
* ``csm`` / ``csm_no_context`` — the reference CSM with and without the earlier turns;
* ``csm_plain`` / ``csm_memory`` / ``csm_cross_modal`` — ``make seed-variants``: the reference
  trained the same number of further steps as itself, with the seed's dual memory bank, with its
  cross-modal attention (with context; the comparison at equal compute);
* ``pipeline`` / ``valle`` / ``audiolm`` — chapter 09's systems at the same size (``make
  baselines``); they read the turn's text and not the context.

Each CSM-like system gets up to twice the ground truth's duration (at least 3 s) and ``ended``
records whether it stopped by itself before that. Sampling: temperature 0.9, top-k 50, seeds 0 and
1 (per turn ``1000 * seed + index``). A system's judged turns are cached in
``data/quality_cache/<system>-n<turns>-s<seed>.json``, so a killed ``make bench-quality`` goes on where it
stopped. For listening, each system's worst, median and best sample per column are saved as
Ogg Vorbis under ``results/quality_samples/`` (lossy, small; what was judged is the float audio).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from csm_lib import audio as A
from csm_lib import data, metrics
from csm_lib.generate import REFERENCE_CODEC, REFERENCE_MODEL, Generator, Segment, load_generator
from csm_lib.judges import quality
from csm_lib.judges.quality import SAMPLING
from csm_lib.outputs import REPO, RESULTS
from csm_lib.progress import progress

SYSTEMS = ("ground_truth", "csm", "csm_no_context", "csm_plain", "csm_memory", "csm_cross_modal",
           "pipeline", "valle", "audiolm")
SEEDS = (0, 1)
CACHE = REPO / "data" / "quality_cache"
SAMPLES = RESULTS / "quality_samples"
RANK_BY = {  # column -> the per-turn value that orders its samples from worst to best
    "character_consistency": "cc_margin", "emotional_coherence": "emotional_coherence",
    "prosodic_naturalness": "natural_features", "turn_taking_fluency": "fluency_checks",
    "voice_consistency": "half_sim", "sim": "sim", "wer": "turn_accuracy"}

Speaker = Callable[[quality.Target, int], tuple[torch.Tensor, int, bool]]


def context_of(t: quality.Target) -> list[Segment]:
    return [Segment(r["speaker"], r["text"], A.load(r["wav"])[0]) for r in t.earlier]


def max_ms(t: quality.Target) -> float:
    return max(3000.0, 2000.0 * t.row["duration"])


def csm_speaker(gen: Generator, with_context: bool = True) -> Speaker:
    def speak(t: quality.Target, seed: int):
        limit = max_ms(t)
        codes = list(gen.frames(t.row["text"], t.row["speaker"], context_of(t) if with_context else [], limit,
                                seed=seed, **SAMPLING))
        return gen.decode(codes), gen.sample_rate, len(codes) < int(limit // gen.frame_ms)
    return speak


def baseline_speaker(name: str, gen: Generator, models: dict) -> Speaker:
    from csm_lib.bench.latency import speakers

    fn = speakers(gen, models)[name]

    def speak(t: quality.Target, seed: int):
        n = int(max_ms(t) // gen.frame_ms)
        audio = torch.cat([torch.zeros(0), *fn(t.row["text"], t.row["speaker"], context_of(t), n, seed, stop=True)])
        return audio, gen.sample_rate, audio.numel() < n * gen.codec.cfg.samples_per_frame
    return speak


def make_speaker(name: str) -> Speaker | None:
    """The system ``name`` as ``speak(target, seed) -> (audio, sr, ended)``; None when its checkpoint is missing."""
    if name == "ground_truth":
        return lambda t, seed: (A.load(t.row["wav"])[0], A.load(t.row["wav"])[1], True)
    if name in ("csm", "csm_no_context"):
        return csm_speaker(load_generator(REFERENCE_MODEL, REFERENCE_CODEC), with_context=name == "csm")
    if name.startswith("csm_"):
        path = REPO / "checkpoints" / f"{name}.safetensors"
        return csm_speaker(load_generator(path, REFERENCE_CODEC)) if path.exists() else None
    from csm_lib.baselines.train import load
    from csm_lib.bench.latency import CHECKPOINTS

    if not all(CHECKPOINTS[k].exists() for k in ("valle", "audiolm", "textlm")):
        return None
    models = {k: load(CHECKPOINTS[k])[0] for k in ("valle", "audiolm")}
    return baseline_speaker(name, load_generator(REFERENCE_MODEL, REFERENCE_CODEC), models)


def save_samples(name: str, records: list[dict], audio: dict[str, torch.Tensor], sr: int,
                 samples: Path = SAMPLES) -> dict:
    """Worst, median and best sample of each column (``RANK_BY``) -> ``{column: {which: file}}``, files written
    under ``samples/<name>/`` (paths relative to ``samples``' parent)."""
    picks: dict[str, dict[str, str]] = {}
    folder = samples / name
    folder.mkdir(parents=True, exist_ok=True)
    for column, key in RANK_BY.items():
        ranked = sorted((r for r in records if np.isfinite(r[key])), key=lambda r: r[key])
        if not ranked:
            continue
        picks[column] = {}
        for which, r in (("worst", ranked[0]), ("median", ranked[len(ranked) // 2]), ("best", ranked[-1])):
            file = folder / f"{r['sample'].replace('/', '_')}.ogg"
            if not file.exists():
                x = audio[r["sample"]].numpy() if audio[r["sample"]].numel() else np.zeros(sr // 10, dtype=np.float32)
                sf.write(file, A.resample(torch.as_tensor(x), sr, 16_000).numpy(), 16_000, format="OGG",
                         subtype="VORBIS")
            picks[column][which] = str(file.relative_to(samples.parent))
    return picks


def run_system(name: str, speak: Speaker, judge: quality.Judge, ts: list[quality.Target], seed: int,
               cache_dir: Path = CACHE, samples: Path = SAMPLES) -> dict:
    """Judge one system at one seed (cached): ``{"turns": records, "samples": picks, "wall_time_s"}``."""
    cache = cache_dir / f"{name}-n{len(ts)}-s{seed}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    t0, records, audio = time.perf_counter(), [], {}
    for i, t in enumerate(progress(ts, desc=f"{name}, seed {seed}", unit="turn")):
        x, sr, ended = speak(t, 1000 * seed + i)
        f = quality.features(x, sr, t.row["text"])
        r = quality.turn_scores(f, judge.references(t), judge.cal, ended)
        turn = f"{t.row['conversation']}/{t.row['turn']}"
        edits, words = metrics.word_errors(t.row["text"], f["hyp"])
        records.append(r | {"turn": turn, "sample": f"{turn}/s{seed}", "text": t.row["text"], "hyp": f["hyp"],
                            "seconds": f["seconds"], "gt_seconds": t.row["duration"], "ended": ended,
                            "turn_accuracy": 1 - edits / max(words, 1)})
        audio[records[-1]["sample"]] = x
    out = {"turns": quality._jsonable(records), "samples": save_samples(name, records, audio, sr, samples),
           "wall_time_s": round(time.perf_counter() - t0, 1)}
    cache_dir.mkdir(parents=True, exist_ok=True)
    quality.write_json(out, cache)
    return out


def table(n_turns: int = 100, n_calibration: int = 80, systems: tuple[str, ...] = SYSTEMS,
          seeds: tuple[int, ...] = SEEDS, cache_dir: Path = CACHE, samples: Path = SAMPLES) -> dict:
    """Every system of ``systems`` on the same ``n_turns`` test turns at each of ``seeds`` -> the table."""
    meta = json.loads(Path(REFERENCE_MODEL).with_suffix(".json").read_text())
    folder = data.build(data.corpus_of(meta["train"]))
    judge = quality.Judge()
    valid = quality.targets(data.load_manifest(folder, "valid"), n_calibration)
    judge.cal = quality.calibrate([judge.wav_features(t.row) for t in valid])
    ts = quality.targets(data.load_manifest(folder, "test"), n_turns)
    train_texts = {r["text"] for r in data.load_manifest(folder, "train")}
    rows, missing = {}, []
    for name in systems:
        speak = make_speaker(name)
        if speak is None:
            missing.append(name)
            continue
        runs = [run_system(name, speak, judge, ts, s, cache_dir, samples)
                for s in (seeds if name != "ground_truth" else seeds[:1])]
        turns = [r for run in runs for r in run["turns"]]
        rows[name] = {"summary": quality.summarize(turns),
                      "by_seed": {str(s): quality.summarize(run["turns"]) for s, run in zip(seeds, runs, strict=False)},
                      "samples": runs[0]["samples"], "wall_time_s": sum(run["wall_time_s"] for run in runs)}
    return {"corpus": folder.name, "split": "test", "calibration_split": "valid", "n_turns": len(ts),
            "turns": [f"{t.row['conversation']}/{t.row['turn']}" for t in ts],
            "seeds": list(seeds), "sampling": SAMPLING, "test_sentences_in_train": sum(t.row["text"] in train_texts
                                                                                     for t in ts),
            "definitions": quality.DEFINITIONS, "seed_scores": quality.SEED_SCORES, "calibration": judge.cal.__dict__,
            "systems": rows, "missing": missing}


def main(argv: list[str] | None = None) -> None:
    from csm_lib.checkpoint import model_record, provenance

    p = argparse.ArgumentParser(description="Chapter 10's quality table -> results/quality_table.json")
    p.add_argument("--turns", type=int, default=100)
    p.add_argument("--calibration_turns", type=int, default=80)
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--out", default=str(RESULTS / "quality_table.json"))
    p.add_argument("--cache", default=str(CACHE), help="each system's judged turns (resume from here)")
    p.add_argument("--samples", default=str(SAMPLES), help="where the worst/median/best clips go")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    result = table(a.turns, a.calibration_turns, tuple(a.systems.split(",")), SEEDS, Path(a.cache), Path(a.samples))
    result["measured_with"] = model_record(REFERENCE_MODEL)  # the CSM rows' model
    result["provenance"] = provenance("csm_lib.bench.quality", "cpu")
    quality.write_json(result, a.out)
    print(json.dumps({k: {c: v["summary"][c] for c in (*quality.SCORES, "wer", "sim")}
                      for k, v in result["systems"].items()}, indent=1))


if __name__ == "__main__":
    main()


# ----------------------------------------------------------------------------- reading the table

COLUMNS = (*quality.SCORES, "wer", "sim", "style_error", "ended", "duration_ratio_median")


def cell(summary: dict, key: str) -> str:
    """``0.91 [0.85-0.95]`` for a summary's value and interval ('' when missing)."""
    v, ci = summary.get(key), summary.get(f"{key.removesuffix('_median')}_ci95")
    if v is None:
        return ""
    return f"{v:.2f} [{ci[0]:.2f}-{ci[1]:.2f}]" if ci else f"{v:.2f}"


def seed_layout(result: dict) -> pd.DataFrame:
    """The table in the seed's layout: a row per score (and the objective columns), the seed's number,
    then each system's value and 95% interval."""
    rows = {}
    for key in COLUMNS:
        seed = f"{quality.SEED_SCORES[key]:.2f}" if key in quality.SEED_SCORES else ""
        rows[key.replace("_", " ")] = {"seed": seed} | {name: cell(s["summary"], key)
                                                        for name, s in result["systems"].items()}
    return pd.DataFrame(rows).T
