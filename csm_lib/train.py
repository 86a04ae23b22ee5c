"""Train CSM on the corpus: ``python -m csm_lib.train [--field=value ...]`` (nanoGPT-style overrides).

    python -m csm_lib.train --preset=reference --hours=2 --steps=3000 --out=runs/reference
    python -m csm_lib.train --out=runs/reference --resume=true      # continue after a crash
    torchrun --nproc_per_node=2 -m csm_lib.train ...                  # data parallel (gloo on CPU)

One step:

1. the step's windows (``dataset.ConversationWindows.step_indices``: a pure function of seed and
   step) are split over ``accum`` micro-batches and over the DDP ranks;
2. each micro-batch runs forward under autocast (bf16 on CPU or GPU; fp16 + GradScaler on GPU) and
   backward; its loss is weighted by its share of the *global* number of target frames, so 1 rank
   with ``accum`` micro-batches, or N ranks, give the same gradient as one big batch;
3. clip the gradient norm, AdamW step with warm-up then cosine decay (``train_codec.lr_at``; with
   ``schedule_start`` both start afresh at that step, for a model continued from a finished one).

Every ``ckpt_every`` steps the run's full state (weights, AdamW moments, step) is written
atomically (``state-<step>.safetensors`` + JSON, then the ``latest`` pointer); ``--resume=true``
continues from it and truncates the CSV log (and ``evals.jsonl``) to that step, so a killed run resumed ends with the
loss curve of an uninterrupted one. ``--init=MODEL.safetensors`` continues instead from a finished
model (a committed checkpoint, when ``runs/`` is gone): its weights, step, log and evaluations carry
on; AdamW's moments start afresh, so the learning rate warms up again over ``warmup`` steps.
``--continue_from=MODEL.safetensors`` picks for you (``make model``, a recipe run over several
sittings): resume ``<out>`` if it holds a state, else continue from MODEL if the same recipe made it,
else start afresh (``resolve_start``); with ``--after=EARLIER.safetensors`` (a recipe's later stage,
e.g. more data) it continues from that model instead of starting afresh, once it has finished.
At the end, the weights and their provenance go to ``<out>/model.safetensors`` (+ ``.json``, which
records the codec's fingerprint, the speaker ids and ``max_len``), the tokenizer beside them;
``generate.load_generator`` loads them with their codec.

``--align=phone+ctc`` adds training-only alignment losses (``alignment.py``: ``phone``, ``ctc``, ``guided``)
with weight ``align_weight``; their heads are saved in the training state, never in ``model.safetensors``.
``--regroup=0.25`` regroups that share of each batch's windows so a speaker may talk twice in a row
(``dataset.ConversationWindows.training_batch``).

Every ``eval_every`` steps: validation losses, and with ``judge_turns > 0`` the metrics of a
``judge`` passed to ``train`` (``evaluate.judge_valid``: WER and SIM of generated valid turns;
this module does not import ``evaluate``).

Explained in chapter 07a (``notebooks/07a_training.ipynb``); chapter 07b trains the reference with it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from csm_lib import checkpoint, data
from csm_lib.alignment import FIRST_PHONE, REMEDIES, AlignmentLosses
from csm_lib.dataset import ConversationWindows, fingerprint, split_windows
from csm_lib.generate import load_codec, tokenizer_path
from csm_lib.model import CSM, PRESETS
from csm_lib.progress import progress
from csm_lib.seed_model import VARIANTS, SeedCSM
from csm_lib.text import TEXT_INPUTS, corpus_tokenizer
from csm_lib.train_codec import lr_at, parse_overrides


@dataclass
class TrainConfig:
    preset: str = "reference"  # model.PRESETS; codebooks and vocabularies come from the codec and tokenizer
    hours: float = 2.0  # corpus size
    corpus_seed: int = 1  # the codec's training corpus; its test split stays held out
    text: str = "templates"  # the corpus's sentences: data.CorpusConfig.text (templates | wordnet)
    unseen_share: float = 0.0  # wordnet: share of conversations in the unseen-words split
    text_input: str = "bpe"  # what the backbone reads: bpe | chars | phones (text.corpus_tokenizer)
    codec: str = "checkpoints/codec_reference.safetensors"
    max_len: int = 512  # positions per window (about 30 s of conversation)
    batch: int = 8  # windows per step (global: over all micro-batches and ranks)
    accum: int = 1  # micro-batches per step (gradient accumulation)
    steps: int = 2000
    minutes: float = 0.0  # > 0: stop (and save) after this much training time
    stop_step: int = 0  # > 0: stop (and save) after this step; the learning-rate schedule still runs to `steps`
    lr: float = 1e-3
    warmup: int = 100
    schedule_start: int = 0  # > 0: the warm-up and cosine decay start afresh at this step (a continued model)
    weight_decay: float = 0.1
    clip: float = 1.0
    amp: str = "bf16"  # bf16 | fp16 (CUDA only) | fp32
    autocast_cache: bool = True  # autocast reuses each weight's cast within the forward (no effect on the peak)
    checkpointing: bool = False  # gradient checkpointing in the backbone
    fused_adam: bool = False  # CUDA's fused AdamW: no parameter-sized temporaries in the step (budget.py)
    memory_cap_gb: float = 0.0  # > 0 (CUDA): the allocator may hold no more than this (an 8 GB card's budget)
    decoder_fraction: float = 1 / 16
    audio_dropout: float = 0.0  # model.CSMConfig.audio_dropout
    align: str = ""  # training-only alignment losses, "+"-joined: phone | ctc | guided (alignment.py)
    align_weight: float = 0.5  # weight of each alignment loss beside the CSM loss
    guided_layer: int = 1  # the backbone layer whose heads 0 and 1 the guided remedy pulls toward the aligned text
    regroup: float = 0.0  # share of training windows regrouped so a speaker talks twice in a row (dataset.py)
    variant: str = ""  # "" (CSM) or one of the seed's ideas wired into it: cross_modal | memory (seed_model.py)
    eval_every: int = 250
    eval_batches: int = 4
    judge_turns: int = 0  # > 0: each evaluation also judges this many generated valid turns (train(cfg, judge=...))
    ckpt_every: int = 250
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch CPU threads per process; 0: leave torch's default
    out: str = "runs/reference"
    resume: bool = False
    init: str = ""  # a finished model.safetensors to continue from (module docstring)
    continue_from: str = ""  # resume <out> if it has a state, else init from this model if it is this recipe's
    after: str = ""  # a later stage of a recipe: else init from this model, once it has finished its own schedule
    data_root: str = str(data.DEFAULT_ROOT)

    def __post_init__(self) -> None:
        if self.amp not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"amp must be bf16, fp16 or fp32, got {self.amp!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        if self.text_input not in TEXT_INPUTS:
            raise ValueError(f"text_input must be one of {TEXT_INPUTS}, got {self.text_input!r}")
        if self.variant and self.variant not in VARIANTS:
            raise ValueError(f"variant must be '' (plain CSM) or one of {VARIANTS}, got {self.variant!r}")
        if self.resume and self.init:
            raise ValueError("resume (from runs/<out>/latest) and init (from a finished model) exclude each other")
        if self.batch < 1 or self.accum < 1 or self.batch % self.accum:
            raise ValueError(f"batch ({self.batch}) must be a positive multiple of accum ({self.accum})")
        if any(r not in REMEDIES for r in self.remedies):
            raise ValueError(f"align must be '' or '+'-joined remedies of {REMEDIES}, got {self.align!r}")
        if self.align and self.text_input != "phones":
            raise ValueError("the alignment losses read the text as phones: use text_input=phones")
        if self.memory_cap_gb < 0:
            raise ValueError(f"memory_cap_gb must be 0 (no cap) or a size in GB, got {self.memory_cap_gb}")
        if (self.fused_adam or self.memory_cap_gb) and not self.device.startswith("cuda"):
            raise ValueError(f"fused_adam needs a CUDA device, and memory_cap_gb caps one (device={self.device!r}): "
                             "leave them false and 0 on the CPU")
        if not 0 <= self.regroup <= 1:
            raise ValueError(f"regroup must be a share in [0, 1], got {self.regroup}")

    @property
    def remedies(self) -> tuple[str, ...]:
        return tuple(r for r in self.align.split("+") if r)


# --- data ---------------------------------------------------------------------------------------
def load_data(cfg: TrainConfig):
    """The corpus, its tokenizer and codec tokens -> (train windows, valid windows, model config, info)."""
    corpus_cfg = data.corpus_of(asdict(cfg))
    folder = data.build(corpus_cfg, cfg.data_root)  # cached
    rows = data.load_manifest(folder)
    tokenizer = corpus_tokenizer(folder, kind=cfg.text_input)
    codec, _ = load_codec(cfg.codec)
    aligned = bool({"phone", "guided"} & set(cfg.remedies))
    windows = split_windows(folder, rows, codec, cfg.codec, tokenizer, cfg.max_len, aligned=aligned)
    base = PRESETS[cfg.preset]
    mcfg = replace(base, n_codebooks=codec.cfg.n_q, audio_vocab_size=codec.cfg.codebook_size,
                   text_vocab_size=tokenizer.vocab_size, decoder_fraction=cfg.decoder_fraction,
                   audio_dropout=cfg.audio_dropout,
                   backbone=replace(base.backbone, max_seq_len=max(base.backbone.max_seq_len, cfg.max_len)),
                   decoder=replace(base.decoder, max_seq_len=max(base.decoder.max_seq_len, codec.cfg.n_q)))
    info = {"corpus": folder.name, "corpus_config": asdict(corpus_cfg),
            "codec": cfg.codec, "codec_fingerprint": fingerprint(cfg.codec),
            "n_speakers": 1 + max(r["speaker"] for r in rows if r["split"] == "train"),  # ids 0..n-1 it trains
            "train_windows": len(windows["train"]),
            "valid_windows": len(windows["valid"]), "train_hours": round(sum(
                r["duration"] for r in rows if r["split"] == "train") / 3600, 3)}
    info["tokenizer"] = tokenizer
    return windows["train"], windows["valid"], mcfg, info


def make_optimizer(model: CSM, cfg: TrainConfig, extra: torch.nn.Module | None = None) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only. Its default (``foreach``) step computes
    ``sqrt(v)`` for all parameters at once: a parameter-sized fp32 temporary at the step, which
    ``fused_adam`` (one CUDA kernel per step) does without. ``extra``: training-only parameters
    (the alignment heads), optimised after the model's. Frozen parameters (``lora.py``) are left out."""
    params = [p for p in (*model.parameters(), *(extra.parameters() if extra is not None else ())) if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95),
                             fused=True if cfg.fused_adam else None)


