"""Your own voice, measured (chapter 13): ``make bench-finetune`` -> ``results/finetune.json``.

**The new voice.** Festival's ``ked_diphone`` (Debian ``festvox-kdlpc16k``: an American English male
diphone voice, a different synthesiser from the corpus's flite voices) reads WordNet sentences that
the reference never trained on: the test pool of the corpus's own sentence split
(``sentences.split_sentences``, the corpus seed), minus every sentence the reference's corpus uses in
any split, 5 to 14 words each. They are cut three ways, disjoint: ``EVAL`` sentences to judge, ``PRINT``
clips (two are the context of cloning by context, the others the voice print SIM is measured against),
and the rest read until ``MINUTES[-1]`` minutes of speech: "your recordings", written in the LJSpeech
layout (``voice_folder.write``) under ``data/voices/ked``.

**The systems**, each saying every eval sentence with the same sampling seed per sentence, at the
reference's temperature:

* ``reference`` - the shipped model, no context (speaker 0: the voice it gives a speaker id it knows);
* ``reference_ctx1``, ``reference_ctx2`` - cloning by context: one or two clips of the new voice as
  earlier turns of the same speaker;
* ``decoder``, ``full``, ``lora`` - fine-tuned on the folder (``finetune.py``'s modes: the audio decoder and the
  new speaker's embedding; every weight; rank-8 adapters and the text embeddings), the new voice as speaker 2,
  no context; ``full_replay``: every weight with half of each batch replayed from the reference's corpus;
  ``decoder_ctx1``, ``full_ctx1`` with one clip;
* ``decoder_<m>min`` - the decoder fine-tune on the first m minutes only (``MINUTES``), no context.

Which of the ten-minute fine-tunes is the default (``FinetuneConfig``'s ``mode`` and ``replay``) is chosen on
the folder's own held-out clips, never on the eval sentences (``select``).

Each generated turn is judged by pocketsphinx (WER against its text; ``ground_truth``: festival's own
audio of the same sentences) and resemblyzer (SIM to the voice print; ``floor``: the corpus's voices,
spoken by flite, against the same print - what SIM gives a voice that is not this one). Beside each
number: n and a bootstrap 95% interval over sentences; differences between two systems use a paired
bootstrap over the same sentences. ``old_voices``: the reference and both fine-tuned models on the
reference corpus's held-out test turns with their context (``evaluate_model``): what fine-tuning costs
the voices the model knew. ``finetunes``: steps, CPU seconds, trainable parameters, validation loss.

Resumable: each fine-tune lives in ``runs/finetune_bench/<name>`` (``finetune.py`` resumes it; a
finished one is kept while its base and data are the same), and each system's judged turns are kept
in ``runs/finetune_bench/judged/``, keyed by the model's fingerprint.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from csm_lib import audio as A
from csm_lib import checkpoint, data, metrics
from csm_lib import sentences as S
from csm_lib import voice_folder as V
from csm_lib.finetune import LEGACY, FinetuneConfig, finetune
from csm_lib.generate import REFERENCE_MODEL, Segment, load_generator, load_model, tokenizer_path
from csm_lib.judges.evaluate import corpus_folder, evaluate_model, judge, trained_with
from csm_lib.outputs import results_dir
from csm_lib.progress import progress
from csm_lib.text import load_tokenizer

VOICE = "ked_diphone"
EVAL, PRINT = 30, 8
MINUTES = (1, 3, 10)
WORDS = (5, 14)
NEW_SPEAKER, KNOWN_SPEAKER = 2, 0
FINETUNE_STEPS = FinetuneConfig.steps  # the defaults a user gets are the ones measured
OLD_TURNS = 24
SAMPLES = 2  # eval sentences whose audio every system leaves in results/finetune_samples/
RUNS = Path("runs/finetune_bench")
VOICE_DIR = Path("data/voices/ked")
SIM_GAIN, WER_SLACK = 0.05, 5.0  # the bar: fine-tuned SIM >= cloning + 0.05, WER <= reference + 5 points
REPLAY = 0.5  # full_replay: half of each batch's windows from the reference's own corpus
FINETUNES = {  # name: (mode, minutes of data, replay)
    "decoder": ("decoder", MINUTES[-1], 0.0), "full": ("full", MINUTES[-1], 0.0), "lora": ("lora", MINUTES[-1], 0.0),
    "full_replay": ("full", MINUTES[-1], REPLAY),
    **{f"decoder_{m}min": ("decoder", m, 0.0) for m in MINUTES[:-1]}}
CHOICES = ("decoder", "full", "lora", "full_replay")  # the fine-tunes of all ten minutes, chosen between


# --- the new voice ------------------------------------------------------------------------------
def voice_sentences(corpus: data.CorpusConfig) -> dict[str, list[str]]:
    """``eval``, ``print`` and ``train`` sentences: held out from the corpus (every split of its plan, so no audio
    is needed) and from each other (module docstring)."""
    used = {S.sentence_key(s) for t in data.plan(corpus) for s in S.split_into_sentences(t.text)}
    pool = [s for s in S.split_sentences(S.wordnet_sentences(), corpus.seed)["test"]
            if S.sentence_key(s) not in used and WORDS[0] <= len(S.words(s)) <= WORDS[1]]
    return {"eval": pool[:EVAL], "print": pool[EVAL:EVAL + PRINT], "train": pool[EVAL + PRINT:]}


def make_voice(sents: dict[str, list[str]], root: Path = VOICE_DIR) -> dict:
    """Speak the sentences with festival: ``root`` (the training folder, up to ``MINUTES[-1]`` minutes),
    and ``root``_eval, ``root``_print (LJSpeech layout too). Kept when already made from the same sentences."""
    made = {}
    for part, limit in (("train", MINUTES[-1] * 60), ("eval", None), ("print", None)):
        folder = root if part == "train" else root.with_name(f"{root.name}_{part}")
        if (folder / "metadata.csv").exists():
            made[part] = V.read(folder)
            if all(c.text in sents[part] for c in made[part]):
                continue
        clips, total = [], 0.0
        for i, s in enumerate(progress(sents[part], desc=f"festival: {part}")):
            x, sr = V.festival(s, VOICE)
            if limit is not None and total + len(x) / sr > limit:
                break
            clips.append((f"ked_{part}{i:04d}", s, A.normalize_loudness(x), sr))
            total += len(x) / sr
        V.write(folder, clips)
        made[part] = V.read(folder)
    return made


# --- judging ----------------------------------------------------------------------------------------
def judged_turns(name: str, model: Path, speaker: int, context: list[Segment], texts: list[str], seed: int) -> list:
    """Each text spoken by ``model`` after ``context`` and judged (hypothesis, embedding); cached per model."""
    key = checkpoint.fingerprint(model)
    cache = RUNS / "judged" / f"{name}.json"
    if cache.exists():
        kept = json.loads(cache.read_text())
        if kept["model"] == key and kept["texts"] == texts:
            return [dict(t, embedding=np.array(t["embedding"])) for t in kept["turns"]]
    gen = load_generator(model)
    out = []
    for i, text in enumerate(progress(texts, desc=name)):
        codes = list(gen.frames(text, speaker, context, 15_000, seed=seed + i))
        audio = gen.decode(codes)
        j = judge(audio, gen.sample_rate, text, style=False)
        out.append({"text": text, "hyp": j["hyp"], "seconds": j["seconds"], "audio": audio,
                    "embedding": j["embedding"] if j["embedding"] is not None else np.zeros(256)})
    keep = [{k: (v.tolist() if k == "embedding" else v) for k, v in t.items() if k != "audio"} for t in out]
    checkpoint.atomic_write(cache, lambda tmp: Path(tmp).write_text(json.dumps(
        {"model": key, "texts": texts, "turns": keep})))
    return out


def summary(turns: list[dict], voice_print: np.ndarray) -> dict:
    """WER and SIM to the voice print, each with n and a bootstrap 95% interval over sentences."""
    edits, words = np.array([metrics.word_errors(t["text"], t["hyp"]) for t in turns]).T
    sims = np.array([metrics.similarity(t["embedding"], voice_print) for t in turns])
    return {"n": len(turns), "wer": round(float(edits.sum() / words.sum()), 4),
            "wer_ci95": metrics.bootstrap_ci(lambda i: edits[i].sum() / words[i].sum(), len(turns)),
            "sim": round(float(sims.mean()), 4), "sim_ci95": metrics.bootstrap_ci(lambda i: sims[i].mean(), len(turns)),
            "seconds_mean": round(float(np.mean([t["seconds"] for t in turns])), 2),
            "per_turn": {"edits": edits.astype(int).tolist(), "words": words.astype(int).tolist(),
                         "sim": [round(float(s), 4) for s in sims]}}


def paired(a: dict, b: dict) -> dict:
    """System ``a`` minus system ``b`` on the same sentences: WER and SIM with paired 95% intervals."""
    return metrics.paired_difference(a["per_turn"], b["per_turn"])


# --- choosing the defaults on the folder's held-out clips -----------------------------------------------
def select(runs: dict[str, Path], context: list[Segment], voice_print: np.ndarray, seed: int) -> dict:
    """Each fine-tune of all ten minutes (``CHOICES``), the reference and cloning by context, judged on the
    folder's own held-out clips (the ones early stopping reads; never the eval sentences). The choice: the highest
    SIM among the fine-tunes whose WER is within ``WER_SLACK`` points of cloning's (which reads), else the lowest
    WER. ``FinetuneConfig``'s defaults are that choice (tests/test_finetune.py)."""
    cfg = FinetuneConfig()
    clips = V.read(VOICE_DIR, speaker=NEW_SPEAKER, group=cfg.group)
    texts = [c.text for c in V.split(clips, cfg.valid_share, seed)[1]]
    plan = {"reference": (REFERENCE_MODEL, KNOWN_SPEAKER, []), "reference_ctx2": (REFERENCE_MODEL, KNOWN_SPEAKER,
                                                                                  context),
            **{k: (runs[k], NEW_SPEAKER, []) for k in CHOICES}}
    judged = {k: summary(judged_turns(f"valid_{k}", m, spk, ctx, texts, seed), voice_print)
              for k, (m, spk, ctx) in plan.items()}
    bar = judged["reference_ctx2"]["wer"] + WER_SLACK / 100
    reading = [k for k in CHOICES if judged[k]["wer"] <= bar]
    chosen = max(reading, key=lambda k: judged[k]["sim"]) if reading else min(CHOICES, key=lambda k: judged[k]["wer"])
    return {"n": len(texts), "rule": f"highest SIM among fine-tunes with WER <= cloning's + {WER_SLACK:.0f} points, "
                                     "else lowest WER", "systems": judged, "chosen": chosen,
            "chosen_settings": dict(zip(("mode", "minutes", "replay"), FINETUNES[chosen], strict=True))}


