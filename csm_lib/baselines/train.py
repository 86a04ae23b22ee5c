"""Train the latency table's other systems on the reference CSM's own data (chapter 09).

    python -m csm_lib.baselines.train --system=valle --minutes=15     # -> runs/valle/model.safetensors
    python -m csm_lib.baselines.train --system=audiolm --minutes=15
    python -m csm_lib.baselines.train --system=textlm --minutes=4     # the full-turn column's reply writer

* **Same data**: the corpus, codec, text input (phones) and splits recorded in the reference CSM's
  sidecar (``train.load_data`` with its recipe), taken turn by turn: the turn's text ids ``(P,)``
  and its codes ``(K, N)`` (without CSM's end-of-speech frame: these models end with ``END``).
* **Same size**: ``PRESETS`` give each system about the reference CSM's parameter count (``sizes``).
* **All stages at once**: a system's stages share one AdamW and one loss (their sum), so a
  wall-clock budget is the system's, not a stage's.
* Runs resume: the full state is saved every ``ckpt_every`` steps and at the end
  (``train.save_state``); a run started again with the same ``--out`` continues where it stopped.

The text LM writes the reply to the user's line, character by character (prefix: the user's turn,
``[speaker]`` of the reply; targets: the reply's characters, then ``END``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from csm_lib import checkpoint
from csm_lib.backbone import TransformerConfig
from csm_lib.baselines.audiolm import COARSE, FINE, AudioLM, AudioLMConfig
from csm_lib.baselines.token_lm import TokenLM, TokenLMConfig
from csm_lib.baselines.valle import VallE, VallEConfig
from csm_lib.outputs import REPO
from csm_lib.progress import progress
from csm_lib.text import TextTokenizer, load_tokenizer
from csm_lib.train import RECIPE_FIELDS, TrainConfig, load_data, load_state, save_state
from csm_lib.train_codec import lr_at, parse_overrides

SYSTEMS = ("valle", "audiolm", "textlm")
REFERENCE = "checkpoints/csm_reference.safetensors"
CHECKPOINTS = {name: REPO / "checkpoints" / f"{name}_reference.safetensors" for name in SYSTEMS}  # make baselines


def T(dim: int, layers: int, hidden: int, heads: int = 8, kv: int = 2) -> TransformerConfig:
    return TransformerConfig(dim, layers, heads, kv, hidden, max_seq_len=2048)


def configs(text_vocab: int, K: int = 8, V: int = 1024) -> dict:
    """Each system's size, chosen to match the reference CSM's parameter count (``sizes``)."""
    return {
        "valle": VallEConfig(ar=T(256, 3, 768), nar=T(256, 2, 768), n_codebooks=K, audio_vocab_size=V,
                             text_vocab_size=text_vocab),
        "audiolm": AudioLMConfig(semantic=T(192, 4, 576), coarse=T(192, 3, 576), fine=T(192, 3, 576),
                                 n_codebooks=K, audio_vocab_size=V, text_vocab_size=text_vocab),
    }


def build(system: str, config: dict) -> torch.nn.Module:
    """A model of ``system`` from its config as saved in a sidecar (nested dicts)."""
    def t(d: dict) -> TransformerConfig:
        return TransformerConfig(**{**d, "rope_scaling": None})
    if system == "valle":
        return VallE(VallEConfig(**{**config, "ar": t(config["ar"]), "nar": t(config["nar"])}))
    if system == "audiolm":
        return AudioLM(AudioLMConfig(**{**config, **{k: t(config[k]) for k in ("semantic", "coarse", "fine")}}))
    if system == "textlm":
        return TokenLM(TokenLMConfig(**{**config, "body": t(config["body"])}))
    raise ValueError(f"unknown system {system!r}; choose from {SYSTEMS}")


def load(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """A trained baseline (``kind`` in its sidecar) in eval mode, and its sidecar."""
    state, meta = checkpoint.load(path)
    if meta.get("kind") not in SYSTEMS:
        raise ValueError(f"{path} is not a baseline checkpoint (kind={meta.get('kind')!r}; expected one of {SYSTEMS})")
    model = build(meta["kind"], meta["config"])
    model.load_state_dict(state)
    return model.eval(), meta


@dataclass
class BaselineConfig:
    system: str = "valle"
    reference: str = REFERENCE  # the CSM whose corpus, codec and text input are used
    minutes: float = 15.0  # wall-clock budget of this sitting (0: until ``steps``)
    steps: int = 20_000  # the learning-rate schedule's length
    batch: int = 8  # turns per step
    max_frames: int = 160  # longer turns are left out of training (12.8 s)
    lr: float = 1.5e-3
    warmup: int = 100
    weight_decay: float = 0.1
    clip: float = 1.0
    eval_every: int = 250
    ckpt_every: int = 250
    seed: int = 0
    threads: int = 2
    out: str = ""  # default runs/<system>

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise ValueError(f"unknown system {self.system!r}; choose from {SYSTEMS}")


# --- data ---------------------------------------------------------------------------------------
def reference_recipe(reference: str | Path) -> TrainConfig:
    """The reference CSM's data recipe (corpus, codec, text input), from its sidecar."""
    meta = json.loads(Path(reference).with_suffix(".json").read_text())
    keep = {k: meta["train"][k] for k in (*RECIPE_FIELDS, "data_root") if k in meta["train"]}
    return replace(TrainConfig(), **keep)