# --- distributed --------------------------------------------------------------------------------
def world() -> tuple[int, int]:
    """(rank, world size), starting the gloo/nccl process group when run under torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), size) if size > 1 else (0, 1)


def all_sum(x: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(x)
    return x


# --- checkpoints --------------------------------------------------------------------------------
def save_state(out: Path, step: int, model: CSM, opt: torch.optim.Optimizer, meta: dict,
               extra: torch.nn.Module | None = None) -> Path:
    """Weights + AdamW state at ``step``, then the ``latest`` pointer: a crash leaves the old state usable.
    ``extra``: training-only modules (the alignment heads), saved as ``extra.*``."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"extra.{k}": v for k, v in (extra.state_dict() if extra is not None else {}).items()}
    opt_state = opt.state_dict()
    for i, s in opt_state["state"].items():
        for name, v in s.items():
            tensors[f"optim.{i}.{name}"] = v.reshape(1) if v.dim() == 0 else v
    path = checkpoint.save(out / f"state-{step:07d}", tensors,
                           meta | {"step": step, "param_groups": opt_state["param_groups"]})
    checkpoint.atomic_write(out / "latest", lambda tmp: Path(tmp).write_text(path.name + "\n"))
    for old in out.glob("state-*.safetensors"):  # keep only the newest state
        if old != path:
            old.unlink()
            old.with_suffix(".json").unlink(missing_ok=True)
    return path


