"""Fine-tune a trained CSM on a folder of your own recordings: its audio decoder, all weights, or low-rank adapters.

    python -m csm_lib.finetune --data=my_voice                  # the audio decoder + the new speaker, 200 steps
    python -m csm_lib.finetune --data=my_voice --mode=full      # every weight
    python -m csm_lib.finetune --data=my_voice --mode=lora      # low-rank adapters (lora.py), merged at the end
    python -m csm_lib.finetune --help                           # every option
    make finetune DATA=my_voice [MODE=full|lora]

The folder is read by ``voice_folder.py`` (LJSpeech layout). Its clips get one speaker id: by
default the first id the base model never trained (the reference trained ids 0 and 1, so a new
voice is speaker 2), so the old voices keep theirs; a ``speaker`` column in ``metadata.csv``
chooses per clip. A tenth of the folder's conversations is held out to report a validation loss.

The step is the training step of ``train.py`` (``train.train_step``: the same loss, windows of
consecutive turns, compute amortization), on the folder's windows, from the base model's weights,
with a fresh warm-up and cosine decay (``train_codec.lr_at``). Which weights move is the ``mode``:

* ``decoder`` (the default): the audio decoder side and the new speaker's embedding (``freeze_to_decoder``). The
  backbone, which reads the text and picks codebook 0, keeps the base model's weights (only the new speaker's
  token embedding is new), so what it learnt about reading stays; the voice's fine acoustic detail (codebooks
  1..K-1) and its speaker token are learnt.
* ``full``: every weight. Ten minutes of a voice are learnt by heart, and reading new sentences is lost.
* ``lora``: rank-``rank`` adapters and the text embeddings (``lora.add_adapters``), merged into an ordinary
  checkpoint at the end.

``replay > 0`` draws that share of the training windows from the base model's own corpus (whole conversations of
its training split, at random), the usual remedy for forgetting; it needs that corpus on disk (the error says how
to build it). Chapter 13 measures each mode and replay on the folder's held-out clips and on held-out sentences;
the defaults are what won on the held-out clips.

Ten minutes of one voice are learnt by heart within a few hundred steps, so every ``eval_every`` steps (and at
step 0, the base model itself) the validation loss on the held-out clips is measured, and the final model is
the one of the lowest: early stopping, chosen on the folder's own held-out clips, never on a test.

Resumable: every ``ckpt_every`` steps the state (weights, adapters, AdamW) is written atomically
to ``<out>``; running the same command again continues from it (``--minutes`` bounds one sitting).
At the end ``<out>/model.safetensors`` (+ JSON sidecar with the base model's fingerprint, the
folder's content key and this run's settings, + tokenizer) is what ``load_generator`` loads:

    gen = load_generator("runs/finetune/model.safetensors")
    gen.generate("Hello there.", speaker=2, context=[])

It samples at the base model's temperature (recorded in the sidecar).

Explained in chapter 13 (``notebooks/13_your_voice.ipynb``).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from csm_lib import audio as A
from csm_lib import checkpoint, data, lora
from csm_lib import voice_folder as V
from csm_lib.dataset import ConversationWindows, encode_corpus, tokenize_turns
from csm_lib.generate import (
    REFERENCE_CODEC,
    REFERENCE_MODEL,
    REFERENCE_TEMPERATURE,
    SESAME_TEMPERATURE,
    load_codec,
    load_model,
    tokenizer_path,
    trained_speakers,
)
from csm_lib.progress import progress
from csm_lib.text import N_SPEAKERS, load_tokenizer
from csm_lib.train import TrainConfig, evaluate, load_state, make_optimizer, read_evals, save_state, train_step
from csm_lib.train_codec import lr_at

MODES = ("decoder", "full", "lora")
DECODER_SIDE = ("decoder", "projection", "audio_head")  # backbone state -> codebooks 1..K-1 (model.py)


@dataclass
class FinetuneConfig:
    data: str = ""
    base: str = str(REFERENCE_MODEL)
    codec: str = str(REFERENCE_CODEC)
    mode: str = "decoder"
    rank: int = 8
    alpha: float = 16.0
    speaker: int = -1
    group: int = 4
    replay: float = 0.0
    data_minutes: float = 0.0
    valid_share: float = 0.1
    steps: int = 200
    minutes: float = 0.0
    batch: int = 8
    lr: float = 0.0
    warmup: int = 30
    weight_decay: float = 0.0
    clip: float = 1.0
    eval_every: int = 25
    ckpt_every: int = 50
    log_every: int = 10
    seed: int = 0
    threads: int = 2
    out: str = "runs/finetune"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.steps < 1 or self.batch < 1:
            raise ValueError(f"steps ({self.steps}) and batch ({self.batch}) must be at least 1")
        if not 0 <= self.replay < 1:
            raise ValueError(f"replay must be in [0, 1) (a share of the training windows), got {self.replay}")
        if not 0 <= self.valid_share < 1:
            raise ValueError(f"valid_share must be in [0, 1), got {self.valid_share}")
        if self.rank < 1 or self.group < 1:
            raise ValueError(f"rank ({self.rank}) and group ({self.group}) must be at least 1")
        if self.mode == "decoder" and self.weight_decay:
            raise ValueError("mode=decoder trains one row of the text embeddings and keeps the others; weight decay "
                             f"would shrink those too: leave weight_decay at 0 (got {self.weight_decay})")
        if not -1 <= self.speaker < N_SPEAKERS:
            raise ValueError(f"speaker must be -1 (the first new id) or 0..{N_SPEAKERS - 1}, got {self.speaker}")

    @property
    def peak_lr(self) -> float:
        """``lr``, or the mode's default: adapters start at zero and take a larger step, all weights a smaller one."""
        return self.lr or {"decoder": 1e-3, "full": 3e-4, "lora": 2e-3}[self.mode]


