"""The seed report's own architecture ideas, as modules that can be switched in and compared.

Sesame's CSM has a single stream: text tokens and audio frames are interleaved in one sequence,
and the backbone's causal self-attention reads the whole context window (earlier turns included)
through its KV cache. The seed report claims two changes on top of that:

1. **Asymmetric cross-modal attention.** Voice (audio-frame) positions attend to text positions
   at full resolution, while text positions attend only to *pooled* voice features, "to save
   compute". Here: two cross-attentions in one pre-norm residual layer. Voice queries see every
   text key; text queries see the voice frames mean-pooled over windows of ``pool`` frames
   (``ceil(Sv / pool)`` windows, padded frames left out of the means). ``attention_cost`` counts
   the query-key scores of both directions against a symmetric full-resolution layer: the saving
   is only in the text->voice half, so it is under 50% whatever ``pool`` is.

2. **A dual memory bank.** A *semantic* and a *prosodic* memory, each a fixed number of slots,
   carried from turn to turn: the current turn *reads* them through attention instead of re-reading
   the whole context window, and *writes* them at the end of the turn. Here: ``read`` is a pre-norm
   residual attention of every position over the concatenation of both memories; ``write`` lets
   each memory's slots attend to the turn and mixes old slots and new candidates through a GRU-like
   sigmoid gate, so the state has the same size after every turn (``state_floats`` vs
   ``kv_cache_floats`` is the comparison with a context window). The semantic slots attend to the
   turn's hidden states as they are; the prosodic slots to a *prosody view* of them, a projection
   of each frame together with its change from the previous frame (``x_t - x_{t-1}``): prosody is
   pitch, energy and timing, which live in how frames *change* as much as in what they hold.

These are **hypotheses**, not Sesame's design: the seed names the ideas but not their equations,
so every concrete choice here (mean pooling, no positional encoding in the cross-attentions, the
prosody view, the gate) is ours. None of it is trained or shown to help yet; chapter 06 compares it
with the plain context window. Both modules are single layers that take and return hidden states,
so where they sit in a model (which layers, how many) is the caller's choice.

Masks are bool, True at real positions. A padded position contributes nothing to any other
position, and gets a zero update (it passes through its residual unchanged); a query left with no
key at all (e.g. fully padded text) gets a zero update too, not the NaN of a softmax over nothing.

Shapes: B batch, Sv voice frames, St text tokens, S positions of a turn, D width, H heads,
Ms / Mp semantic / prosodic memory slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from csm_lib.backbone import RMSNorm, TransformerConfig

# --- checks shared by both ideas ------------------------------------------------------------------


def _check_heads(dim: int, n_heads: int) -> None:
    if dim < 1 or n_heads < 1:
        raise ValueError(f"dim and n_heads must be positive; got dim={dim}, n_heads={n_heads}")
    if dim % n_heads:
        raise ValueError(f"dim ({dim}) must be divisible by n_heads ({n_heads})")


def _check_shape(name: str, x: torch.Tensor, expected: tuple[int | str, ...]) -> None:
    """Raise unless ``x`` has ``expected`` shape; a name such as ``"B"`` accepts any size."""
    ok = x.dim() == len(expected) and all(isinstance(e, str) or e == n for e, n in zip(expected, x.shape, strict=True))
    if not ok:
        raise ValueError(f"{name} must have shape ({', '.join(map(str, expected))}); got {tuple(x.shape)}")


def _check_mask(name: str, mask: torch.Tensor | None, x: torch.Tensor) -> None:
    """``mask`` must be None or a bool (B, S) tensor matching ``x`` (B, S, D)."""
    if mask is not None and (mask.dtype != torch.bool or mask.shape != x.shape[:2]):
        raise ValueError(f"{name} must be a bool tensor of shape {tuple(x.shape[:2])}; "
                         f"got {mask.dtype} of shape {tuple(mask.shape)}")


# --- the attention both ideas are built from -------------------------------------------------------


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``x`` over a separate ``context``, with no positional encoding.

    The two sides are different sequences (voice vs text, memory slots vs a turn) with no shared
    position axis, so there is no RoPE. One key/value head per query head. A query with no key to
    attend to, or that is itself padding, gets a zero output.
    """

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        _check_heads(dim, n_heads)
        self.n_heads = n_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, D) -> (B, H, S, D/H)."""
        B, S, D = x.shape
        return x.view(B, S, self.n_heads, D // self.n_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None,
                query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, Sq, D) attends to ``context`` (B, Sk, D) -> (B, Sq, D).

        ``context_mask`` (B, Sk) is True at keys that may be attended to; ``query_mask`` (B, Sq) is
        True at real queries. Rows that are padding or have no key come out as zeros.
        """
        B, Sq, D = x.shape
        keep = torch.ones(B, Sq, dtype=torch.bool, device=x.device) if query_mask is None else query_mask
        attn_mask = None
        if context_mask is not None:
            context = context.masked_fill(~context_mask[..., None], 0.0)  # padding may hold anything
            has_key = context_mask.any(-1)  # (B,)
            # a row with no key sees every (zeroed) key instead: some SDPA backends give NaN for an
            # all-masked row. Its output is zeroed below.
            attn_mask = (context_mask | ~has_key[:, None])[:, None, None, :]  # (B, 1, 1, Sk)
            keep = keep & has_key[:, None]
        q = self._split_heads(self.q_proj(x))
        k, v = self._split_heads(self.k_proj(context)), self._split_heads(self.v_proj(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, Sq, D/H)
        out = self.o_proj(out.transpose(1, 2).reshape(B, Sq, D))
        return out.masked_fill(~keep[..., None], 0.0)


# --- 1. asymmetric cross-modal attention ------------------------------------------------------------


class AttentionCost(NamedTuple):
    """Query-key scores of one cross-modal layer: the asymmetric one vs symmetric full resolution."""

    asymmetric: int  # Sv * St + St * ceil(Sv / pool)
    symmetric: int  # 2 * Sv * St

    @property
    def saved(self) -> float:
        """Fraction of the symmetric layer's scores that the asymmetric one does not compute."""
        return 1 - self.asymmetric / self.symmetric


@dataclass
class CrossModalConfig:
    dim: int = 256
    n_heads: int = 8
    pool: int = 4  # voice frames per pooled window that text attends to

    def __post_init__(self) -> None:
        _check_heads(self.dim, self.n_heads)
        if self.pool < 1:
            raise ValueError(f"pool (voice frames per window) must be >= 1; got {self.pool}")

    def attention_cost(self, voice_len: int, text_len: int) -> AttentionCost:
        """Scores computed for ``voice_len`` frames and ``text_len`` tokens, asymmetric vs symmetric."""
        windows = -(-voice_len // self.pool)  # ceil division
        return AttentionCost(asymmetric=voice_len * text_len + text_len * windows,
                             symmetric=2 * voice_len * text_len)


def mean_pool(x: torch.Tensor, mask: torch.Tensor | None, pool: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over windows of ``pool`` consecutive positions: (B, S, D) -> (B, W, D) and a (B, W) mask.

    ``W = ceil(S / pool)``; the last window may be short. Padded positions (``mask`` False) are
    left out of the means; a window with no real position is zero and masked out (False).
    """
    B, S, D = x.shape
    W = -(-S // pool)
    if mask is None:
        mask = torch.ones(B, S, dtype=torch.bool, device=x.device)
    x = F.pad(x.masked_fill(~mask[..., None], 0.0), (0, 0, 0, W * pool - S))  # (B, W*pool, D)
    counts = F.pad(mask.to(x.dtype), (0, W * pool - S)).view(B, W, pool).sum(-1)  # (B, W)
    pooled = x.view(B, W, pool, D).sum(2) / counts.clamp(min=1)[..., None]
    return pooled, counts > 0


class AsymmetricCrossModalAttention(nn.Module):
    """One pre-norm residual layer: voice attends to all of text, text attends to pooled voice.

    Both directions read the layer's *inputs* (they run in parallel, not one after the other).
    """

    def __init__(self, cfg: CrossModalConfig):
        super().__init__()
        self.cfg = cfg
        self.voice_norm = RMSNorm(cfg.dim)
        self.text_norm = RMSNorm(cfg.dim)
        self.voice_to_text = CrossAttention(cfg.dim, cfg.n_heads)  # voice queries, text keys
        self.text_to_voice = CrossAttention(cfg.dim, cfg.n_heads)  # text queries, pooled voice keys

    def forward(self, voice: torch.Tensor, text: torch.Tensor, voice_mask: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``voice`` (B, Sv, D), ``text`` (B, St, D), masks (B, Sv) / (B, St) -> (B, Sv, D), (B, St, D)."""
        _check_shape("voice", voice, ("B", "Sv", self.cfg.dim))
        _check_shape("text (same batch and width as voice)", text, (voice.shape[0], "St", self.cfg.dim))
        _check_mask("voice_mask", voice_mask, voice)
        _check_mask("text_mask", text_mask, text)
        v, t = self.voice_norm(voice), self.text_norm(text)
        pooled, pooled_mask = mean_pool(v, voice_mask, self.cfg.pool)  # (B, ceil(Sv/pool), D)
        voice_out = voice + self.voice_to_text(v, t, text_mask, voice_mask)
        text_out = text + self.text_to_voice(t, pooled, pooled_mask, text_mask)
        return voice_out, text_out


# --- 2. the dual memory bank ------------------------------------------------------------------------


@dataclass
class MemoryConfig:
    dim: int = 256
    n_heads: int = 8
    semantic_slots: int = 16  # Ms
    prosodic_slots: int = 8  # Mp

    def __post_init__(self) -> None:
        _check_heads(self.dim, self.n_heads)
        if self.semantic_slots < 1 or self.prosodic_slots < 1:
            raise ValueError(f"each memory needs at least one slot; got semantic_slots={self.semantic_slots}, "
                             f"prosodic_slots={self.prosodic_slots}")


class MemoryState(NamedTuple):
    """What is carried from one turn to the next: ``semantic`` (B, Ms, D) and ``prosodic`` (B, Mp, D)."""

    semantic: torch.Tensor
    prosodic: torch.Tensor


def state_floats(state: MemoryState) -> int:
    """Numbers held by a memory state, all B sequences together: B * (Ms + Mp) * D."""
    return sum(t.numel() for t in state)


def kv_cache_floats(cfg: TransformerConfig, seq_len: int, batch_size: int = 1) -> int:
    """Numbers held by a backbone's KV cache of ``seq_len`` positions: keys and values of every layer."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * seq_len * batch_size


def frame_deltas(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``x_t - x_{t-1}`` for (B, S, D) -> (B, S, D); zero where frame t-1 is missing or padded."""
    prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
    has_prev = torch.ones_like(x[..., 0], dtype=torch.bool)
    has_prev[:, 0] = False
    if mask is not None:
        has_prev = has_prev & torch.cat([mask[:, :1], mask[:, :-1]], dim=1)
    return torch.where(has_prev[..., None], x - prev, 0.0)


class GatedSlotWriter(nn.Module):
    """One memory's write: its slots attend to a turn, and a sigmoid gate mixes old and new, GRU-like.

    ``new = (1 - z) * old + z * candidate``: a convex mix, so the slots stay bounded however many
    turns are written; ``z`` near 0 keeps a slot, near 1 overwrites it.
    """

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.slot_norm = RMSNorm(dim)
        self.attn = CrossAttention(dim, n_heads)
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, slots: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``slots`` (B, M, D) read ``context`` (B, S, D; already normalised), mask (B, S) -> new slots (B, M, D)."""
        s = self.slot_norm(slots)
        candidate = self.attn(s, context, mask)  # (B, M, D)
        z = torch.sigmoid(self.gate(torch.cat([s, candidate], dim=-1)))  # (B, M, D)
        if mask is not None:
            z = z * mask.any(-1)[:, None, None]  # an empty (fully padded) turn leaves the memory as it was
        return slots + z * (candidate - slots)


class DualMemoryBank(nn.Module):
    """A semantic and a prosodic memory of fixed size, read by every turn and written after it.

    Per conversation: ``state = bank.init_state(B)``, then for each turn ``h = bank.read(h, state)``
    somewhere in the model and ``state = bank.write(h, state)`` at the turn's end.
    """

    def __init__(self, cfg: MemoryConfig):
        super().__init__()
        self.cfg = cfg
        D, H = cfg.dim, cfg.n_heads
        self.semantic_init = nn.Parameter(0.02 * torch.randn(cfg.semantic_slots, D))  # learned initial slots
        self.prosodic_init = nn.Parameter(0.02 * torch.randn(cfg.prosodic_slots, D))
        self.read_norm = RMSNorm(D)
        self.memory_norm = RMSNorm(D)
        self.read_attn = CrossAttention(D, H)
        self.turn_norm = RMSNorm(D)
        self.prosody_proj = nn.Linear(2 * D, D, bias=False)  # [x_t, x_t - x_{t-1}] -> prosody view
        self.semantic_writer = GatedSlotWriter(D, H)
        self.prosodic_writer = GatedSlotWriter(D, H)

    def init_state(self, batch_size: int) -> MemoryState:
        """The learned initial slots for ``batch_size`` conversations: (B, Ms, D) and (B, Mp, D)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        return MemoryState(self.semantic_init.expand(batch_size, -1, -1),
                           self.prosodic_init.expand(batch_size, -1, -1))

    def _check_state(self, state: MemoryState, batch_size: int) -> None:
        _check_shape("state.semantic", state.semantic, (batch_size, self.cfg.semantic_slots, self.cfg.dim))
        _check_shape("state.prosodic", state.prosodic, (batch_size, self.cfg.prosodic_slots, self.cfg.dim))

    def read(self, h: torch.Tensor, state: MemoryState, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``h`` (B, S, D) plus attention over both memories (B, Ms + Mp, D) -> (B, S, D).

        No causal mask is needed: each position attends to the memory only, never to other
        positions of its turn, and the memory holds earlier turns only. Padded positions (``mask``
        (B, S) False) come back unchanged.
        """
        _check_shape("h", h, ("B", "S", self.cfg.dim))
        _check_mask("mask", mask, h)
        self._check_state(state, h.shape[0])
        memory = self.memory_norm(torch.cat([state.semantic, state.prosodic], dim=1))  # (B, Ms + Mp, D)
        return h + self.read_attn(self.read_norm(h), memory, query_mask=mask)

    def prosody_view(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """What the prosodic memory sees of a (normalised) turn (B, S, D): each frame and its change -> (B, S, D).

        Differences across a text/audio boundary mean little, so pass audio frames (or mask the rest).
        """
        return self.prosody_proj(torch.cat([x, frame_deltas(x, mask)], dim=-1))

    def write(self, turn_h: torch.Tensor, state: MemoryState, mask: torch.Tensor | None = None) -> MemoryState:
        """Update both memories from a finished turn ``turn_h`` (B, S, D), mask (B, S) -> the new state.

        The new state has the same shapes as ``state``, whatever S is.
        """
        _check_shape("turn_h", turn_h, ("B", "S", self.cfg.dim))
        _check_mask("mask", mask, turn_h)
        self._check_state(state, turn_h.shape[0])
        x = self.turn_norm(turn_h)
        return MemoryState(self.semantic_writer(state.semantic, x, mask),
                           self.prosodic_writer(state.prosodic, self.prosody_view(x, mask), mask))