def load_state(out: Path, model: CSM, opt: torch.optim.Optimizer, extra: torch.nn.Module | None = None) -> int:
    """Restore the state named by ``out/latest``; returns its step."""
    pointer = out / "latest"
    if not pointer.exists():
        raise FileNotFoundError(f"nothing to resume in {out}: no 'latest' state was written")
    tensors, meta = checkpoint.load(out / pointer.read_text().strip())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if extra is not None:
        extra.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("extra.")})
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v.reshape(()) if name == "step" else v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta["step"]


def read_log(path: Path, before: int) -> list[dict]:
    """The complete rows of a CSV log with ``step < before`` (a killed run may leave a torn last line).
    Alignment-loss columns may be empty: rows carried from a run without them."""
    if not path.exists():
        return []
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if all(r.get(k) not in (None, "") for k in LOG_FIELDS)]
    return [r for r in rows if int(r["step"]) < before]


def read_evals(path: Path, upto: int) -> list[dict]:
    """The evaluations in ``evals.jsonl`` at ``step <= upto`` (a torn last line is skipped)."""
    if not path.exists():
        return []
    evals = []
    for line in path.read_text().splitlines():
        try:
            evals.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [e for e in evals if e["step"] <= upto]


def total_seconds(history: list[dict]) -> float:
    """Training time over all sittings of a run: each resumed sitting's log restarts its clock at 0."""
    total, last = 0.0, 0.0
    for r in history:
        t = float(r["seconds"])
        if t < last:  # a new sitting
            total += last
        last = t
    return total + last