def turn_codes(turn) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``dataset.Turn`` -> its text ids ``(P,)`` and codes ``(K, N)`` (no end-of-speech frame)."""
    K = turn.frames.shape[1] - 1
    text = turn.frames[turn.mask[:, K], K]
    audio = turn.frames[turn.mask[:, :K].all(-1), :K][:-1]  # (N, K): drop the end-of-speech frame
    return text, audio.T.contiguous()


def load_turns(cfg: BaselineConfig) -> tuple[dict[str, list], dict]:
    """Train and valid turns of the reference's corpus: ``{split: [(text, codes, prev_text, turn)]}``."""
    train_w, valid_w, mcfg, info = load_data(reference_recipe(cfg.reference))
    info.pop("tokenizer")  # the CSM's (phones); baselines read the same ids, the text LM has its own
    splits = {}
    for name, w in (("train", train_w), ("valid", valid_w)):
        rows = []
        for conv in w.conversations:
            for i, t in enumerate(conv):
                text, codes = turn_codes(t)
                if 0 < codes.shape[1] <= cfg.max_frames:
                    rows.append((text, codes, conv[i - 1] if i else None, t))
        splits[name] = rows
    info["n_codebooks"], info["audio_vocab_size"] = mcfg.n_codebooks, mcfg.audio_vocab_size
    info["text_vocab_size"] = mcfg.text_vocab_size
    return splits, info