# --- the benchmark -----------------------------------------------------------------------------------
def finetuned(name: str, mode: str, minutes: float, replay: float, seed: int) -> Path:
    """Fine-tune the reference on the first ``minutes`` of the new voice (kept when already done with the same
    settings, base and data; else its run folder is cleared, all but the folder's codes cache)."""
    cfg = FinetuneConfig(data=str(VOICE_DIR), mode=mode, data_minutes=0.0 if minutes >= MINUTES[-1] else minutes,
                         replay=replay, steps=FINETUNE_STEPS, speaker=NEW_SPEAKER, seed=seed, out=str(RUNS / name))
    out = Path(cfg.out)
    state = out / "latest"
    meta = checkpoint.load_meta(out / state.read_text().strip()) if state.exists() else None
    saved = LEGACY | meta["finetune"] if meta is not None else {}
    clips = V.read(VOICE_DIR, speaker=NEW_SPEAKER, group=cfg.group)
    data_key = V.content_key(V.first_minutes(clips, cfg.data_minutes) if cfg.data_minutes > 0 else clips)
    if out.exists() and not (meta is not None and meta["base"] == checkpoint.model_record(REFERENCE_MODEL) and all(
            saved.get(k) == v for k, v in asdict(cfg).items()) and meta["finetune_data"]["content_key"] == data_key):
        for f in out.iterdir():  # another fine-tune's, or none with a state: start afresh
            if f.name != "cache":
                f.unlink()
    return out / "model.safetensors" if (out / "model.safetensors").exists() else finetune(cfg)


