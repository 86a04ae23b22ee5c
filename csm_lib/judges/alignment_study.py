"""The alignment study: which training-only remedy makes the reference read better, at equal compute.

Every arm starts from the shipped reference (``checkpoints/csm_reference``) and trains ``steps`` more
steps of its own recipe on the same corpus, with the same seed, windows and learning-rate schedule
(a fresh warm-up and cosine decay, ``train.TrainConfig.schedule_start``); only the arm's addition
differs (``ARMS``):

* ``base``: the recipe as it is;
* ``phone``, ``ctc``, ``guided``: one alignment remedy each (``alignment.py``);
* ``pair``: the two remedies with the lowest held-out WER, together;
* ``regroup``: no remedy, but a quarter of the windows regrouped so a speaker may talk twice in a row
  (``dataset.ConversationWindows.training_batch``): the turn-order arm.

Each arm is judged on the same held-out test turns with context (``evaluate.evaluate_model``: WER
and CER with 95% intervals, SIM), by its codebook-0 loss on validation windows with the text intact
and scrambled (how much it reads), and the base and regroup arms also in three context layouts
(``evaluate.LAYOUTS``: as in the corpus, the speaker's own turn last, alone; on ``LAYOUT_TURNS`` turns).
Resumable over sittings: an arm's finished result is written to ``results/alignment_study/<arm>.json``
(committed, small: its judgement, attention, one turn heard) and is not made again while the reference
and the recipe are the same; an unfinished arm resumes from ``runs/alignment_study/<arm>/``.
``python -m csm_lib.judges.alignment_study [--steps=300] [--turns=40]``
writes ``results/alignment_study.json`` (``make alignment-study``).

Explained in chapter 07b (``notebooks/07b_reference_model.ipynb``, section 5).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from pathlib import Path

import torch

from csm_lib import audio as A
from csm_lib import checkpoint, data, metrics
from csm_lib.alignment import aligned_mass, attention_maps
from csm_lib.dataset import encode_corpus, join_turns, split_windows, tokenize_turns
from csm_lib.generate import Generator, Segment, load_codec, load_model
from csm_lib.judges import evaluate
from csm_lib.train import TrainConfig, train

REFERENCE = Path("checkpoints/csm_reference.safetensors")
ROOT = Path("runs/alignment_study")
SINGLES = ("phone", "ctc", "guided")
ARMS = ("base", *SINGLES, "pair", "regroup")
HOURS = 20.0  # the study's corpus: the reference's first-stage corpus, whose test turns make model-eval judges
LAYOUT_TURNS = 16  # held-out turns judged again in the layouts where the voice may follow turn order
STUDY_LAYOUTS = ("corpus", "own_last", "own_only")


def arm_config(arm: str, steps: int, pair: str = "", hours: float = HOURS, lr: float = 5e-4,
               warmup: int = 30, threads: int = 2) -> TrainConfig:
    """The reference's own recipe, continued ``steps`` steps on the ``hours`` corpus, plus the arm's addition."""
    meta = json.loads(REFERENCE.with_suffix(".json").read_text())
    known = {f.name for f in fields(TrainConfig)}
    base = TrainConfig(**{k: v for k, v in meta["train"].items() if k in known})
    start = meta["steps"]
    align = {"base": "", "regroup": "", "pair": pair}.get(arm, arm)
    return replace(base, hours=hours, steps=start + steps, schedule_start=start, lr=lr, warmup=warmup, minutes=0.0,
                   stop_step=0, eval_every=100, ckpt_every=100, align=align, regroup=0.25 if arm == "regroup" else 0.0,
                   threads=threads, init=str(REFERENCE), resume=False, continue_from="", after="", out=str(ROOT / arm),
                   data_root=data.DEFAULT_ROOT.as_posix())


def trained(cfg: TrainConfig) -> Path:
    """Train the arm ``cfg`` unless its final model is there; resume it if a state is."""
    out = Path(cfg.out)
    model = out / "model.safetensors"
    if model.exists() and json.loads(model.with_suffix(".json").read_text())["steps"] >= cfg.steps:
        return model
    return train(replace(cfg, init="", resume=True) if (out / "latest").exists() else cfg)


def judged(arm: str, model_path: Path, turns: int, layouts: bool) -> dict:
    """The arm's held-out judgement: ``turns`` test turns with context; with ``layouts``, the first
    ``LAYOUT_TURNS`` of them again in ``STUDY_LAYOUTS``."""
    model, meta = load_model(model_path)
    t, tok = evaluate.trained_with(meta), evaluate.model_tokenizer(model_path)
    sweep = json.loads(Path("results/temperature_sweep.json").read_text())["chosen"]
    result = evaluate.evaluate_model(model, t, turns, temperature=sweep, tokenizer=tok, without_context=False,
                                     style=False)
    if layouts:
        result["layouts"] = evaluate.evaluate_model(model, t, LAYOUT_TURNS, temperature=sweep, tokenizer=tok,
                                                    without_context=False, layouts=STUDY_LAYOUTS,
                                                    style=False)["layouts"]
    _, valid_w = evaluate.training_windows(t, tok)
    idx = list(range(min(64, len(valid_w))))
    out = {"arm": arm, "measured_with": checkpoint.model_record(model_path),
           "align": t["align"], "regroup": t["regroup"], "steps": meta["steps"],
           "wall_time_s": meta["wall_time_s"], "evals": meta["evals"],
           "curve": [{k: r.get(k) for k in ("step", "c0_loss", "decoder_loss", *(f"{x}_loss" for x in SINGLES))}
                     for r in meta["history"] if int(r["step"]) >= t["schedule_start"]],
           "reads": {"valid": evaluate.loss_by_turn_position(model, valid_w, idx),
                     "valid_text_scrambled": evaluate.loss_by_turn_position(model, valid_w, idx, scramble_text=True)},
           "test": {k: result[k] for k in ("corpus", "turns", "settings", "ground_truth", "with_context",
                                           "layouts", "overlap_with_train") if k in result}}
    return out


def attention_alignment(model_path: Path, n_windows: int = 16) -> dict:
    """How well each backbone head reads along: ``alignment.aligned_mass`` of every layer and head on the
    first ``n_windows`` validation windows (the corpus's alignments), and the best head."""
    model, meta = load_model(model_path)
    t, tok = evaluate.trained_with(meta, hours=HOURS), evaluate.model_tokenizer(model_path)
    folder = evaluate.corpus_folder(t)
    valid = split_windows(folder, data.load_manifest(folder), load_codec(t["codec"])[0], t["codec"], tok,
                          t["max_len"], aligned=True)["valid"]
    mass = []
    with torch.inference_mode():
        for start in range(0, n_windows, 8):
            frames, mask, align = valid.training_batch(list(range(start, start + 8)))
            mass.append(torch.stack([aligned_mass(p, align, mask) for p in attention_maps(model, frames, mask)]))
    by_head = torch.stack(mass).mean(0)  # (L, H)
    layer, head = divmod(int(by_head.argmax()), by_head.shape[1])
    return {"windows": n_windows, "by_layer_head": by_head.round(decimals=4).tolist(),
            "best": {"layer": layer, "head": head, "mass": round(float(by_head.max()), 4)}}


def heard_turn(model_path: Path, name: str, head: dict, out_dir: Path, seed: int = 0) -> dict:
    """One held-out test turn (the first ``evaluate.held_out_targets`` gives) through the model ``model_path``:
    what it says with the conversation as context (``out_dir/<name>.wav``, at the chosen temperature), and the
    attention of its best ``head`` (``attention_alignment``) from the turn's ground-truth audio frames to the
    turn's text, teacher-forced: rows are the turn's frames, columns its text tokens."""
    model, meta = load_model(model_path)
    t, tok = evaluate.trained_with(meta, hours=HOURS), evaluate.model_tokenizer(model_path)
    folder = evaluate.corpus_folder(t)
    codec = load_codec(t["codec"])[0]
    row, earlier = evaluate.held_out_targets(data.load_manifest(folder, "test"), 1)[0]
    codes = encode_corpus(folder, data.load_manifest(folder), codec, checkpoint.fingerprint(t["codec"]))
    turns = tokenize_turns([*earlier, row], codes, tok, data.alignments(folder))
    frames, mask, _ = join_turns(turns)
    with torch.inference_mode():
        probs = attention_maps(model, frames[None], mask[None])[head["layer"]][0, head["head"]]  # (S, S)
    start = len(frames) - len(turns[-1].frames)
    n_text = int(turns[-1].mask[:, -1].sum())
    audio_rows = range(start + n_text - 1, len(frames) - 1)  # the states that emit the turn's frames
    attention = probs[list(audio_rows), start:start + n_text]
    temperature = json.loads(Path("results/temperature_sweep.json").read_text())["chosen"]
    gen = Generator(model, codec, tok, temperature=temperature)
    context = [Segment(r["speaker"], r["text"], A.load(r["wav"])[0]) for r in earlier]
    wav = gen.generate(row["text"], row["speaker"], context, 15_000, seed=seed)
    A.save(out_dir / f"{name}.wav", wav, gen.sample_rate)
    return {"turn": f"{row['conversation']}/{row['turn']}", "text": row["text"],
            "tokens": [tok.tokens[i] for i in turns[-1].frames[:n_text, -1].tolist()],
            "aligned": (turns[-1].align[n_text:] if turns[-1].align is not None else torch.empty(0)).tolist(),
            "layer": head["layer"], "head": head["head"], "attention": attention.round(decimals=3).tolist(),
            "wav": f"{out_dir.name}/{name}.wav", "seconds": round(len(wav) / gen.sample_rate, 2),
            "ground_truth_wav": Path(row["wav"]).name}


def paired_wer_difference(arm: dict, base: dict) -> dict:
    """WER with context of ``arm`` minus ``base``'s on the same turns and seeds, with a paired bootstrap 95%
    interval over turns (``metrics.paired_difference``)."""
    d = metrics.paired_difference(arm["test"]["with_context"]["per_turn"], base["test"]["with_context"]["per_turn"])
    return {"wer_difference": d["wer"], "wer_difference_ci95": d["wer_ci95"]}


def verdict(arm: dict, steps: int) -> dict:
    """What an arm's paired WER difference against ``base`` shows, computed from its result: ``{"verdict",
    "evidence"}``. An arm moved WER only if the 95% interval of the difference excludes 0."""
    d = arm["against_base"]
    lo, hi = d["wer_difference_ci95"]
    n = len(arm["test"]["with_context"]["per_turn"]["words"])
    if hi < 0:
        said = f"lowered WER by {-d['wer_difference']:.1%} (95% CI {-hi:.1%} to {-lo:.1%})"
    elif lo > 0:
        said = f"raised WER by {d['wer_difference']:.1%} (95% CI {lo:.1%} to {hi:.1%})"
    else:
        said = f"no change shown: {d['wer_difference']:+.1%}, 95% CI {lo:+.1%} to {hi:+.1%} spans 0"
    return {"verdict": said, "evidence": f"measured here: {n} held-out turns with context, {steps} steps from "
                                         "the reference, paired bootstrap over turns"}


def best_pair(arms: dict[str, dict]) -> str:
    """The two single remedies with the lowest held-out WER with context, "+"-joined."""
    ranked = sorted(SINGLES, key=lambda a: arms[a]["test"]["with_context"]["wer"])
    return "+".join(sorted(ranked[:2], key=SINGLES.index))


def finished(name: str, make, results: Path, recipe: dict) -> dict:
    """``results/<name>.json`` if it was made from this reference and recipe, else ``make()`` written there."""
    path = results / f"{name}.json"
    reference = checkpoint.fingerprint(REFERENCE)
    if path.exists():
        done = json.loads(path.read_text())
        if done.get("reference_fingerprint") == reference and done.get("recipe") == recipe:
            return done
    out = make() | {"reference_fingerprint": reference, "recipe": recipe}
    results.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(out, indent=1) + "\n"))
    return out


