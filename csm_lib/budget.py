"""How much GPU memory training CSM takes: an analytic model, checked against measurement.

Training holds, all the time,

* **weights** — fp32 master weights, 4 bytes per parameter (AMP keeps them in fp32);
* **gradients** — fp32, 4 bytes per parameter;
* **AdamW moments** — two fp32 tensors, 8 bytes per parameter;

and on top of these its peak is the larger of two moments:

* the **backward pass**, holding
  * **half-precision weight copies** — under bf16/fp16 autocast each matmul saves the cast copy
    of its weight for the backward: 2 bytes per parameter, unless gradient checkpointing drops
    them with the rest of the block. (Autocast's weight *cache* makes no difference at the peak:
    it lives only inside the forward's ``autocast`` region, and the GPU measurement found equal
    peaks with and without it.)
  * **activations** saved for the backward pass — per token and per transformer layer, counted
    tensor by tensor below; with **gradient checkpointing** only each block's input is kept and
    one block's activations are recomputed at a time;
  * the **logits** of the codebook-0 head (fp32 for the loss) and the audio decoder's activations
    on its 1/16 of the frames;
* the **optimizer step**: PyTorch's default ("foreach") AdamW computes ``sqrt(v)`` of every
  parameter in one go, a parameter-sized fp32 temporary (4 bytes per parameter); the fused CUDA
  kernel (``fused=True``) needs none. A GPU measurement found this term, which the first version
  of this model left out (chapter 07a).

Adding the backward pass's terms to all the gradients is exact under gradient accumulation (the
gradients live through every micro-batch after the first) and an upper bound without it: with
``zero_grad(set_to_none=True)`` the gradients are allocated during the backward as the activations
are freed.

So the fixed part is 16 bytes per parameter before a single token is seen — for the 422.6M
``paper_422m`` 6.8 GB of an 8 GB card — and the default optimizer step adds 1.7 GB more. Shapes:
B windows, S positions, D width, Dkv key/value width, H MLP width, L layers, V codebook entries.

Measured on a GPU (where one is lent), by the training loop's own ``train.train_step``:

    python -m csm_lib.budget layout --hours=1 --out=runs/gpu/layout.json     # here, from the corpus
    python -m csm_lib.budget measure --layout=runs/gpu/layout.json --device=cuda \
        --out=results/paper_422m_gpu.json                                     # on the GPU machine

``paper_422m`` has 16 codebooks and our codec 8, so the measurement keeps the corpus's real turn
layout (text tokens, number of frames, conversations) and draws random codes for 16 codebooks:
memory and speed depend on the shapes, not on the values.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from csm_lib.backbone import TransformerConfig
from csm_lib.model import CSM, PRESETS, CSMConfig

GB = 1e9


def block_activation_bytes(t: TransformerConfig, amp: bool = True) -> int:
    """Bytes one Llama block saves for the backward pass, per token (tensor by tensor, as measured).

    Each RMSNorm keeps its fp32 input and normalised value (8D); in fp32 also the output scaled
    by its weight (4D), under AMP instead the bf16 copy of that output made for *each* matmul that
    reads it (q, k, v: 3 x 2D; gate, up: 2 x 2D). Attention keeps q, k, v after RoPE (D + 2 Dkv)
    and its output (D); the MLP keeps gate and up outputs, silu(gate) and their product (4H).
    Matmul operands are 2 bytes under AMP, 4 without. Not counted: the (S, S) attention mask,
    which flash attention on a GPU never builds.
    """
    D, H = t.dim, t.hidden_dim
    dkv = t.n_kv_heads * t.head_dim
    if amp:
        return 2 * 8 * D + 5 * 2 * D + 2 * (D + 2 * dkv) + 2 * D + 2 * 4 * H
    return 2 * 12 * D + 4 * (D + 2 * dkv) + 4 * D + 4 * 4 * H


@dataclass
class Budget:
    weights: float
    weight_copies: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    optimizer_step: float = 0.0  # temporaries of the AdamW step

    @property
    def backward(self) -> float:
        """What the backward pass holds on top of weights, gradients and moments."""
        return self.weight_copies + self.activations + self.logits

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + max(self.backward, self.optimizer_step)

    def gb(self) -> dict[str, float]:
        parts = {k: round(v / GB, 3) for k, v in vars(self).items()}
        return parts | {"total": round(self.total / GB, 3)}


def training_memory(cfg: CSMConfig, n_params: int, batch: int, seq_len: int, amp: bool = True,
                    checkpointing: bool = False, fused_adam: bool = False,
                    audio_fraction: float = 0.75) -> Budget:
    """Peak training memory (bytes) of CSM for micro-batches of ``batch`` windows of ``seq_len`` positions.

    ``audio_fraction``: share of positions that are audio frames (the corpus has about 0.74).
    ``fused_adam``: the fused AdamW kernel, without the default step's parameter-sized temporary.
    """
    tokens = batch * seq_len
    b = cfg.backbone
    per_block = block_activation_bytes(b, amp)
    if checkpointing:  # block inputs (fp32 residual) for every layer, one block's activations at a time
        acts = tokens * (4 * b.dim * b.n_layers + per_block)
    else:
        acts = tokens * per_block * b.n_layers
    acts += tokens * 4 * b.dim * 2  # embeddings sum and final norm input
    frames = tokens * audio_fraction
    dec_frames = frames * cfg.decoder_fraction
    acts += dec_frames * cfg.n_codebooks * block_activation_bytes(cfg.decoder, amp) * cfg.decoder.n_layers
    logits = 4 * cfg.audio_vocab_size * (frames + dec_frames * (cfg.n_codebooks - 1)) * 2  # logits + their grad
    return Budget(weights=4 * n_params, weight_copies=(2 * n_params if amp and not checkpointing else 0),
                  gradients=4 * n_params, optimizer=8 * n_params, activations=acts, logits=logits,
                  optimizer_step=0 if fused_adam else 4 * n_params)


def saved_tensor_bytes(fn, params: list[torch.Tensor], amp: bool = True) -> int:
    """Measure what ``fn()`` saves for the backward pass: bytes of saved tensors, each storage once.

    Parameters are not activations, and neither are autocast's half-precision copies of them
    (counted by ``Budget.weight_copies``): tensors with a parameter's shape (or its transpose) are
    left out, so pick activation shapes that differ from every weight's.
    """
    weight_shapes = {tuple(p.shape) for p in params} | {tuple(p.shape)[::-1] for p in params}
    weight_ptrs = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weight_ptrs and tuple(t.shape) not in weight_shapes:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
            fn()
    return sum(seen.values())


# --- measuring it ---------------------------------------------------------------------------------
def turn_layout(turns: list) -> list[dict]:
    """``dataset.Turn``s -> their layout alone: conversation, speaker, text tokens, number of frames."""
    rows = []
    for t in turns:
        text = ~t.mask[:, :-1].any(-1)  # text positions hold the text column only
        rows.append({"conversation": t.conversation, "turn": t.turn, "speaker": t.speaker,
                     "tokens": t.frames[text, -1].tolist(), "audio_frames": int((~text).sum()) - 1})
    return rows


def layout_turns(layout: list[dict], n_codebooks: int, vocab: int, seed: int = 0) -> list:
    """A layout -> ``dataset.Turn``s with random codes for ``n_codebooks`` codebooks of ``vocab`` entries."""
    from csm_lib import frames as Fr
    from csm_lib.dataset import Turn

    g = torch.Generator().manual_seed(seed)
    turns = []
    for r in layout:
        codes = torch.randint(1, vocab, (n_codebooks, r["audio_frames"]), generator=g)  # 0s mark end of speech
        f, m = Fr.concat([Fr.text_frames(r["tokens"], n_codebooks), Fr.audio_frames(codes)])
        turns.append(Turn(r["conversation"], r["turn"], r["speaker"], "", f, m, {}))
    return turns


def measure(cfg: CSMConfig, turns: list, micro_batch: int, seq_len: int = 512, accum: int = 1,
            checkpointing: bool = False, autocast_cache: bool = True, fused_adam: bool = False, amp: str = "bf16",
            device: str = "cuda", steps: int = 8, warmup: int = 2, seed: int = 0) -> dict:
    """Peak memory and median speed of ``steps`` optimizer steps of ``train.train_step`` after ``warmup`` steps.

    Each step takes ``micro_batch * accum`` windows of at most ``seq_len`` positions. The first
    step allocates AdamW's moments; the peak is measured over the timed steps. On a CPU the
    memory fields are None (no allocator statistics).
    """
    from csm_lib.dataset import ConversationWindows
    from csm_lib.train import TrainConfig, make_optimizer, train_step

    dev = torch.device(device)
    tcfg = TrainConfig(preset="paper_422m", batch=micro_batch * accum, accum=accum, max_len=seq_len, amp=amp,
                       autocast_cache=autocast_cache, checkpointing=checkpointing, fused_adam=fused_adam,
                       device=device, seed=seed, lr=1e-4)
    windows = ConversationWindows(turns, seq_len)
    out = {"micro_batch": micro_batch, "accum": accum, "seq_len": seq_len, "checkpointing": checkpointing,
           "autocast_cache": autocast_cache, "fused_adam": fused_adam, "amp": amp}
    timed = range(warmup, warmup + steps)
    # the longest window of the timed steps sets the padded shape (B, S) the peak is reached at
    out["longest"] = max(len(windows.window(i)[0]) for s in timed for i in windows.step_indices(s, tcfg.batch, seed))
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model = opt = None
    try:
        torch.manual_seed(seed)
        with dev:  # initialise on the device: 422M parameters take seconds to initialise on a CPU
            model = CSM(cfg)
        model.backbone.gradient_checkpointing = checkpointing
        opt = make_optimizer(model, tcfg)
        scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        for step in range(warmup):
            train_step(model, model, opt, scaler, windows, step, tcfg, 0, 1, dev)
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        seconds, rates = [], []
        for step in timed:
            t0 = time.perf_counter()
            m = train_step(model, model, opt, scaler, windows, step, tcfg, 0, 1, dev)
            sync()
            seconds.append(time.perf_counter() - t0)
            rates.append(m["positions"] / seconds[-1])
        out |= {"fits": True, "step_s": round(statistics.median(seconds), 4),
                "positions_per_s": round(statistics.median(rates), 1), "loss": round(m["loss"], 4),
                "max_allocated_gb": round(torch.cuda.max_memory_allocated(dev) / GB, 3) if cuda else None,
                "max_reserved_gb": round(torch.cuda.max_memory_reserved(dev) / GB, 3) if cuda else None}
    except torch.OutOfMemoryError as e:
        out |= {"fits": False, "error": str(e).split("\n")[0][:200]}
    finally:
        del model, opt
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return out


def measure_grid(layout: list[dict], device: str = "cuda", steps: int = 8,
                 micro_batches: tuple[int, ...] = (1, 2, 4, 8), cap_bytes: float = 7.5e9) -> dict:
    """``paper_422m`` at every (checkpointing, autocast cache, fused AdamW, micro-batch), each beside
    the estimate (after one untimed pass over the micro-batch sizes); then the configuration chapter
    07 recommends (32 windows in 16 micro-batches of 2, checkpointing, no autocast cache), a whole
    step at a time, under an allocator cap of ``cap_bytes``
    (``torch.cuda.set_per_process_memory_fraction``: an 8 GB card less its CUDA context)."""
    cfg = PRESETS["paper_422m"]
    turns = layout_turns(layout, cfg.n_codebooks, cfg.audio_vocab_size)
    with torch.device("meta"):
        n = CSM(cfg).num_parameters()["total"]
    rows, dev = [], torch.device(device)
    if dev.type == "cuda":  # CUDA loads kernels on first use: touch every shape once, untimed
        for micro in micro_batches:
            measure(cfg, turns, micro, device=device, steps=steps)
    for fused in (False, True) if dev.type == "cuda" else (False,):  # the fused kernel is CUDA's
        for ckpt in (False, True):
            for cache in (True, False):
                for micro in micro_batches:
                    r = measure(cfg, turns, micro, checkpointing=ckpt, autocast_cache=cache, fused_adam=fused,
                                device=device, steps=steps)
                    est = training_memory(cfg, n, micro, r["longest"], checkpointing=ckpt, fused_adam=fused)
                    rows.append(r | {"estimate_gb": round(est.total / GB, 3), "estimate_parts_gb": est.gb()})
                    print(json.dumps(rows[-1]), flush=True)
    capped = []
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total), index)
        for amp, fused in (("bf16", False), ("bf16", True), ("fp16", True)):
            capped.append(measure(cfg, turns, 2, accum=16, checkpointing=True, autocast_cache=False,
                                  fused_adam=fused, amp=amp, device=device, steps=3, warmup=1))
            print(json.dumps(capped[-1]), flush=True)
        torch.cuda.set_per_process_memory_fraction(1.0, index)
    return {"model": "paper_422m", "parameters": n, "positions_per_window": 512, "steps_timed": steps,
            "grid": rows, "cap_bytes": cap_bytes, "capped": capped}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m csm_lib.budget", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    lay = sub.add_parser("layout", help="write the turn layout of a corpus's training split (JSON)")
    lay.add_argument("--hours", type=float, default=1.0)
    lay.add_argument("--corpus_seed", type=int, default=1)
    lay.add_argument("--out", type=Path, required=True)
    mea = sub.add_parser("measure", help="measure paper_422m's peak memory and speed on a device")
    mea.add_argument("--layout", type=Path, required=True)
    mea.add_argument("--device", default="cuda")
    mea.add_argument("--steps", type=int, default=8)
    mea.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if a.cmd == "layout":
        from csm_lib.train import TrainConfig, load_data

        train_w, _, _, info = load_data(TrainConfig(hours=a.hours, corpus_seed=a.corpus_seed))
        layout = turn_layout([t for conv in train_w.conversations for t in conv])
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"corpus": info["corpus"], "turns": layout}))
        print(f"{len(layout)} turns of {info['corpus']} -> {a.out}")
        return
    if not a.layout.is_file():
        raise SystemExit(f"no layout file {a.layout}: make one with `python -m csm_lib.budget layout --out=...`")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device=cuda but torch sees no CUDA device; use --device=cpu for a (slow) dry run")
    spec = json.loads(a.layout.read_text())
    from csm_lib.checkpoint import provenance

    result = {"provenance": provenance("csm_lib.budget", a.device), "corpus": spec["corpus"],
              "device_memory_gb": (round(torch.cuda.get_device_properties(a.device).total_memory / GB, 1)
                                   if a.device.startswith("cuda") else None)}
    result |= measure_grid(spec["turns"], a.device, a.steps)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