def old_voices(model: Path, turns: int, temperature: float) -> dict:
    """``model`` on the reference corpus's held-out test turns, with their context: WER and SIM (``evaluate_model``)."""
    m, meta = load_model(model)
    r = evaluate_model(m, trained_with(meta), max_turns=turns, temperature=temperature, without_context=False,
                       style=False, tokenizer=load_tokenizer(tokenizer_path(model)))
    keep = ("wer", "wer_ci95", "sim", "sim_ci95")
    return {"n": r["turns"], **{k: r["with_context"][k] for k in keep},
            "per_turn": r["with_context"]["per_turn"], "ground_truth_wer": r["ground_truth"]["wer"]}


def bench_finetune(seed: int = 0, out: Path | None = None) -> dict:
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    ref_meta = checkpoint.load_meta(REFERENCE_MODEL)
    corpus = corpus_folder(trained_with(ref_meta))
    sents = voice_sentences(data.corpus_of(ref_meta["train"]))
    made = make_voice(sents)
    print_audio = [A.load(c.wav)[0] for c in made["print"]]
    voice_print = metrics.speaker_embedding(torch.cat(print_audio[2:]), A.SAMPLE_RATE)
    context = [Segment(KNOWN_SPEAKER, c.text, x) for c, x in zip(made["print"][:2], print_audio[:2], strict=True)]
    texts = [c.text for c in made["eval"]]
    temperature = load_generator().temperature

    runs, cpu = {}, {}
    for name, (mode, minutes, replay) in FINETUNES.items():
        path = finetuned(name, mode, minutes, replay, seed)
        meta = checkpoint.load_meta(path)
        runs[name] = path
        cpu[name] = {"mode": mode, "replay": replay, "data_minutes": meta["finetune_data"]["train_minutes"],
                     "clips": meta["finetune_data"]["train_clips"], "steps": meta["steps"],
                     "best_step": meta["best_step"], "train_c0_loss_last": float(meta["history"][-1]["c0_loss"]),
                     "cpu_seconds": round(meta["cpu_seconds"], 1), "parameters": meta["finetune"]["parameters"],
                     "valid": meta["valid"], "evals": meta["evals"], "measured_with": checkpoint.model_record(path)}

    selection = select(runs, context, voice_print, seed)
    new = [Segment(NEW_SPEAKER, s.text, s.audio) for s in context]
    plan = {"reference": (REFERENCE_MODEL, KNOWN_SPEAKER, []),
            "reference_ctx1": (REFERENCE_MODEL, KNOWN_SPEAKER, context[:1]),
            "reference_ctx2": (REFERENCE_MODEL, KNOWN_SPEAKER, context),
            **{name: (runs[name], NEW_SPEAKER, []) for name in FINETUNES},
            "decoder_ctx1": (runs["decoder"], NEW_SPEAKER, new[:1]), "full_ctx1": (runs["full"], NEW_SPEAKER, new[:1])}
    systems, samples = {}, {}
    for name, (model, speaker, ctx) in plan.items():
        turns = judged_turns(name, model, speaker, ctx, texts, seed)
        systems[name] = summary(turns, voice_print)
        samples[name] = [t.get("audio") for t in turns[:SAMPLES]]
    truth = [judge(A.load(c.wav)[0], A.SAMPLE_RATE, c.text, style=False) | {"text": c.text} for c in made["eval"]]
    ground_truth = summary(truth, voice_print)
    floor_rows = data.load_manifest(corpus, "test")[:EVAL]
    floor = np.array([metrics.similarity(metrics.speaker_embedding(A.load(r["wav"])[0], A.SAMPLE_RATE),
                                         voice_print) for r in floor_rows])
    cloning = max(("reference_ctx1", "reference_ctx2"), key=lambda k: systems[k]["sim"])
    old = {name: old_voices(path, OLD_TURNS, temperature)
           for name, path in (("reference", REFERENCE_MODEL), *((k, runs[k]) for k in CHOICES))}

    res_dir = out.parent if out else results_dir()
    sample_dir = res_dir / "finetune_samples"
    written = {}
    for name, clips in samples.items():
        for i, x in enumerate(clips):
            if x is not None:  # None: judged in an earlier sitting (kept from then)
                A.save(sample_dir / f"{name}_{i}.wav", x, A.SAMPLE_RATE)
            written.setdefault(name, []).append(f"finetune_samples/{name}_{i}.wav")
    for stale in sample_dir.glob("*.wav"):  # a system this version no longer runs
        if not any(f"finetune_samples/{stale.name}" in w for w in written.values()) and \
                not stale.name.startswith("ground_truth"):
            stale.unlink()
    for i, c in enumerate(made["eval"][:SAMPLES]):
        A.save(sample_dir / f"ground_truth_{i}.wav", A.load(c.wav)[0], A.SAMPLE_RATE)
        written.setdefault("ground_truth", []).append(f"finetune_samples/ground_truth_{i}.wav")

    gains = {name: paired(systems[name], systems[cloning]) for name in (*CHOICES, "decoder_ctx1", "full_ctx1")}
    vs_ref = {name: paired(systems[name], systems["reference"]) for name in CHOICES}
    result = {
        "measured_with": checkpoint.model_record(REFERENCE_MODEL),
        "voice": {"synthesiser": "festival", "voice": VOICE, "package": "festvox-kdlpc16k",
                  "train_minutes": cpu["full"]["data_minutes"], "train_clips": len(made["train"]),
                  "eval_sentences": len(texts), "print_clips": len(made["print"]) - 2, "context_clips": 2,
                  "overlap_eval_with_reference_train": S.overlap(
                      [r["text"] for r in data.load_manifest(corpus, "train")], texts),
                  "overlap_eval_with_finetune": S.overlap([c.text for c in made["train"]], texts)},
        "settings": {"temperature": temperature, "topk": 50, "seed": seed, "finetune_steps": FINETUNE_STEPS,
                     "new_speaker": NEW_SPEAKER, "known_speaker": KNOWN_SPEAKER, "minutes": list(MINUTES),
                     "replay": REPLAY},
        "finetunes": cpu, "selection": selection, "systems": systems, "ground_truth": ground_truth,
        "floor": {"n": len(floor), "sim": round(float(floor.mean()), 4),
                  "sim_ci95": metrics.bootstrap_ci(lambda i: floor[i].mean(), len(floor)),
                  "what": "the corpus's flite voices (held-out test turns) against the voice print"},
        "cloning": cloning, "gain_over_cloning": gains, "change_from_reference": vs_ref, "old_voices": old,
        "old_voices_change": {name: paired(old[name], old["reference"]) for name in CHOICES},
        "samples": written, "sample_texts": texts[:SAMPLES],
        "must_show": {"sim_gain_target": SIM_GAIN, "wer_slack_points": WER_SLACK,
                      **{f"{k}_sim_gain": gains[k]["sim"] for k in CHOICES},
                      **{f"{k}_wer_over_reference": vs_ref[k]["wer"] for k in CHOICES}},
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "provenance": checkpoint.provenance("csm_lib.bench.finetune", "cpu"),
    }
    path = out or res_dir / "finetune.json"
    checkpoint.atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    return result