def arm_result(arm: str, cfg: TrainConfig, turns: int, samples: Path) -> dict:
    """Train (or resume) one arm, judge it, read its attention, hear one turn."""
    model = trained(cfg)
    out = judged(arm, model, turns, layouts=arm in ("base", "regroup"))
    out["attention"] = attention_alignment(model)
    out["heard"] = heard_turn(model, arm, out["attention"]["best"], samples)
    return out


def study(steps: int = 300, turns: int = 40, out: str | Path = "results/alignment_study.json",
          threads: int = 2) -> dict:
    """Train and judge every arm (module docstring); writes ``out`` once all are done. ``threads``: torch's
    CPU threads (results do not depend on it beyond float rounding)."""
    torch.set_num_threads(threads)
    results, samples = Path(out).with_suffix(""), Path(out).parent / "alignment_samples"
    samples.mkdir(parents=True, exist_ok=True)
    recipe = {k: v for k, v in vars(arm_config("base", steps)).items() if k in (
        "hours", "corpus_seed", "steps", "schedule_start", "lr", "warmup", "batch", "max_len", "seed")} | {
        "turns": turns, "layout_turns": LAYOUT_TURNS}
    arms: dict[str, dict] = {}
    for arm in ("base", *SINGLES):
        cfg = arm_config(arm, steps, threads=threads)
        arms[arm] = finished(arm, lambda a=arm, c=cfg: arm_result(a, c, turns, samples), results, recipe)
    pair = best_pair(arms)
    for arm, cfg in (("pair", arm_config("pair", steps, pair, threads=threads)),
                     ("regroup", arm_config("regroup", steps, threads=threads))):
        arms[arm] = finished(arm, lambda a=arm, c=cfg: arm_result(a, c, turns, samples), results,
                             recipe | ({"pair": pair} if arm == "pair" else {}))
    for arm in arms:
        arms[arm]["against_base"] = paired_wer_difference(arms[arm], arms["base"])

    def reference() -> dict:
        att = attention_alignment(REFERENCE)
        return checkpoint.model_record(REFERENCE) | {"attention": att,
                                                      "heard": heard_turn(REFERENCE, "reference", att["best"], samples)}

    shipped = finished("reference", reference, results, recipe)
    truth = next(r for r in data.load_manifest(evaluate.corpus_folder(arm_config("base", steps).__dict__))
                 if Path(r["wav"]).name == shipped["heard"]["ground_truth_wav"])
    A.save(samples / "ground_truth.wav", A.load(truth["wav"])[0], A.SAMPLE_RATE)
    result = {"reference": shipped, "steps": steps, "turns": turns, "pair": pair, "recipe": recipe,
              "arms": arms, "provenance": checkpoint.provenance("csm_lib.judges.alignment_study", "cpu")}
    checkpoint.atomic_write(Path(out), lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="The alignment study (module docstring) -> results/alignment_study.json")
    p.add_argument("--steps", type=int, default=300, help="steps each arm trains beyond the reference")
    p.add_argument("--turns", type=int, default=40, help="held-out test turns each arm is judged on")
    p.add_argument("--out", default="results/alignment_study.json")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    a = p.parse_args(argv)
    r = study(a.steps, a.turns, a.out, a.threads)
    for arm, j in r["arms"].items():
        w = j["test"]["with_context"]
        print(f"{arm:8s} WER {w['wer']:.3f} {w['wer_ci95']}  SIM {w['sim']:.3f}  "
              f"reads {j['reads']['valid_text_scrambled']['frames_3_9'] - j['reads']['valid']['frames_3_9']:.3f}")


if __name__ == "__main__":
    main()