LOG_FIELDS = ["step", "lr", "loss", "c0_loss", "decoder_loss", "positions_per_s", "seconds"]


RECIPE_FIELDS = ("preset", "hours", "corpus_seed", "text", "unseen_share", "text_input", "codec", "max_len",
                 "batch", "steps", "lr", "warmup", "weight_decay", "decoder_fraction", "audio_dropout", "seed",
                 "schedule_start", "align", "align_weight", "guided_layer", "regroup")


def resolve_start(cfg: TrainConfig) -> TrainConfig:
    """``continue_from`` made concrete: ``resume``, ``init`` or neither (module docstring)."""
    if not cfg.continue_from:
        return cfg
    done = replace(cfg, continue_from="")
    if (Path(cfg.out) / "latest").exists():
        return replace(done, resume=True)
    sidecar = Path(cfg.continue_from).with_suffix(".json")
    if sidecar.exists():
        meta = json.loads(sidecar.read_text())
        same = all(meta.get("train", {}).get(f, getattr(TrainConfig, f)) == getattr(cfg, f) for f in RECIPE_FIELDS)
        if same:  # a finished run (steps reached) continues with no step left: it is saved again as it is
            return replace(done, init=cfg.continue_from)
    if cfg.after:  # a later stage (make model: more data) starts where the finished earlier stage ended
        sidecar = Path(cfg.after).with_suffix(".json")
        meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        if meta.get("steps", -1) < meta.get("train", {}).get("steps", 0):
            raise SystemExit(f"{cfg.after} has not finished its schedule ({meta.get('steps', 'no model yet')} of "
                             f"{meta.get('train', {}).get('steps', '?')} steps): train the earlier stage first")
        return replace(done, after="", init=cfg.after)
    return done


def init_from(path: str | Path, model: CSM) -> tuple[int, list[dict], list[dict]]:
    """Load a finished model's weights into ``model``: returns its (steps, log rows, evaluations).

    A ``SeedCSM`` may start from a plain CSM: its seed layer (``cross_modal.*`` or ``memory.*``)
    keeps its fresh initialisation."""
    tensors, meta = checkpoint.load(Path(path).with_suffix(""))
    own = model.state_dict()
    fresh = {k for k in own if isinstance(model, SeedCSM) and k.split(".")[0] in VARIANTS and k not in tensors}
    missing = (set(own) ^ set(tensors)) - fresh
    if missing or any(tensors[k].shape != v.shape for k, v in own.items() if k not in fresh):
        raise ValueError(f"{path} does not fit this model (preset, codec or text input differ): "
                         f"{sorted(missing)[:5] or 'tensor shapes differ'}")
    model.load_state_dict(tensors, strict=not fresh)
    return meta["steps"], meta.get("history", []), meta.get("evals", [])


# --- one step ------------------------------------------------------------------------------------
def autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "fp32":
        return contextlib.nullcontext()
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs a CUDA device (GradScaler); use bf16 on the CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16,
                          cache_enabled=cfg.autocast_cache)