def verdict(r: dict) -> dict[str, str]:
    """The must-show, computed for each ten-minute fine-tune: is its SIM >= cloning + 0.05, and its WER within 5
    points of the reference's, by the paired interval or by the point estimate only?"""
    out = {}
    for name in CHOICES:
        g, w = r["gain_over_cloning"][name], r["change_from_reference"][name]
        lo = g["sim_ci95"][0]
        sim = (f"SIM {g['sim']:+.3f} over cloning by context [{g['sim_ci95'][0]:+.3f}, {g['sim_ci95'][1]:+.3f}]: "
               + ("reached, by its interval" if lo >= SIM_GAIN else "reached by its point estimate only"
                  if g["sim"] >= SIM_GAIN else "not reached"))
        pts = [100 * x for x in (w["wer"], *w["wer_ci95"])]
        wer = (f"WER {pts[0]:+.1f} points from the reference without context [{pts[1]:+.1f}, {pts[2]:+.1f}]: "
               + ("within the {:.0f}-point slack, by its interval" if pts[2] <= WER_SLACK else
                  "within the {:.0f}-point slack by its point estimate only" if pts[0] <= WER_SLACK else
                  "beyond the {:.0f}-point slack").format(WER_SLACK))
        out[name] = f"{sim}; {wer} (measured here, n={r['systems'][name]['n']} sentences)"
    return out


if __name__ == "__main__":
    r = bench_finetune()
    print(json.dumps({"systems": {k: {m: v[m] for m in ("wer", "sim")} for k, v in r["systems"].items()},
                      "verdict": verdict(r)}, indent=1))