HELP = {
    "data": "the folder of recordings (LJSpeech layout: metadata.csv and wavs/; voice_folder.py)",
    "base": "the model to fine-tune",
    "codec": "its codec (the one it was trained with)",
    "mode": "decoder: the audio decoder and the new speaker's embedding (the backbone reads as before); "
            "full: every weight; lora: low-rank adapters and the text embeddings (lora.py)",
    "rank": "lora: the adapters' rank r", "alpha": "lora: their scale alpha (the update is alpha/r * B A)",
    "speaker": "the speaker id of clips without a speaker column; -1: the first id the base model never trained",
    "group": "clips per conversation when metadata.csv has no conversation column",
    "replay": "share of training windows replayed from the base model's own corpus, so it keeps reading; 0: none",
    "data_minutes": "> 0: train on only the first clips adding up to this many minutes",
    "valid_share": "share of the folder's conversations held out for the validation loss",
    "steps": "optimizer steps", "minutes": "> 0: stop this sitting after this much training (resume: run again)",
    "batch": "windows per step", "lr": "peak learning rate; 0: 1e-3 (decoder), 3e-4 (full) or 2e-3 (lora)",
    "warmup": "warm-up steps", "weight_decay": "AdamW weight decay on matrices", "clip": "gradient-norm clip",
    "eval_every": "steps between validation losses (0: none); the final model is the step with the lowest",
    "ckpt_every": "steps between saved states",
    "log_every": "steps between log lines", "seed": "the batches' and dropout's seed",
    "threads": "torch CPU threads", "out": "run folder: states, log.csv, evals.jsonl, model.safetensors",
}


def train_settings(cfg: FinetuneConfig, base_meta: dict) -> TrainConfig:
    """The ``train.TrainConfig`` that ``train_step`` and ``evaluate`` read: the base's window, this run's step."""
    return TrainConfig(max_len=base_meta["train"]["max_len"], batch=cfg.batch, steps=cfg.steps, lr=cfg.peak_lr,
                       warmup=cfg.warmup, weight_decay=cfg.weight_decay, clip=cfg.clip, amp="fp32",
                       eval_every=cfg.eval_every, eval_batches=2, seed=cfg.seed, out=cfg.out,
                       text_input=base_meta["train"].get("text_input", "bpe"))