def train_step(model, raw: CSM, opt, scaler, windows: ConversationWindows, step: int, cfg: TrainConfig,
               rank: int, world_size: int, device: torch.device, aligner: AlignmentLosses | None = None) -> dict:
    """One optimizer step over the step's global batch; returns the global mean losses.

    ``aligner``: training-only alignment losses, added with weight ``cfg.align_weight``, frame-weighted
    like codebook 0's."""
    indices = windows.step_indices(step, cfg.batch, cfg.seed)[rank::world_size]
    micro = [indices[i::cfg.accum] for i in range(cfg.accum)]
    regroup = torch.Generator().manual_seed(cfg.seed * 15_485_863 + step)  # a pure function of (seed, step)
    batches = [windows.training_batch(m, cfg.regroup, regroup) for m in micro if m]
    n_audio = [int(raw.audio_targets(mask).sum()) for _, mask, _ in batches]
    n_dec = [raw.decoder_frames(n) for n in n_audio]
    total = all_sum(torch.tensor([sum(n_audio), sum(n_dec)], dtype=torch.float64))  # global target frames
    sums = torch.zeros(3, dtype=torch.float64)  # c0, decoder (frame-weighted), positions
    aux_sums = dict.fromkeys(cfg.remedies, 0.0)
    g = torch.Generator().manual_seed(cfg.seed * 7_919 + step * 104_729 + rank)
    for i, (frames, mask, align) in enumerate(batches):
        sync = i == len(batches) - 1 or not isinstance(model, torch.nn.parallel.DistributedDataParallel)
        with (contextlib.nullcontext() if sync else model.no_sync()), autocast(cfg, device):
            out = model(frames.to(device), mask.to(device), generator=g)
            aux = aligner(out["hidden"], frames.to(device), mask.to(device),
                          None if align is None else align.to(device), out["targets"]) if aligner else {}
        # each micro-batch's share of the global mean; DDP averages over ranks, so scale by world size
        c0 = out["c0_loss"] + cfg.align_weight * sum(aux.values())
        loss = (c0 * n_audio[i] / total[0] + out["decoder_loss"] * n_dec[i] / total[1]) * world_size
        (scaler.scale(loss) if scaler else loss).backward()
        sums += torch.tensor([out["c0_loss"].item() * n_audio[i], out["decoder_loss"].item() * n_dec[i],
                              float(mask.any(-1).sum())], dtype=torch.float64)
        for name, value in aux.items():
            aux_sums[name] += value.item() * n_audio[i]
    if scaler:
        scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.clip)
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    sums = all_sum(sums)
    c0, dec = float(sums[0] / total[0]), float(sums[1] / total[1])
    aux_means = {f"{name}_loss": v / float(total[0]) for name, v in aux_sums.items()}  # this rank's frames
    return {"loss": c0 + dec, "c0_loss": c0, "decoder_loss": dec, "positions": float(sums[2])} | aux_means


@torch.no_grad()
def evaluate(model: CSM, windows: ConversationWindows, cfg: TrainConfig, device: torch.device) -> dict:
    """Validation losses over fixed windows, with the audio decoder on *every* frame."""
    model.eval()
    c0 = dec = n = 0.0
    for b in range(cfg.eval_batches):
        idx = [(b * cfg.batch + i) % len(windows) for i in range(cfg.batch)]
        frames, mask = windows.batch(idx)
        with autocast(cfg, device):
            out = model(frames.to(device), mask.to(device), generator=torch.Generator().manual_seed(b),
                        decoder_fraction=1.0)
        c0 += float(out["c0_loss"]) * out["audio_frames"]
        dec += float(out["decoder_loss"]) * out["audio_frames"]
        n += out["audio_frames"]
    model.train()
    return {"valid_c0_loss": round(c0 / n, 4), "valid_decoder_loss": round(dec / n, 4),
            "valid_loss": round((c0 + dec) / n, 4)}


