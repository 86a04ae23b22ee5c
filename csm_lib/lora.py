"""Low-rank adapters (LoRA): fine-tune a few million weights' worth of behaviour with a few thousand.

A frozen linear layer ``y = W x`` gets a trainable detour of rank ``r``:

    y = W x + (alpha / r) * B (A x),      A (r, in) random,  B (out, r) = 0

so the adapted model starts as the model it adapts, exactly (``B = 0``), and training moves only
``A`` and ``B`` (Hu et al., 2021, *LoRA: Low-Rank Adaptation of Large Language Models*). After
training, ``W + (alpha / r) B A`` is one ordinary matrix again (``merge_adapters``): the merged
model has the same shape, speed and file format as the one it came from, so ``load_generator``
loads it like any other checkpoint.

This is our own ~60-line layer rather than ``peft``: peft adapts Hugging Face modules by name and
would be one more dependency for what is here one class; the layer below is what peft's ``Linear``
does for ``r``, ``alpha`` and dropout 0.

Which layers: every projection of the backbone's and the audio decoder's attention and MLP
(``TARGETS``). Kept trainable beside them (``TRAINABLE``): the text embeddings, so that a new
speaker id (an untrained row of the table) can learn its voice; the rest stays frozen.

Explained in chapter 13 (``notebooks/13_your_voice.ipynb``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TRAINABLE = ("text_embeddings",)  # whole modules trained as they are beside the adapters


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * x A^T B^T`` with ``base`` frozen; ``x`` (..., in) -> (..., out)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        self.base, self.rank, self.scale = base, rank, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initialises its weight
        base.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    def merged(self) -> nn.Linear:
        """One ``nn.Linear`` computing the same function: ``W + scale * B A``."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=False)
        out.weight.data = (self.base.weight + self.scale * self.lora_b @ self.lora_a).detach().clone()
        return out


def _targets(model: nn.Module, kind: type) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, child) of every ``kind`` child named in ``TARGETS``."""
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if name in TARGETS and isinstance(child, kind)]


def add_adapters(model: nn.Module, rank: int = 8, alpha: float = 16.0) -> dict[str, int]:
    """Freeze ``model`` and give each target layer an adapter; ``TRAINABLE`` modules stay trainable.

    Returns the parameter counts ``{"trainable", "frozen"}``."""
    for p in model.parameters():
        p.requires_grad_(False)
    found = _targets(model, nn.Linear)
    if not found:
        raise ValueError(f"no layer named one of {TARGETS} to adapt")
    for parent, name, child in found:
        setattr(parent, name, LoRALinear(child, rank, alpha))
    for name in TRAINABLE:
        for p in getattr(model, name).parameters():
            p.requires_grad_(True)
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "frozen": sum(p.numel() for p in model.parameters() if not p.requires_grad)}


def merge_adapters(model: nn.Module) -> int:
    """Replace every adapter by its merged ``nn.Linear`` (in place) and unfreeze; returns how many merged."""
    found = _targets(model, LoRALinear)
    for parent, name, child in found:
        setattr(parent, name, child.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return len(found)