def folder_turns(cfg: FinetuneConfig, base_meta: dict, tokenizer, codec) -> tuple[list, list, dict]:
    """The folder's (train, valid) ``dataset.Turn``s and a description of the data for the sidecar."""
    speaker = cfg.speaker if cfg.speaker >= 0 else trained_speakers(base_meta)
    clips = V.read(cfg.data, speaker=speaker, group=cfg.group)
    if cfg.data_minutes > 0:
        clips = V.first_minutes(clips, cfg.data_minutes)
        if not clips:
            raise V.FolderError(f"{cfg.data}: its first clip is longer than data_minutes={cfg.data_minutes}")
    train_clips, valid_clips = V.split(clips, cfg.valid_share, cfg.seed)
    max_len = base_meta["train"]["max_len"]
    made = V.turns(clips, codec, cfg.codec, tokenizer, max_len, Path(cfg.out) / "cache")
    held = {c.id for c in valid_clips}
    train = [t for t in made if Path(t.row["wav"]).stem not in held]
    valid = [t for t in made if Path(t.row["wav"]).stem in held]
    info = {"folder": str(cfg.data), "content_key": V.content_key(clips), "clips": len(clips),
            "train_clips": len(train_clips), "valid_clips": len(valid_clips),
            "train_minutes": round(sum(A.duration(c.wav) for c in train_clips) / 60, 3),
            "speakers": sorted({c.speaker for c in clips}), "texts": [c.text for c in train_clips]}
    return train, valid, info


def freeze_to_decoder(model: torch.nn.Module, speaker_tokens: list[int]) -> dict[str, int]:
    """``mode=decoder``: freeze all but the decoder side (``DECODER_SIDE``) and the folder's speakers' rows of the
    text embeddings (their gradient masked to those rows; ``FinetuneConfig`` refuses weight decay in this mode,
    which would shrink the other rows). The backbone, its codebook-0 head and every other embedding keep the base
    model's weights, so what it learnt about reading stays; what changes is the speaker's token (which the backbone
    reads, so codebook 0 may change for that speaker) and how the audio decoder fills codebooks 1..K-1, the fine
    acoustic detail of the voice.
    Returns the parameter counts ``{"trainable", "frozen"}`` (of the embedding table, only those rows count)."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[0] in DECODER_SIDE)
    table = model.text_embeddings.weight
    table.requires_grad_(True)
    row = torch.zeros_like(table)
    row[speaker_tokens] = 1.0
    table.register_hook(lambda grad: grad * row)  # every other row (phones, the other speakers) stays as it was
    trainable = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in DECODER_SIDE)
    trainable += len(set(speaker_tokens)) * table.shape[1]
    return {"trainable": trainable, "frozen": sum(p.numel() for p in model.parameters()) - trainable}


class MissingCorpus(RuntimeError):
    """Replay was asked for, but the base model's corpus is not on disk."""


class OtherRun(ValueError):
    """The run folder holds a fine-tune with other settings: it cannot be resumed with these."""


def replay_corpus(cfg: FinetuneConfig, base_meta: dict) -> Path:
    """The base model's corpus folder, which replay reads; checked before any work is done."""
    t = base_meta["train"]
    corpus = data.corpus_of(t)
    folder = data.DEFAULT_ROOT / corpus.key()
    if not (folder / "manifest.jsonl").exists():
        build = (f"python -m csm_lib.data --hours {t['hours']:g} --seed {t['corpus_seed']} --text {t['text']} "
                 f"--unseen_share {t.get('unseen_share', 0.0):g}")
        raise MissingCorpus(
            f"replay={cfg.replay} draws windows from the base model's corpus ({data.describe(corpus)}), which is not "
            f"at {folder}: build it with `{build}` (about 45 s per hour of speech on 2 cores; `make corpus` builds "
            "another one; its codes are then encoded once, about as long again), or pass --replay=0 to train on the "
            "folder alone")
    return folder


def replay_turns(cfg: FinetuneConfig, base_meta: dict, tokenizer, codec, n_folder: int) -> tuple[list, dict]:
    """Whole conversations of the base model's training split, drawn at random (``cfg.seed``) until their
    windows are ``replay / (1 - replay)`` times the folder's ``n_folder``: ``replay`` of all windows."""
    folder = replay_corpus(cfg, base_meta)
    rows = data.load_manifest(folder)
    by_conv: dict[str, list[dict]] = {}
    for r in rows:
        if r["split"] == "train":
            by_conv.setdefault(r["conversation"], []).append(r)
    order = sorted(by_conv)
    random.Random(cfg.seed).shuffle(order)
    want, chosen, n = cfg.replay / (1 - cfg.replay) * n_folder, [], 0
    for conv in order:
        if n >= want:
            break
        chosen += by_conv[conv]
        n += len(by_conv[conv])  # one window per turn
    codes = encode_corpus(folder, rows, codec, checkpoint.fingerprint(cfg.codec))  # cached by training
    turns = tokenize_turns(chosen, codes, tokenizer)
    return turns, {"corpus": data.describe(data.corpus_of(base_meta["train"])),
                   "conversations": len({r["conversation"] for r in chosen}), "windows": n}


