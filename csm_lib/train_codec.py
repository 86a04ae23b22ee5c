"""Train the codec and judge it.

    python -m csm_lib.train_codec prepare --hours=4     # corpus + phone labels (optional: train does it)
    python -m csm_lib.train_codec train --preset=reference --device=cuda --minutes=6
    python -m csm_lib.train_codec eval --checkpoint=checkpoints/codec_reference   # results/codec.json

Training data is a flite corpus built with ``corpus_seed=1``: its conversations are drawn
independently of the workbook's corpus (seed 0), whose held-out *test* split judges the
codec. Each step takes random ``crop_s`` crops of turns; the loss is the multi-resolution
mel/STFT reconstruction, the RVQ commitment, and the semantic loss (codebook 0 must predict
the forced-aligned phones, see ``semantic.py``).

Explained in chapter 03 (``notebooks/03_codec.ipynb``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from csm_lib import audio as A
from csm_lib import checkpoint, data, metrics, semantic
from csm_lib.codec import PRESETS, Codec, ReconstructionLoss
from csm_lib.generate import load_codec
from csm_lib.progress import progress


@dataclass
class TrainConfig:
    preset: str = "reference"
    hours: float = 4.0  # size of the training corpus
    corpus_seed: int = 1  # != 0: disjoint from the workbook's corpus and its test split
    steps: int = 0  # 0: measure the speed for 20 steps, then fit as many as `minutes` allows
    minutes: float = 5.0
    batch: int = 32
    crop_s: float = 2.56
    lr: float = 1e-3
    warmup: int = 200
    phone_weight: float = 1.0
    commit_weight: float = 1.0
    seed: int = 0
    log_every: int = 50  # steps between entries of the loss history kept in the sidecar
    device: str = "cpu"
    out: str = "checkpoints/codec_reference"
    data_root: str = str(data.DEFAULT_ROOT)


def parse_overrides(cfg, argv: list[str]):
    """nanoGPT-style ``--field=value`` overrides of a dataclass config, type-checked by field."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise ValueError(f"expected --field=value, got {arg!r}")
        key, value = arg[2:].split("=", 1)
        if key not in fields:
            raise ValueError(f"unknown option --{key}; known: {', '.join(sorted(fields))}")
        kind = type(getattr(cfg, key))
        changes[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return dataclasses.replace(cfg, **changes)


# ----------------------------------------------------------------------------- data

def _labels_job(job: tuple[str, str]) -> np.ndarray:
    wav, text = job
    return semantic.phone_labels(A.load(wav)[0], text)


def phone_labels_for(folder: Path, rows: list[dict], workers: int | None = None) -> dict[str, np.ndarray]:
    """Phone labels of every row, computed once (in parallel) and cached in ``folder/phones.npz``."""
    def align() -> dict[str, np.ndarray]:
        jobs = [(r["wav"], r["text"]) for r in rows]
        with mp.get_context("spawn").Pool(workers or os.cpu_count()) as pool:
            out = list(progress(pool.imap(_labels_job, jobs, chunksize=8), total=len(jobs), desc="aligning phones"))
        return {Path(r["wav"]).stem: lab for r, lab in zip(rows, out, strict=True)}

    return checkpoint.cached_npz(folder / "phones.npz", [Path(r["wav"]).stem for r in rows], align)


class Clips:
    """All turns of a split in memory, and random fixed-length crops of them."""

    def __init__(self, rows: list[dict], labels: dict[str, np.ndarray]):
        self.audio = [A.load(r["wav"])[0] for r in rows]
        self.labels = [torch.from_numpy(labels[Path(r["wav"]).stem]) for r in rows]
        lengths = torch.tensor([len(a) for a in self.audio], dtype=torch.float)
        self.weights = lengths / lengths.sum()
        self.hours = float(lengths.sum()) / A.SAMPLE_RATE / 3600

    def batch(self, n: int, crop: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, crop)`` audio and ``(n, crop // hop)`` phone labels, crops starting on a 10 ms frame."""
        hop = semantic.FRAME_HOP
        x = torch.zeros(n, crop)
        y = torch.full((n, crop // hop), semantic.IGNORE, dtype=torch.long)
        for i, c in enumerate(torch.multinomial(self.weights, n, replacement=True, generator=g).tolist()):
            a, lab = self.audio[c], self.labels[c]
            start = int(torch.randint(max(1, (len(a) - crop) // hop + 1), (1,), generator=g)) * hop
            seg = a[start:start + crop]
            x[i, : len(seg)] = seg
            ls = lab[start // hop: start // hop + crop // hop]
            y[i, : len(ls)] = ls
        return x, y


# ----------------------------------------------------------------------------- training

def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, total - cfg.warmup)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, t))))


def codec_loss(model: Codec, loss_fn: ReconstructionLoss, x: torch.Tensor, y: torch.Tensor,
               cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """All terms of the training loss for a batch of audio ``x`` (B, T) and phones ``y`` (B, M)."""
    out = model(x)
    rec = loss_fn(out.audio, x[:, : out.audio.shape[-1]])
    M = out.phone_logits.shape[1]
    if (y[:, :M] != semantic.IGNORE).any():
        phone = F.cross_entropy(out.phone_logits.reshape(-1, out.phone_logits.shape[-1]), y[:, :M].reshape(-1),
                                ignore_index=semantic.IGNORE)
    else:  # nothing labelled in this batch (cross-entropy would be nan)
        phone = out.phone_logits.sum() * 0
    total = rec["mel"] + rec["stft"] + cfg.commit_weight * out.commit_loss + cfg.phone_weight * phone
    return {"loss": total, "mel": rec["mel"], "stft": rec["stft"], "commit": out.commit_loss, "phone": phone}


def train(cfg: TrainConfig) -> Path:
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    origin = checkpoint.provenance("csm_lib.train_codec", device)  # the code as it is when training starts
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    ccfg = PRESETS[cfg.preset]
    corpus_cfg = data.CorpusConfig.for_hours(cfg.hours, seed=cfg.corpus_seed)
    folder = data.build(corpus_cfg, cfg.data_root)
    rows = data.load_manifest(folder)
    if cfg.phone_weight > 0:
        labels = phone_labels_for(folder, rows)
    else:  # no semantic loss: skip the (slow) forced alignment, every frame unlabelled
        labels = {Path(r["wav"]).stem: np.full(int(r["duration"] * 100) + 1, semantic.IGNORE) for r in rows}
    train_clips = Clips([r for r in rows if r["split"] == "train"], labels)
    valid_clips = Clips([r for r in rows if r["split"] == "valid"], labels)
    model = Codec(ccfg).to(device)
    loss_fn = ReconstructionLoss(ccfg.sample_rate).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.8, 0.99), weight_decay=0.01)
    crop = int(cfg.crop_s * ccfg.sample_rate) // ccfg.samples_per_frame * ccfg.samples_per_frame
    total, history, t0 = cfg.steps, [], time.perf_counter()
    step = 0
    bar = progress(range(total), desc="training codec") if total else None
    stopped_early, t_mark = False, t0
    while total == 0 or step < total:
        if time.perf_counter() - t0 > 1.25 * cfg.minutes * 60 and cfg.steps == 0:
            stopped_early, total = True, step  # the speed estimate was optimistic: keep the time budget
            break
        if total == 0 and step == 25:  # measured 20 steps (5 warm-up): fit the rest into `minutes`
            if device.type == "cuda":
                torch.cuda.synchronize()
            rate = 20 / (time.perf_counter() - t_mark)
            total = max(step + 1, int(rate * cfg.minutes * 60))
            bar = progress(range(step, total), desc="training codec", initial=step, total=total)
        if step == 5:
            t_mark = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total or 10**9, cfg)
        x, y = train_clips.batch(cfg.batch, crop, g)
        terms = codec_loss(model, loss_fn, x.to(device), y.to(device), cfg)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % cfg.log_every == 0 or step == total - 1:
            history.append({"step": step, "seconds": round(time.perf_counter() - t0, 1)}
                           | {k: round(float(v.detach()), 4) for k, v in terms.items()})
        step += 1
        if bar is not None and hasattr(bar, "update"):
            bar.update(1)
    wall = time.perf_counter() - t0
    valid = validate(model, loss_fn, valid_clips, crop, cfg, device)
    meta = {"kind": "codec", "config": asdict(ccfg), "train": asdict(cfg) | {"steps": total},
            "provenance": origin,
            "data": {"corpus": folder.name, "corpus_config": asdict(corpus_cfg), "train_hours": train_clips.hours,
                     "train_turns": len(train_clips.audio)},
            "steps": total, "stopped_early": stopped_early, "wall_time_s": round(wall, 1),
            "parameters": model.num_parameters(), "valid": valid, "history": history, "stored_dtype": "float16"}
    # float16 storage halves the file (the 20 MB budget); weights are used as float32 again on load
    path = checkpoint.save(cfg.out, model.state_dict(), meta, dtype=torch.float16)
    print(json.dumps({k: meta[k] for k in ("steps", "wall_time_s", "parameters", "valid")}, indent=2))
    return path


@torch.no_grad()
def validate(model: Codec, loss_fn: ReconstructionLoss, clips: Clips, crop: int, cfg: TrainConfig,
             device: torch.device, n_batches: int = 8) -> dict:
    """Mean loss terms on fixed crops of the validation turns (eval mode: all codebooks, no dropout)."""
    model.eval()
    g = torch.Generator().manual_seed(1234)
    sums: dict[str, float] = {}
    for _ in range(n_batches):
        x, y = clips.batch(cfg.batch, crop, g)
        for k, v in codec_loss(model, loss_fn, x.to(device), y.to(device), cfg).items():
            sums[k] = sums.get(k, 0.0) + float(v) / n_batches
    model.train()
    return {k: round(v, 4) for k, v in sums.items()}


# ----------------------------------------------------------------------------- evaluation

def mel_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean absolute difference of 80-band log-mel spectrograms (natural log of power) of two ``(T,)`` clips."""
    n = min(len(x), len(y))
    return float((A.mel_spectrogram(x[:n]) - A.mel_spectrogram(y[:n])).abs().mean())


def pesq_stoi(ref: torch.Tensor, deg: torch.Tensor) -> tuple[float, float]:
    """PESQ wide-band (1.0 to 4.6) and STOI (0 to 1) of ``deg`` against ``ref``, both 16 kHz ``(T,)``."""
    from pesq import pesq
    from pystoi import stoi

    n = min(len(ref), len(deg))
    r, d = ref[:n].numpy().astype(np.float64), deg[:n].numpy().astype(np.float64)
    try:
        p = float(pesq(A.SAMPLE_RATE, r, d, "wb"))
    except Exception:  # pesq raises on clips with no detectable speech
        p = float("nan")
    return p, float(stoi(r, d, A.SAMPLE_RATE, extended=False))


def judge_codec(model: Codec, rows: list[dict], n_qs: list[int]) -> dict:
    """Judge reconstructions of ``rows`` at each number of codebooks, plus the ground truth."""
    asr = metrics.transcriber()
    texts, gt_hyps, per_k = [], [], {k: {"hyps": [], "sim": [], "pesq": [], "stoi": [], "mel": []} for k in n_qs}
    for r in progress(rows, desc="judging codec", unit="turn"):
        x = A.load(r["wav"])[0]
        codes = model.encode(x[None])
        x = x[: codes.shape[-1] * model.cfg.samples_per_frame]  # the part the codec saw
        texts.append(r["text"])
        gt_hyps.append(asr(x, A.SAMPLE_RATE))
        emb_x = metrics.speaker_embedding(x, A.SAMPLE_RATE)
        for k in n_qs:
            y = model.decode(codes[:, :k])[0]
            acc = per_k[k]
            acc["hyps"].append(asr(y, A.SAMPLE_RATE))
            acc["sim"].append(metrics.similarity(emb_x, metrics.speaker_embedding(y, A.SAMPLE_RATE)))
            p, s = pesq_stoi(x, y)
            acc["pesq"].append(p)
            acc["stoi"].append(s)
            acc["mel"].append(mel_distance(x, y))
    out = {"ground_truth_wer": metrics.wer(texts, gt_hyps), "n_turns": len(rows)}
    for k, acc in per_k.items():
        name = "all_codebooks" if k == model.cfg.n_q else f"{k}_codebooks"
        out[name] = {"n_q": k, "kbps": model.cfg.bitrate(k), "wer": metrics.wer(texts, acc["hyps"]),
                     "sim": float(np.mean(acc["sim"])), "pesq": float(np.nanmean(acc["pesq"])),
                     "stoi": float(np.mean(acc["stoi"])), "mel_distance": float(np.mean(acc["mel"]))}
    return out


def measure_rtf(model: Codec, rows: list[dict], repeats: int = 3) -> dict:
    """Encode + decode time over audio time for every clip, one clip at a time; median of repeats."""
    clips = [A.load(r["wav"])[0][None] for r in rows]
    audio_s = sum(c.shape[-1] for c in clips) / A.SAMPLE_RATE
    model.decode(model.encode(clips[0]))  # warm-up
    totals = []
    for _ in range(repeats):
        t = time.perf_counter()
        for c in clips:
            model.decode(model.encode(c))
        totals.append(time.perf_counter() - t)
    return {"rtf": statistics.median(totals) / audio_s, "audio_s": audio_s, "threads": torch.get_num_threads(),
            "repeats": repeats}


def evaluate(path: str | Path, hours: float = 1.0, split: str = "test", n_qs: list[int] | None = None,
             turns: int | None = None) -> dict:
    """The numbers of ``results/codec.json`` for a checkpoint, on a split of the workbook's corpus."""
    model, meta = load_codec(path)
    folder = data.build(data.CorpusConfig.for_hours(hours))
    rows = data.load_manifest(folder, split)[:turns]
    n_qs = n_qs or sorted({1, 2, 4, model.cfg.n_q})
    result = {"checkpoint": str(Path(path).with_suffix(".safetensors")), "corpus": folder.name, "split": split,
              "frame_rate_hz": model.cfg.frame_rate, "codebook_size": model.cfg.codebook_size,
              "parameters": model.num_parameters(), "train_steps": meta["steps"],
              "train_wall_time_s": meta["wall_time_s"], "train_device": meta["provenance"]["device"]}
    result |= judge_codec(model, rows, n_qs)
    result["all_codebooks"] |= measure_rtf(model, rows)
    return result


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description="Train (train --field=value ...) or judge (eval) the codec.")
    p.add_argument("cmd", choices=["prepare", "train", "eval"])
    a, rest = p.parse_known_args(argv)
    if a.cmd == "prepare":  # build the training corpus and its phone labels, nothing else
        cfg = parse_overrides(TrainConfig(), rest)
        folder = data.build(data.CorpusConfig.for_hours(cfg.hours, seed=cfg.corpus_seed), cfg.data_root)
        phone_labels_for(folder, data.load_manifest(folder))
        print(f"prepared {folder}")
        return
    if a.cmd == "train":
        train(parse_overrides(TrainConfig(), rest))
        return
    e = argparse.ArgumentParser()
    e.add_argument("--checkpoint", default="checkpoints/codec_reference")
    e.add_argument("--out", default="results/codec.json")
    e.add_argument("--split", default="test")
    e.add_argument("--turns", type=int, default=None, help="judge only the first N turns (a quick look)")
    b = e.parse_args(rest)
    result = evaluate(b.checkpoint, split=b.split, turns=b.turns)
    Path(b.out).parent.mkdir(parents=True, exist_ok=True)
    Path(b.out).write_text(json.dumps(result | {"command": "python -m csm_lib.train_codec eval " + " ".join(rest)},
                                      indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
