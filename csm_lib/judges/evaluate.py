"""Judging a trained CSM on held-out conversations, with and without their context.

For each held-out turn (from the third turn of a conversation on, so that its speaker has spoken
before) the model speaks the turn's text twice with the same seed: once **with context** (every
earlier turn of the conversation, text and ground-truth audio, as ``Segment``s) and once
**without**. Each generated turn is judged by the judges of chapter 01:

* ``wer`` — pocketsphinx transcript against the text (``ground_truth`` beside it: the same judge on
  the corpus audio of the same turns);
* ``sim`` — speaker similarity (resemblyzer) to the target speaker's own earlier turns in that
  conversation;
* ``style_error`` — how far the turn's speaking style is from the speaker's style in that
  conversation: the mean, over log F0 level, log F0 range and log syllable rate, of
  ``|generated - speaker| / spread``, where *speaker* is measured (same pYIN and VAD) on the
  speaker's earlier turns and *spread* is that feature's standard deviation over all ground-truth
  held-out turns. 0 is the speaker's own style; 1 is a typical distance between two turns of the
  corpus.

Each summary has a bootstrap 95% interval (over turns) beside its number, the share of generated
turns that ended by themselves (the end-of-speech frame before ``max_audio_length_ms``) and the
median duration ratio generated / ground truth; the result records how much the judged turns
share with the training split (``sentences.overlap``).

``python -m csm_lib.judges.evaluate MODEL.safetensors [--turns=N] [--unseen_turns=N] [--temperature=T]`` writes
``results/reference_model.json``; ``python -m csm_lib.judges.evaluate sweep MODEL OUT.json`` chooses that
temperature on validation turns (``sweep_temperature``).

``python -m csm_lib.judges.evaluate losses OUT.json MODEL... --hours=20,40`` compares models (the stages of
``make model``) by codebook-0 loss on the same windows of each corpus (``stage_losses``);
``python -m csm_lib.judges.evaluate models OUT.json MODEL...`` by WER and SIM on the same held-out turns, with
paired differences (``compare_models``).

``judge_valid`` is the same judging, on a few validation turns, for ``train.train(cfg, judge=...)``
(training reports it when ``judge_turns > 0``); ``probe`` asks whether a model reads its text.
This module and ``train`` do not import each other: what both need (loading checkpoints) lives
in ``generate``, the corpus windows in ``dataset``.

Explained in chapter 07b (``notebooks/07b_reference_model.ipynb``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from csm_lib import audio as A
from csm_lib import checkpoint, data, metrics
from csm_lib.dataset import ConversationWindows, split_windows
from csm_lib.generate import Generator, Segment, load_codec, load_model, tokenizer_path
from csm_lib.inference import int8 as quantized
from csm_lib.model import CSM
from csm_lib.progress import progress
from csm_lib.sentences import overlap
from csm_lib.text import AnyTokenizer, corpus_tokenizer, load_tokenizer

STYLE_KEYS = ("f0_mean", "f0_std", "rate")
# the context of a held-out turn, laid out four ways (layout_context): as in the corpus; the speaker's own
# latest turn, then the other's (turns alternate); the other's, then the speaker's own (the same speaker twice
# in a row); the speaker's own turn alone (cloning a voice from one clip)
LAYOUTS = ("corpus", "own_first", "own_last", "own_only")


def style_vector(p: dict) -> np.ndarray:
    """Log F0 level, log F0 range, log syllable rate of ``metrics.prosody`` features."""
    return np.log(np.array([max(p[k], 1e-3) if np.isfinite(p[k]) else np.nan for k in STYLE_KEYS]))


def held_out_targets(rows: list[dict], max_turns: int) -> list[tuple[dict, list[dict]]]:
    """(target row, earlier rows of its conversation) for turns >= 2, spread over the conversations."""
    convs: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["conversation"], r["turn"])):
        convs.setdefault(r["conversation"], []).append(r)
    per_conv = [[(r, conv[:i]) for i, r in enumerate(conv) if i >= 2] for conv in convs.values()]
    out = []
    while len(out) < max_turns and any(per_conv):  # round-robin: every conversation before any twice
        for targets in per_conv:
            if targets and len(out) < max_turns:
                out.append(targets.pop(0))
    return out


def layout_context(row: dict, earlier: list[dict], layout: str) -> list[dict]:
    """The context rows of held-out turn ``row`` in one of ``LAYOUTS`` (the speaker's and the other's latest turns)."""
    if layout == "corpus":
        return earlier
    own = [r for r in earlier if r["speaker"] == row["speaker"]][-1]
    other = [r for r in earlier if r["speaker"] != row["speaker"]][-1]
    return {"own_first": [own, other], "own_last": [other, own], "own_only": [own]}[layout]


def judge(audio: torch.Tensor, sr: int, text: str, style: bool = True) -> dict:
    """Transcript, speaker embedding, style (``style=False``: not measured, NaN; pYIN is the slow judge), seconds."""
    if audio.numel() < sr // 10:  # nothing (or almost nothing) was said
        return {"hyp": "", "embedding": None, "style": np.full(3, np.nan), "seconds": audio.numel() / sr}
    return {"hyp": metrics.transcriber()(audio, sr), "embedding": metrics.speaker_embedding(audio, sr),
            "style": style_vector(metrics.prosody(audio, sr, text)) if style else np.full(3, np.nan),
            "seconds": audio.numel() / sr}


def trained_with(meta: dict, **overrides) -> dict:
    """The checkpoint's training settings, its corpus looked up under this clone's data root (not
    the trainer's path), with the ``overrides`` that are not None."""
    return meta["train"] | {"data_root": str(data.DEFAULT_ROOT)} | {k: v for k, v in overrides.items() if v is not None}


def model_tokenizer(model_path: str | Path) -> AnyTokenizer | None:
    """The tokenizer saved beside a final model, or None (a ``state-*`` has none: use the corpus's)."""
    tok = tokenizer_path(model_path)
    return load_tokenizer(tok) if tok.exists() else None


def corpus_folder(t: dict) -> Path:
    """The corpus of the training settings ``t`` (built once, then cached)."""
    return data.build(data.corpus_of(t), t["data_root"])


def evaluate(model_path: str | Path, max_turns: int = 40, temperature: float = 0.8, topk: int = 50,
             max_audio_length_ms: float = 15_000, seed: int = 0, split: str = "test",
             hours: float | None = None, corpus_seed: int | None = None, unseen_turns: int = 0,
             layouts: tuple[str, ...] = ()) -> dict:
    """Judge the checkpoint ``model_path`` (module docstring): what ``results/reference_model.json`` holds.

    By default the held-out split of the model's own training corpus; ``hours``/``corpus_seed`` pick
    another corpus, so that two models trained on different corpora meet the same test turns (a
    corpus of another seed shares no conversation with either). ``unseen_turns > 0`` also judges that
    many turns of the ``unseen`` split (a wordnet corpus: words training never saw), under ``unseen_words``.
    ``layouts``: the test turns also judged with their context laid out so (``LAYOUTS``), under ``layouts``.
    """
    model, meta = load_model(model_path)
    t, own = trained_with(meta, hours=hours, corpus_seed=corpus_seed), trained_with(meta)
    tokenizer = model_tokenizer(model_path)
    result = evaluate_model(model, t, max_turns, temperature, topk, max_audio_length_ms, seed, split, tokenizer,
                            train_t=own, layouts=layouts)
    if unseen_turns:
        unseen = evaluate_model(model, t, unseen_turns, temperature, topk, max_audio_length_ms, seed, "unseen",
                                tokenizer, train_t=own)
        result["unseen_words"] = {k: v for k, v in unseen.items() if k not in ("provenance", "settings")}
    return {"model": str(model_path), "model_steps": meta.get("steps"),
            "measured_with": checkpoint.model_record(model_path)} | result


def evaluate_model(model, t: dict, max_turns: int = 40, temperature: float = 0.8, topk: int = 50,
                   max_audio_length_ms: float = 15_000, seed: int = 0, split: str = "test",
                   tokenizer: AnyTokenizer | None = None, without_context: bool = True, int8: bool = False,
                   train_t: dict | None = None, layouts: tuple[str, ...] = (), style: bool = True) -> dict:
    """Judge ``model``, trained with the ``train.TrainConfig`` fields ``t`` (corpus, codec, its tokenizer).

    ``int8``: generate with the fast path's dynamic INT8 linear layers (``inference.int8``).
    ``train_t``: the settings the model was really trained with, when ``t`` names another corpus to
    judge on; the overlap is counted against *its* training split (default: ``t``'s).
    ``layouts``: also judge each turn with its context laid out so (``LAYOUTS``; the same seed), under "layouts".
    ``style=False``: no style error (its pYIN is the slowest judge), for comparisons of WER and SIM only."""
    was_training = model.training
    folder = corpus_folder(t)
    codec, _ = load_codec(t["codec"])
    gen = Generator(model, codec, tokenizer or corpus_tokenizer(folder, kind=t.get("text_input", "bpe")))
    if int8:
        gen.fast = quantized(gen.fast)
    sr = gen.sample_rate
    targets = held_out_targets(data.load_manifest(folder, split), max_turns)
    if not targets:
        raise ValueError(f"the {split} split of corpus {folder.name} has no turns to judge (from a third turn on)")
    judged = []
    t0 = time.perf_counter()
    for i, (row, earlier) in enumerate(progress(targets, desc="generating and judging", unit="turn")):
        context = [Segment(r["speaker"], r["text"], A.load(r["wav"])[0]) for r in earlier]
        own = [s.audio for s in context if s.speaker == row["speaker"]]
        ref_emb = metrics.speaker_embedding(torch.cat(own), sr)
        ref_style = np.nanmean([style_vector(metrics.prosody(a, sr, r["text"]))
                                for a, r in zip(own, [r for r in earlier if r["speaker"] == row["speaker"]],
                                                strict=True)], axis=0) if style else np.full(3, np.nan)
        entry = {"conversation": row["conversation"], "turn": row["turn"], "text": row["text"],
                 "ref_embedding": ref_emb, "ref_style": ref_style,
                 "ground_truth": judge(A.load(row["wav"])[0], sr, row["text"], style)}
        max_frames = int(max_audio_length_ms // gen.frame_ms)
        runs = [("with_context", context), ("without_context", [])][:2 if without_context else 1]
        by_row = {r["wav"]: s for r, s in zip(earlier, context, strict=True)}
        runs += [(f"layout_{name}", [by_row[r["wav"]] for r in layout_context(row, earlier, name)])
                 for name in layouts if name != "corpus"]
        for name, ctx in runs:
            codes = list(gen.frames(row["text"], row["speaker"], ctx, max_audio_length_ms, temperature, topk,
                                    seed=seed + i))
            audio = gen.decode(codes)  # what gen.generate returns; the frame count says how it ended
            entry[name] = judge(audio, sr, row["text"], style) | {"ended": len(codes) < max_frames}
        if "corpus" in layouts:
            entry["layout_corpus"] = entry["with_context"]
        judged.append(entry)
    model.train(was_training)
    # the style error is in units of the ground truth's spread over the judged turns: one turn has none
    spread = np.nanstd(np.stack([e["ground_truth"]["style"] for e in judged]), axis=0) \
        if len(judged) > 1 and style else None

    def summary(name: str) -> dict:
        """Corpus WER, mean SIM, style error, turns ended by end-of-speech, duration ratio (median),
        each with a bootstrap 95% interval over the judged turns."""
        edits, n_words = np.array([metrics.word_errors(e["text"], e[name]["hyp"]) for e in judged]).T
        c_edits, n_chars = np.array([metrics.char_errors(e["text"], e[name]["hyp"]) for e in judged]).T
        sims = np.array([metrics.similarity(e[name]["embedding"], e["ref_embedding"])
                         if e[name]["embedding"] is not None else 0.0 for e in judged])
        errs = np.array([] if spread is None else [np.nanmean(np.abs(e[name]["style"] - e["ref_style"]) / spread)
                                                   for e in judged])
        ratio = np.array([e[name]["seconds"] / e["ground_truth"]["seconds"] for e in judged])
        out = {"wer": round(float(edits.sum() / n_words.sum()), 4),
               "wer_ci95": metrics.bootstrap_ci(lambda i: edits[i].sum() / n_words[i].sum(), len(judged)),
               "cer": round(float(c_edits.sum() / n_chars.sum()), 4),
               "cer_ci95": metrics.bootstrap_ci(lambda i: c_edits[i].sum() / n_chars[i].sum(), len(judged)),
               "sim": round(float(np.mean(sims)), 4),
               "sim_ci95": metrics.bootstrap_ci(lambda i: sims[i].mean(), len(judged)),
               "style_error": round(float(np.nanmean(errs)), 4) if errs.size else None,
               "style_error_ci95": metrics.bootstrap_ci(lambda i: np.nanmean(errs[i]), len(errs)),
               "style_error_n": int(np.isfinite(errs).sum()),
               "seconds_mean": round(float(np.mean([e[name]["seconds"] for e in judged])), 2),
               "duration_ratio_median": round(float(np.median(ratio)), 4),
               "duration_ratio_ci95": metrics.bootstrap_ci(lambda i: np.median(ratio[i]), len(judged)),
               "examples": [{"turn": f"{e['conversation']}/{e['turn']}", "text": e["text"], "hyp": e[name]["hyp"]}
                            for e in judged[:3]]}
        if name != "ground_truth":
            ended = np.array([e[name]["ended"] for e in judged], dtype=float)
            out |= {"ended_by_eos": round(float(ended.mean()), 4),
                    "ended_by_eos_ci95": metrics.bootstrap_ci(lambda i: ended[i].mean(), len(judged))}
        # each turn's word edits, words and SIM, in the order judged: two models judged on the same turns
        # with the same seeds can be compared turn by turn (a paired bootstrap)
        out["per_turn"] = {"edits": edits.astype(int).tolist(), "words": n_words.astype(int).tolist(),
                           "sim": [round(float(x), 4) for x in sims]}
        return out

    train_folder = folder if train_t is None else corpus_folder(train_t)
    shared = overlap([r["text"] for r in data.load_manifest(train_folder, "train")], [e["text"] for e in judged])
    return {"corpus": folder.name, "train_corpus": train_folder.name, "corpus_text": t.get("text", "templates"),
            "text_input": t.get("text_input", "bpe"), "split": split, "turns": len(judged),
            "overlap_with_train": shared,
            "settings": {"temperature": temperature, "topk": topk, "max_audio_length_ms": max_audio_length_ms,
                         "seed": seed, "int8": int8},
            "ground_truth": summary("ground_truth"), "with_context": summary("with_context"),
            "without_context": summary("without_context") if without_context else None,
            **({"layouts": {name: summary(f"layout_{name}") for name in layouts}} if layouts else {}),
            "style_spread_log": None if spread is None else [round(float(s), 4) for s in spread],
            "wall_time_s": round(time.perf_counter() - t0, 1),
            "provenance": checkpoint.provenance("csm_lib.judges.evaluate", "cpu")}


def judge_valid(model: CSM, t: dict) -> dict:
    """WER and SIM of ``t["judge_turns"]`` generated valid turns (with context): ``train.train``'s judge.

    ``t`` is the run's ``train.TrainConfig`` as a dict; the model goes back to its device after.
    """
    device = next(model.parameters()).device
    r = evaluate_model(model.cpu(), t, max_turns=t["judge_turns"], split="valid")
    model.to(device)
    return {"valid_wer": r["with_context"]["wer"], "valid_sim": r["with_context"]["sim"]}


@torch.no_grad()
def c0_cross_entropy(model: CSM, frames: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codebook-0 cross-entropy at every next position of a batch (B, S, K+1) -> (ce, is_audio), both (B, S-1)."""
    import torch.nn.functional as F

    h = model.backbone(model.embed_frames(frames, mask), padding_mask=mask.any(-1))
    ce = F.cross_entropy(model.codebook0_head(h[:, :-1]).transpose(1, 2), frames[:, 1:, 0], reduction="none")
    return ce, mask[:, 1:, : model.cfg.n_codebooks].all(-1)  # the target is an audio frame


def loss_by_turn_position(model, windows, indices: list[int], scramble_text: bool = False, seed: int = 0) -> dict:
    """Codebook-0 cross-entropy by frame position within its turn: does the model read the text?

    A model that memorised its training turns predicts them from their first frames, text or no
    text; one that reads the text does well from the start and badly once the text is scrambled.
    Returns mean nats for frames 1-2, 3-9, 10-29 and 30+ of each turn.
    """
    K = model.cfg.n_codebooks
    frames, mask = windows.batch(indices)
    if scramble_text:
        text = mask[..., K]
        g = torch.Generator().manual_seed(seed)
        frames[..., K][text] = frames[..., K][text][torch.randperm(int(text.sum()), generator=g)]
    ce, audio = c0_cross_entropy(model, frames, mask)
    position = torch.zeros_like(ce, dtype=torch.long)  # 1 for a turn's first audio frame, 2 next, ...
    for s in range(ce.shape[1]):
        position[:, s] = torch.where(audio[:, s], (position[:, s - 1] if s else 0) + 1, 0)
    bands = {"frames_1_2": (1, 3), "frames_3_9": (3, 10), "frames_10_29": (10, 30), "frames_30_on": (30, 10**9)}
    return {name: round(float(ce[audio & (position >= lo) & (position < hi)].mean()), 3)
            for name, (lo, hi) in bands.items()}


def training_windows(t: dict, tokenizer: AnyTokenizer | None = None) -> tuple[ConversationWindows, ...]:
    """The train and valid windows a model with training settings ``t`` was trained on (as ``train.load_data``)."""
    folder = corpus_folder(t)
    tokenizer = tokenizer or corpus_tokenizer(folder, kind=t.get("text_input", "bpe"))
    windows = split_windows(folder, data.load_manifest(folder), load_codec(t["codec"])[0], t["codec"],
                            tokenizer, t["max_len"])  # the codes cache training wrote
    return windows["train"], windows["valid"]


def c0_loss(model: CSM, windows: ConversationWindows, n_windows: int, batch: int = 8) -> float:
    """Mean codebook-0 cross-entropy (nats) over every audio frame of the first ``n_windows`` windows."""
    total, frames_seen = 0.0, 0
    with torch.inference_mode():
        for start in range(0, min(n_windows, len(windows)), batch):
            ce, audio = c0_cross_entropy(model, *windows.batch(list(range(start, min(start + batch, n_windows,
                                                                                          len(windows))))))
            total, frames_seen = total + float(ce[audio].sum()), frames_seen + int(audio.sum())
    return round(total / frames_seen, 4)


def stage_losses(model_paths: list[str | Path], hours: list[float], n_windows: int = 200) -> dict:
    """Each model's codebook-0 loss on the first ``n_windows`` training and validation windows of each corpus of its
    seed and ``hours`` (the models' own corpora hold out the same sentences): training's own evaluation
    reads only 32 windows of the corpus it trains on, too few and not the same across stages."""
    out = {"windows": n_windows, "models": {}, "provenance": checkpoint.provenance("csm_lib.judges.evaluate", "cpu")}
    for path in model_paths:
        model, meta = load_model(path)
        tok, losses = model_tokenizer(path), {}
        for h in hours:
            t = trained_with(meta, hours=h)
            train_w, valid_w = training_windows(t, tok)
            losses[corpus_folder(t).name] = {"hours": h, "train": c0_loss(model, train_w, n_windows),
                                             "valid": c0_loss(model, valid_w, n_windows)}
        out["models"][str(path)] = {"measured_with": checkpoint.model_record(path), "corpus": meta["data"]["corpus"],
                                    "c0_loss": losses}
    return out


def probe(path: str | Path, n_windows: int = 40) -> dict:
    """``loss_by_turn_position`` on training and validation windows, text intact and scrambled."""
    model, meta = load_model(path)
    train_w, valid_w = training_windows(trained_with(meta), model_tokenizer(path))
    idx = list(range(n_windows))
    return {"model": str(path), "step": meta.get("step", meta.get("steps")),
            "measured_with": checkpoint.model_record(path),
            "train": loss_by_turn_position(model, train_w, idx),
            "train_text_scrambled": loss_by_turn_position(model, train_w, idx, scramble_text=True),
            "valid": loss_by_turn_position(model, valid_w, idx),
            "provenance": checkpoint.provenance("csm_lib.judges.evaluate", "cpu")}


def compare_text_inputs(model_paths: list[str | Path], turns: int = 24, unseen_turns: int = 24) -> dict:
    """Chapter 07b's comparison: models trained alike but reading different text (bpe, chars, phones),
    judged with context on the same held-out and unseen-word turns, with their validation curves."""
    out = {"models": {}, "provenance": checkpoint.provenance("csm_lib.judges.evaluate", "cpu")}
    for path in model_paths:
        model, meta = load_model(path)
        t, tok = trained_with(meta), model_tokenizer(path)
        judged = {split: evaluate_model(model, t, n, split=split, tokenizer=tok, without_context=False)
                  for split, n in (("test", turns), ("unseen", unseen_turns))}
        _, valid_w = training_windows(t, tok)
        idx = list(range(min(40, len(valid_w))))
        reads = {"valid": loss_by_turn_position(model, valid_w, idx),
                 "valid_text_scrambled": loss_by_turn_position(model, valid_w, idx, scramble_text=True)}
        out["models"][t.get("text_input", "bpe")] = {
            "model": str(path), "steps": meta["steps"], "wall_time_s": meta["wall_time_s"],
            "text_vocab_size": meta["config"]["text_vocab_size"], "corpus": judged["test"]["corpus"],
            "evals": meta["evals"], "probe": reads,
            "curve": [{k: r[k] for k in ("step", "c0_loss", "seconds")} for r in meta["history"]],
            **{split: {k: j[k] for k in ("turns", "ground_truth", "with_context", "overlap_with_train")}
               for split, j in judged.items()}}
    return out


def compare_models(paths: list[str | Path], turns: int = 40, temperature: float = 0.5,
                   layouts: tuple[str, ...] = ("own_last", "own_only")) -> dict:
    """Models judged on the same held-out turns of the first model's corpus with the same seeds (WER, SIM;
    with context, without, and in ``layouts``), and each later model's paired difference from the first."""
    t = trained_with(load_model(paths[0])[1])
    out: dict = {"corpus": corpus_folder(t).name, "turns": turns, "temperature": temperature, "models": {}}
    for path in paths:
        model, meta = load_model(path)
        r = evaluate_model(model, t, turns, temperature, tokenizer=model_tokenizer(path), train_t=trained_with(meta),
                           layouts=layouts, style=False)
        keep = {name: r[name] for name in ("with_context", "without_context")} | r["layouts"]
        out["models"][str(path)] = {"measured_with": checkpoint.model_record(path), "ground_truth": r["ground_truth"],
                                    **keep}
    first, *rest = out["models"].values()
    for m in rest:
        m["change_from_first"] = {k: metrics.paired_difference(m[k]["per_turn"], first[k]["per_turn"])
                                  for k in ("with_context", "without_context", *layouts)}
    return out


def sweep_temperature(path: str | Path, temperatures: tuple[float, ...] = (0.3, 0.5, 0.65, 0.8, 0.95),
                      turns: int = 30, topk: int = 50, split: str = "valid") -> dict:
    """The sampling temperature, chosen on validation turns so that the test split stays unseen.

    Each temperature speaks the same ``turns`` turns of ``split`` with context, with the same seeds;
    ``chosen`` is the lowest-WER temperature among those whose turns end by themselves at least 95%
    of the time (a cold sampler can loop instead of ending)."""
    model, meta = load_model(path)
    t, tok = trained_with(meta), model_tokenizer(path)
    rows, judged = {}, None
    for temperature in progress(temperatures, desc="temperatures"):
        judged = evaluate_model(model, t, turns, temperature, topk, split=split, tokenizer=tok, without_context=False)
        rows[str(temperature)] = {k: judged["with_context"][k] for k in
                                  ("wer", "wer_ci95", "cer", "sim", "sim_ci95", "ended_by_eos",
                                   "duration_ratio_median")}
    ending = [k for k, r in rows.items() if r["ended_by_eos"] >= 0.95] or list(rows)
    return {"model": str(path), "measured_with": checkpoint.model_record(path), "split": split,
            "turns": judged["turns"], "topk": topk, "overlap_with_train": judged["overlap_with_train"],
            "ground_truth": {k: judged["ground_truth"][k] for k in ("wer", "wer_ci95", "sim")},
            "temperatures": rows, "chosen": float(min(ending, key=lambda k: rows[k]["wer"])),
            "provenance": checkpoint.provenance("csm_lib.judges.evaluate", "cpu")}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:  # python -m csm_lib.judges.evaluate compare OUT.json MODEL... [--turns=N]
        opts = dict(a[2:].split("=", 1) for a in argv[2:] if a.startswith("--"))
        n = int(opts.get("turns", 24))
        result = compare_text_inputs([a for a in argv[2:] if not a.startswith("--")], n, n)
        checkpoint.atomic_write(Path(argv[1]), lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
        print(json.dumps({k: {s: m[s]["with_context"]["wer"] for s in ("test", "unseen")}
                          for k, m in result["models"].items()}, indent=2))
        return
    if argv[:1] == ["sweep"]:  # python -m csm_lib.judges.evaluate sweep MODEL OUT.json [--turns=N]
        opts = dict(a[2:].split("=", 1) for a in argv[3:] if a.startswith("--"))
        result = sweep_temperature(argv[1], turns=int(opts.get("turns", 30)))
        checkpoint.atomic_write(Path(argv[2]), lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
        print(json.dumps({k: (r["wer"], r["ended_by_eos"]) for k, r in result["temperatures"].items()}),
              "chosen", result["chosen"])
        return
    if argv[:1] == ["losses"]:  # python -m csm_lib.judges.evaluate losses OUT.json MODEL... --hours=H1,H2 [--windows=N]
        opts = dict(a[2:].split("=", 1) for a in argv[2:] if a.startswith("--"))
        result = stage_losses([a for a in argv[2:] if not a.startswith("--")],
                              [float(h) for h in opts["hours"].split(",")], int(opts.get("windows", 200)))
        checkpoint.atomic_write(Path(argv[1]), lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
        print(json.dumps({m: r["c0_loss"] for m, r in result["models"].items()}, indent=2))
        return
    if argv[:1] == ["models"]:  # python -m csm_lib.judges.evaluate models OUT.json MODEL... [--turns=N]
        opts = dict(a[2:].split("=", 1) for a in argv[2:] if a.startswith("--"))
        result = compare_models([a for a in argv[2:] if not a.startswith("--")], int(opts.get("turns", 40)),
                                float(opts.get("temperature", 0.5)))
        checkpoint.atomic_write(Path(argv[1]), lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
        kinds = ("with_context", "without_context", "own_last", "own_only")
        print(json.dumps({p: {k: (m[k]["wer"], m[k]["sim"]) for k in kinds} for p, m in result["models"].items()}))
        return
    if argv[:1] == ["probe"] and len(argv) == 3:  # python -m csm_lib.judges.evaluate probe MODEL OUT.json
        result = probe(argv[1])
        checkpoint.atomic_write(Path(argv[2]), lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
        print(json.dumps(result, indent=2))
        return
    if not argv or argv[0].startswith("--"):
        raise SystemExit("usage: python -m csm_lib.judges.evaluate MODEL.safetensors [--turns=N] [--unseen_turns=N]"
                         " [--temperature=T] [--hours=H --corpus_seed=S] [--layouts=all] [--out=results/...json]")
    opts = dict(a[2:].split("=", 1) for a in argv[1:])
    unknown = set(opts) - {"turns", "unseen_turns", "temperature", "hours", "corpus_seed", "layouts", "out"}
    if unknown:
        raise SystemExit(f"unknown option(s) {sorted(unknown)}; expected --turns, --unseen_turns, --temperature, "
                         "--hours, --corpus_seed, --layouts, --out")
    layouts = LAYOUTS if opts.get("layouts") == "all" else tuple(x for x in opts.get("layouts", "").split(",") if x)
    if set(layouts) - set(LAYOUTS):
        raise SystemExit(f"--layouts must be 'all' or a comma-separated subset of {LAYOUTS}, got {opts['layouts']!r}")
    result = evaluate(argv[0], max_turns=int(opts.get("turns", 40)), unseen_turns=int(opts.get("unseen_turns", 0)),
                      temperature=float(opts.get("temperature", 0.8)),
                      hours=float(opts["hours"]) if "hours" in opts else None,
                      corpus_seed=int(opts["corpus_seed"]) if "corpus_seed" in opts else None, layouts=layouts)
    out = Path(opts.get("out", "results/reference_model.json"))
    checkpoint.atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    print(json.dumps({k: result[k] for k in ("ground_truth", "with_context", "without_context")}, indent=2))


if __name__ == "__main__":
    main()