def finetune(cfg: FinetuneConfig) -> Path:
    """Fine-tune (module docstring); returns the path of the final ``model.safetensors``."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    if (out / "latest").exists():  # before any work: a folder resumes only its own fine-tune
        _check_resume(out, cfg)
    model, base_meta = load_model(cfg.base)
    if cfg.replay > 0:
        replay_corpus(cfg, base_meta)
    tokenizer = load_tokenizer(tokenizer_path(cfg.base))
    codec, _ = load_codec(cfg.codec)
    tcfg = train_settings(cfg, base_meta)
    train_turns, valid_turns, info = folder_turns(cfg, base_meta, tokenizer, codec)
    replayed, info["replay"] = [], None
    if cfg.replay > 0:  # the base model's own conversations beside the folder's (module docstring)
        replayed, info["replay"] = replay_turns(cfg, base_meta, tokenizer, codec, len(train_turns))
    train_w = ConversationWindows(train_turns + replayed, tcfg.max_len)
    valid_w = ConversationWindows(valid_turns, tcfg.max_len) if valid_turns else None  # valid_share=0: no loss
    torch.manual_seed(cfg.seed)
    model.train()
    if cfg.mode == "lora":
        counts = lora.add_adapters(model, cfg.rank, cfg.alpha)
    elif cfg.mode == "decoder":
        counts = freeze_to_decoder(model, [tokenizer.speaker_token(k) for k in info["speakers"]])
    else:
        counts = {"trainable": sum(p.numel() for p in model.parameters()), "frozen": 0}
    opt = make_optimizer(model, tcfg)
    resumed = (out / "latest").exists()
    start = load_state(out, model, opt) if resumed else 0
    rows, evals = _read_log(out, start) if resumed else ([], [])
    out.mkdir(parents=True, exist_ok=True)
    meta = {"kind": "csm", "config": base_meta["config"], "train": base_meta["train"],
            "data": base_meta["data"] | {"n_speakers": max(trained_speakers(base_meta), 1 + max(info["speakers"]))},
            "finetune": asdict(cfg) | {"peak_lr": cfg.peak_lr, "parameters": counts},
            "finetune_data": info, "base": checkpoint.model_record(cfg.base), "base_steps": base_meta.get("steps"),
            "temperature": base_meta.get("temperature") or (
                REFERENCE_TEMPERATURE if Path(cfg.base).resolve() == REFERENCE_MODEL.resolve() else SESAME_TEMPERATURE),
            "provenance": checkpoint.provenance("csm_lib.finetune", "cpu")}
    if start == 0 and valid_w is not None and cfg.eval_every:  # the base model on the held-out clips
        evals.append({"step": 0} | evaluate(model, valid_w, tcfg, torch.device("cpu")))
        _keep_best(out, model, evals)
    t0, step = time.perf_counter(), start
    seconds_before = float(rows[-1]["seconds"]) if rows else 0.0
    for step in progress(range(start, cfg.steps), desc=f"fine-tuning ({cfg.mode})", initial=start, total=cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.steps, tcfg)
        m = train_step(model, model, opt, None, train_w, step, tcfg, 0, 1, torch.device("cpu"))
        wall = time.perf_counter() - t0
        done = step + 1
        if step % cfg.log_every == 0 or done == cfg.steps:
            rows.append({"step": step, "loss": round(m["loss"], 5), "c0_loss": round(m["c0_loss"], 5),
                         "decoder_loss": round(m["decoder_loss"], 5), "seconds": round(seconds_before + wall, 1)})
        stop = cfg.minutes > 0 and wall > cfg.minutes * 60
        if valid_w is not None and cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps or stop):
            evals.append({"step": done} | evaluate(model, valid_w, tcfg, torch.device("cpu")))
            _keep_best(out, model, evals)
        if done % cfg.ckpt_every == 0 or done == cfg.steps or stop:
            _write_log(out, rows, evals)
            save_state(out, done, model, opt, meta)
        if stop:
            break
    final = step + 1 if cfg.steps > start else start
    if final < cfg.steps:
        print(f"stopped at step {final} of {cfg.steps}: run the same command again to go on")
        return out / f"state-{final:07d}.safetensors"
    best = min(evals, key=lambda e: e["valid_loss"]) if evals else None
    if best is not None:  # the weights of the lowest validation loss, not the last step's
        model.load_state_dict(checkpoint.load(out / "best")[0])
    if cfg.mode == "lora":
        lora.merge_adapters(model)
    result = meta | {"steps": final, "best_step": best["step"] if best else final,
                     "cpu_seconds": float(rows[-1]["seconds"]) if rows else 0.0,
                     "valid": best, "evals": evals, "history": rows}
    checkpoint.save(out / "model", model.state_dict(), result)
    tokenizer.save(tokenizer_path(out / "model.safetensors"))
    print(json.dumps({k: result[k] for k in ("steps", "cpu_seconds", "valid")}, indent=2))
    return out / "model.safetensors"


SITTING = ("minutes", "threads")  # settings a resumed sitting may change
LEGACY = {"replay": 0.0}  # settings a run made before they existed had (its sidecar lacks the key)
PATHS = ("data", "base", "codec", "out")


def _check_resume(out: Path, cfg: FinetuneConfig) -> None:
    """A run folder resumes only the fine-tune it holds: the same settings, but for how long a sitting lasts."""
    saved = LEGACY | checkpoint.load_meta(out / (out / "latest").read_text().strip())["finetune"]
    def same(k: str, v) -> bool:  # paths compare as the files they name ("./x" is "x")
        return Path(saved.get(k)).resolve() == Path(v).resolve() if k in PATHS else saved.get(k) == v

    differ = [f"{k}={saved.get(k)!r} there, {v!r} now" for k, v in asdict(cfg).items()
              if k not in SITTING and not same(k, v)]
    if differ:
        raise OtherRun(f"{out} holds a fine-tune with other settings ({'; '.join(differ)}): run it with its own "
                         "settings to resume it, or pass another --out")


def _keep_best(out: Path, model: torch.nn.Module, evals: list[dict]) -> None:
    """Write the weights to ``out/best`` when the latest validation loss is the lowest so far (ties: the earlier)."""
    if evals[-1]["valid_loss"] < min((e["valid_loss"] for e in evals[:-1]), default=float("inf")):
        checkpoint.save(out / "best", model.state_dict(), {"step": evals[-1]["step"]} | evals[-1])


def _write_log(out: Path, rows: list[dict], evals: list[dict]) -> None:
    """``log.csv`` and ``evals.jsonl``, each written atomically with the state they belong to."""
    def log(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, ["step", "loss", "c0_loss", "decoder_loss", "seconds"])
            w.writeheader()
            w.writerows(rows)
    checkpoint.atomic_write(out / "log.csv", log)
    checkpoint.atomic_write(out / "evals.jsonl", lambda tmp: Path(tmp).write_text(
        "".join(json.dumps(e) + "\n" for e in evals)))


def _read_log(out: Path, upto: int) -> tuple[list[dict], list[dict]]:
    """The log rows before step ``upto`` and the evaluations up to it (``train.read_evals``)."""
    with (out / "log.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) < upto]
    return rows, read_evals(out / "evals.jsonl", upto)


def parse(argv: list[str]) -> FinetuneConfig:
    """``--field=value`` options (``--help`` lists them) -> a checked ``FinetuneConfig``."""
    p = argparse.ArgumentParser(prog="python -m csm_lib.finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in fields(FinetuneConfig):
        p.add_argument(f"--{f.name}", type=type(f.default), default=f.default, help=HELP[f.name],
                       required=f.name == "data")
    return replace(FinetuneConfig(), **vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    cfg = parse(sys.argv[1:] if argv is None else argv)
    try:
        finetune(cfg)
    except (V.FolderError, MissingCorpus, OtherRun) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