def pad(seqs: list[torch.Tensor], left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D sequences -> ``(B, max len)`` zero-padded on the right (or left), and their lengths ``(B,)``."""
    n = max(len(s) for s in seqs)
    out = torch.zeros(len(seqs), n, dtype=torch.long)
    for i, s in enumerate(seqs):
        if left:
            out[i, n - len(s):] = s
        else:
            out[i, : len(s)] = s
    return out, torch.tensor([len(s) for s in seqs])


def audio_batch(rows: list) -> dict:
    """Turns -> text right- and left-padded, codes ``(B, K, N)`` right-padded, lengths."""
    text, text_len = pad([r[0] for r in rows])
    n = torch.tensor([r[1].shape[1] for r in rows])
    codes = torch.zeros(len(rows), rows[0][1].shape[0], int(n.max()), dtype=torch.long)
    for i, r in enumerate(rows):
        codes[i, :, : r[1].shape[1]] = r[1]
    return {"text": text, "text_left": pad([r[0] for r in rows], left=True)[0], "text_len": text_len,
            "codes": codes, "n": n}


def flat(codes: torch.Tensor) -> torch.Tensor:
    """``(B, k, N)`` -> ``(B, k*N)``: frame 1's k codes, then frame 2's, ... (``audiolm.flatten`` per row)."""
    return codes.transpose(1, 2).reshape(codes.shape[0], -1)


def loss(model: torch.nn.Module, system: str, b: dict, g: torch.Generator | None = None) -> dict:
    """The system's loss on batch ``b``: the sum of its stages' mean cross-entropies (and each one)."""
    if system == "valle":
        parts = {"ar": model.ar(b["text"], b["text_len"], b["codes"][:, 0], b["n"]),
                 "nar": model.nar(b["text_left"], b["text_len"], b["codes"], b["n"], g)}
    elif system == "audiolm":
        c, n = b["codes"], b["n"]
        coarse = flat(c[:, list(COARSE)])
        parts = {"semantic": model.semantic(b["text"], b["text_len"], c[:, 0], n),
                 "coarse": model.coarse(c[:, 0], n, model.coarse.flat_ids(coarse), len(COARSE) * n, end=False),
                 "fine": model.fine(model.coarse.flat_ids(coarse), len(COARSE) * n,
                                    model.fine.flat_ids(flat(c[:, list(FINE)])), len(FINE) * n, end=False)}
    else:
        parts = {"text": model(b["prefix"], b["prefix_len"], b["targets"], b["target_len"])}
    return {"loss": sum(parts.values())} | parts


def reply_prefix(tok: TextTokenizer, prev_text: str, prev_speaker: int, speaker: int) -> list[int]:
    """The text LM's prompt: the user's turn, then ``<bos>[speaker]`` of the reply to write."""
    return tok.encode(prev_text, prev_speaker) + [tok.bos_id, tok.speaker_token(speaker)]


SENTENCE_END = ".?!"


def write_reply(lm: TokenLM, tok: TextTokenizer, user_text: str, user_speaker: int, speaker: int,
                max_chars: int = 160) -> dict:
    """The text LM's reply (greedy), with the seconds to its first sentence's end and to its end."""
    prefix = torch.tensor([reply_prefix(tok, user_text, user_speaker, speaker)])
    t0, first = time.perf_counter(), None
    chars: list[str] = []

    def seen(i: int, code: torch.Tensor) -> None:
        nonlocal first
        chars.append(tok.decode([int(code)]))
        if first is None and chars[-1] in SENTENCE_END and len("".join(chars).strip()) > 1:
            first = time.perf_counter() - t0

    lm.generate(prefix, max_chars, temperature=0, on_target=seen)
    total = time.perf_counter() - t0
    text = "".join(chars).strip() or "yes."
    cut = next((i + 1 for i, c in enumerate(text) if c in SENTENCE_END and i > 0), len(text))
    return {"text": text, "first_sentence": text[:cut].strip(), "first_s": first if first is not None else total,
            "total_s": total}


def text_batch(rows: list, tok: TextTokenizer) -> dict:
    """(user turn, reply) pairs -> the text LM's prefix and target characters."""
    prefix = [torch.tensor(reply_prefix(tok, r[2].text, r[2].speaker, r[3].speaker)) for r in rows]
    targets = [torch.tensor(tok.encode(r[3].text, r[3].speaker)[2:-1]) for r in rows]  # no <bos>[spk], <eos>
    (p, pl), (t, tl) = pad(prefix), pad(targets)
    return {"prefix": p, "prefix_len": pl, "targets": t, "target_len": tl}


# --- training ---------------------------------------------------------------------------------------
def train(cfg: BaselineConfig) -> Path:
    """Train ``cfg.system`` for ``cfg.minutes`` (resuming ``out`` if it holds a state); returns model.safetensors."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out or f"runs/{cfg.system}")
    out.mkdir(parents=True, exist_ok=True)
    splits, info = load_turns(cfg)
    tok = None
    if cfg.system == "textlm":  # a character vocabulary of the training text
        tok = TextTokenizer.train([r[3].text for r in splits["train"]], vocab_size=0)
        for k in splits:
            splits[k] = [r for r in splits[k] if r[2] is not None]
        mcfg = TokenLMConfig(T(192, 3, 576), tok.vocab_size, tok.vocab_size)
        model = TokenLM(mcfg)
    else:
        mcfg = configs(info["text_vocab_size"], info["n_codebooks"], info["audio_vocab_size"])[cfg.system]
        model = build(cfg.system, asdict(mcfg))
    torch.manual_seed(cfg.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    start = load_state(out, model, opt) if (out / "latest").exists() else 0
    meta = {"kind": cfg.system, "config": asdict(mcfg), "train": asdict(cfg), "data": info,
            "provenance": checkpoint.provenance("csm_lib.baselines.train", "cpu")}
    previous = json.loads((out / "progress.json").read_text()) if start and (out / "progress.json").exists() else {}
    wall0, evals = previous.get("wall_time_s", 0.0), previous.get("evals", [])

    def batch(rows: list) -> dict:
        return text_batch(rows, tok) if tok else audio_batch(rows)

    train_rows, valid_rows = splits["train"], splits["valid"]
    g_valid = torch.Generator().manual_seed(1)
    valid = [batch([valid_rows[i] for i in torch.randint(len(valid_rows), (cfg.batch,), generator=g_valid)])
             for _ in range(4)]

    def evaluate(step: int) -> dict:
        model.eval()
        with torch.no_grad():
            parts = [loss(model, cfg.system, b, torch.Generator().manual_seed(i)) for i, b in enumerate(valid)]
        model.train()
        return {"step": step} | {k: round(sum(float(p[k]) for p in parts) / len(parts), 4) for k in parts[0]}

    model.train()
    t0, step = time.perf_counter(), start
    bar = progress(range(start, cfg.steps), desc=f"training {cfg.system}")
    for step in bar:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        rows = [train_rows[i] for i in torch.randint(len(train_rows), (cfg.batch,), generator=g)]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.steps, cfg)
        parts = loss(model, cfg.system, batch(rows), g)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        done, wall = step + 1, time.perf_counter() - t0
        stop = cfg.minutes > 0 and wall > cfg.minutes * 60
        if done % cfg.eval_every == 0 or stop or done == cfg.steps:
            evals.append(evaluate(done))
            print(json.dumps(evals[-1] | {"train_loss": round(parts["loss"].item(), 4)}), flush=True)
        if done % cfg.ckpt_every == 0 or stop or done == cfg.steps:
            save_state(out, done, model, opt, meta)
            checkpoint.atomic_write(out / "progress.json", lambda tmp, w=wall: Path(tmp).write_text(
                json.dumps({"wall_time_s": round(wall0 + w, 1), "evals": evals})))
        if stop:
            break
    result = meta | {"steps": step + 1, "wall_time_s": round(wall0 + time.perf_counter() - t0, 1),
                     "parameters": sum(p.numel() for p in model.parameters()), "valid": evals[-1] if evals else None,
                     "evals": evals}
    path = checkpoint.save(out / "model", model.state_dict(), result, dtype=torch.bfloat16)
    if tok is not None:
        tok.save(out / "model.tokenizer.json")
    print(json.dumps({k: result[k] for k in ("steps", "wall_time_s", "parameters", "valid")}))
    return path


def sizes(text_vocab: int = 72) -> dict[str, int]:
    """Parameter counts of the baselines at ``configs``' sizes."""
    return {name: sum(p.numel() for p in build(name, asdict(c)).parameters())
            for name, c in configs(text_vocab).items()}


def load_text_lm(path: str | Path) -> tuple[TokenLM, TextTokenizer, dict]:
    model, meta = load(path)
    return model, load_tokenizer(Path(path).with_suffix(".tokenizer.json")), meta


def main(argv: list[str] | None = None) -> None:
    train(parse_overrides(BaselineConfig(), sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