# --- the loop ---------------------------------------------------------------------------------------
def train(cfg: TrainConfig, judge: Callable[[CSM, dict], dict] | None = None) -> Path:
    """Train (module docstring); returns the path of the final ``model.safetensors``.

    ``judge(model, train_settings)``, called at each evaluation when ``cfg.judge_turns > 0``, adds
    its metrics to the evaluation's (``evaluate.judge_valid``: WER and SIM of generated valid turns).
    Training does not judge speech itself, so from the command line ``judge_turns`` must stay 0.
    """
    if cfg.judge_turns and judge is None:
        raise ValueError(f"judge_turns={cfg.judge_turns} needs a judge: call train(cfg, judge=evaluate.judge_valid) "
                         f"from Python, or leave judge_turns at 0")
    cfg = resolve_start(cfg)
    rank, world_size = world()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device if cfg.device != "cuda" else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    if cfg.memory_cap_gb:  # an out-of-memory error past the cap, as on a card of that size
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cfg.memory_cap_gb * 1e9 / total), device)
    out = Path(cfg.out)
    origin = checkpoint.provenance("csm_lib.train", device)
    train_w, valid_w, mcfg, info = load_data(cfg)
    tokenizer = info.pop("tokenizer")
    torch.manual_seed(cfg.seed)
    raw = (SeedCSM(mcfg, cfg.variant) if cfg.variant else CSM(mcfg)).to(device)
    raw.backbone.gradient_checkpointing = cfg.checkpointing
    aligner = None
    if cfg.align:
        if getattr(tokenizer, "tokens", [None] * (FIRST_PHONE + 1))[FIRST_PHONE - 1] != "!":
            raise ValueError("the alignment losses expect the PhoneTokenizer's vocabulary layout")
        aligner = AlignmentLosses(mcfg.backbone.dim, mcfg.text_vocab_size, cfg.remedies, cfg.guided_layer).to(device)
        aligner.attach(raw)
    opt = make_optimizer(raw, cfg, aligner)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
    start, history, evals = 0, [], []
    if cfg.resume:
        start = load_state(out, raw, opt, aligner)
        history, evals = read_log(out / "log.csv", start), read_evals(out / "evals.jsonl", start)
    elif cfg.init:
        start, history, evals = init_from(cfg.init, raw)
    warm_start = start if cfg.init else None
    model = torch.nn.parallel.DistributedDataParallel(raw) if world_size > 1 else raw
    log_path = out / "log.csv"
    fields = LOG_FIELDS + [f"{r}_loss" for r in cfg.remedies]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        with log_path.open("w", newline="") as f:  # rewrite: drop rows after the resumed step
            w = csv.DictWriter(f, fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(history)
        checkpoint.atomic_write(out / "evals.jsonl",  # likewise: the evaluations carried on, none after the step
                                lambda tmp: Path(tmp).write_text("".join(json.dumps(e) + "\n" for e in evals)))
    meta = {"kind": "csm", "config": asdict(mcfg), "train": asdict(cfg), "data": info, "provenance": origin,
            "world_size": world_size, "init_from": checkpoint.model_record(cfg.init) if cfg.init else None}
    t0, positions, wall = time.perf_counter(), 0.0, 0.0
    bar = progress(range(start, cfg.steps), desc="training CSM", disable=rank != 0)
    step = start
    for step in bar:
        for group in opt.param_groups:
            rewarm = 1.0 if warm_start is None or cfg.schedule_start else min(1.0, (step - warm_start + 1) / cfg.warmup)
            group["lr"] = lr_at(step - cfg.schedule_start, cfg.steps - cfg.schedule_start, cfg) * rewarm
        m = train_step(model, raw, opt, scaler, train_w, step, cfg, rank, world_size, device, aligner)
        positions += m["positions"]
        wall = time.perf_counter() - t0
        if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps - 1):
            row = {"step": step, "lr": f"{opt.param_groups[0]['lr']:.6g}", "loss": f"{m['loss']:.6f}",
                   "c0_loss": f"{m['c0_loss']:.6f}", "decoder_loss": f"{m['decoder_loss']:.6f}",
                   "positions_per_s": f"{positions / max(wall, 1e-9):.1f}", "seconds": f"{wall:.1f}"}
            row |= {f"{r}_loss": f"{m[f'{r}_loss']:.6f}" for r in cfg.remedies}
            with log_path.open("a", newline="") as f:
                csv.DictWriter(f, fields, extrasaction="ignore").writerow(row)
        done = step + 1
        stop = (cfg.minutes > 0 and wall > cfg.minutes * 60) or 0 < cfg.stop_step <= done
        if rank == 0 and cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps or stop):
            judged = judge(raw, asdict(cfg)) if cfg.judge_turns else {}
            evals.append({"step": done} | evaluate(raw, valid_w, cfg, device) | judged)
            with (out / "evals.jsonl").open("a") as f:
                f.write(json.dumps(evals[-1]) + "\n")
        if rank == 0 and (done % cfg.ckpt_every == 0 or done == cfg.steps or stop):
            save_state(out, done, raw, opt, meta, aligner)
        if stop:
            break
    final = step + 1 if cfg.steps > start else start
    if rank == 0:
        result = meta | {"steps": final, "wall_time_s": round(wall, 1), "parameters": raw.num_parameters(),
                         "valid": evals[-1] if evals else None, "evals": evals,
                         "history": read_log(log_path, final)}
        checkpoint.save(out / "model", raw.state_dict(), result)
        tokenizer.save(tokenizer_path(out / "model.safetensors"))  # the model's text vocabulary travels with it
        print(json.dumps({k: result[k] for k in ("steps", "wall_time_s", "valid")}, indent=2))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return out / "model.safetensors"


def main(argv: list[str] | None = None) -> None:
    cfg = parse_overrides(TrainConfig(), sys.argv[1:] if argv is None else argv)
    train(cfg)


if __name__ == "__main__":
    main()
