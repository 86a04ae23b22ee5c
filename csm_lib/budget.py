"""How much GPU memory training CSM takes: an analytic model, checked against measurement.

Peak training memory is the sum of

* **weights** — fp32 master weights, 4 bytes per parameter (AMP keeps them in fp32);
* **autocast's weight cache** — under bf16/fp16 autocast each weight is cast once per forward and
  the half-precision copy kept until the backward: 2 bytes per parameter of the cast layers
  (``cache_enabled=False`` trades it for recasting);
* **gradients** — fp32, 4 bytes per parameter;
* **AdamW moments** — two fp32 tensors, 8 bytes per parameter;
* **activations** saved for the backward pass — per token and per transformer layer, counted
  tensor by tensor below; with **gradient checkpointing** only each block's input is kept and one
  block's activations are recomputed at a time;
* the **logits** of the codebook-0 head (fp32 for the loss) and the audio decoder's activations on
  its 1/16 of the frames.

So the fixed part is 16 bytes per parameter (18 with the autocast cache) before a single token is
seen: for the 422.6M ``paper_422m`` that is 6.8 GB of an 8 GB card. Shapes: B windows, S
positions, D width, Dkv key/value width, H MLP width, L layers, V codebook entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from csm_lib.backbone import TransformerConfig
from csm_lib.model import CSMConfig

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
    autocast_cache: float
    gradients: float
    optimizer: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.weights + self.autocast_cache + self.gradients + self.optimizer + self.activations + self.logits

    def gb(self) -> dict[str, float]:
        parts = {k: round(v / GB, 3) for k, v in vars(self).items()}
        return parts | {"total": round(self.total / GB, 3)}


def training_memory(cfg: CSMConfig, n_params: int, batch: int, seq_len: int, amp: bool = True,
                    checkpointing: bool = False, autocast_cache: bool = True,
                    audio_fraction: float = 0.75) -> Budget:
    """Peak training memory (bytes) of CSM for micro-batches of ``batch`` windows of ``seq_len`` positions.

    ``audio_fraction``: share of positions that are audio frames (the corpus has about 0.74).
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
    return Budget(weights=4 * n_params, autocast_cache=(2 * n_params if amp and autocast_cache else 0),
                  gradients=4 * n_params, optimizer=8 * n_params, activations=acts, logits=logits)


def saved_tensor_bytes(fn, params: list[torch.Tensor], amp: bool = True) -> int:
    """Measure what ``fn()`` saves for the backward pass: bytes of saved tensors, each storage once.

    Parameters are not activations, and neither are autocast's half-precision copies of them
    (counted by ``Budget.autocast_cache``): tensors with a parameter's shape (or its transpose) are
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
