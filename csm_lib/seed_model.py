"""The seed report's two ideas trained inside CSM, so that they can be compared with its plain context window.

``seed_variants.py`` builds the modules; here each is wired into the reference CSM at the middle
of its backbone (``layer``, default ``n_layers // 2``), so that a variant trains with the same
data, loss, recipe and step count as the plain model:

* **cross_modal** — one ``AsymmetricCrossModalAttention`` layer before backbone block ``layer``:
  every audio position attends to the text positions before it (every earlier turn's text and its
  own turn's), every text position to the audio before it mean-pooled over ``pool`` frames. Made
  causal for a language model: a position never reads a later one. The self-attention stays as
  in CSM, so this variant *adds* a path; it does not replace one.
* **memory** — the backbone's self-attention is cut at turn boundaries (each position attends to
  its own turn only), and a ``DualMemoryBank`` carries the conversation instead: each turn *reads*
  the memory before block ``layer``; the memory is *written* from each finished turn's hidden
  states at that block, turn after turn. So the only way an earlier turn reaches the current one
  is through 16 + 8 slots: the seed's claim that a fixed memory can stand in for the window.

A turn starts at a text position that follows a non-text position (or the window's first
position). Neither variant has an incremental (KV-cached) generation path here: ``frames``
re-runs the whole sequence for every new frame, which is slower but exact; chapter 06 has their
costs.

Shapes: B batch, S positions, K codebooks, D backbone width, T turns in a window.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from csm_lib.model import CSM, CSMConfig
from csm_lib.seed_variants import (
    AsymmetricCrossModalAttention,
    CrossModalConfig,
    DualMemoryBank,
    MemoryConfig,
    mean_pool,
)

VARIANTS = ("cross_modal", "memory")


def turn_ids(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` (B, S, K+1) -> (B, S) the turn index of each position (0 for the window's first, partial turn)."""
    is_text = mask[..., -1]
    prev_text = torch.cat([torch.zeros_like(is_text[:, :1]), is_text[:, :-1]], dim=1)
    starts = is_text & ~prev_text
    starts[:, 0] = False  # the first position continues turn 0 whatever it is
    return starts.long().cumsum(1)


def masked_attention(q_in: torch.Tensor, kv_in: torch.Tensor, allowed: torch.Tensor, attn) -> torch.Tensor:
    """``seed_variants.CrossAttention`` ``attn`` of queries (B, Sq, D) over keys (B, Sk, D) where
    ``allowed`` (B, Sq, Sk) is True; a query with no allowed key gets zeros -> (B, Sq, D)."""
    B, Sq, D = q_in.shape
    has_key = allowed.any(-1)  # (B, Sq)
    mask = (allowed | ~has_key[..., None])[:, None]  # (B, 1, Sq, Sk): a row with no key sees all, then is zeroed
    q = attn._split_heads(attn.q_proj(q_in))
    k, v = attn._split_heads(attn.k_proj(kv_in)), attn._split_heads(attn.v_proj(kv_in))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.o_proj(out.transpose(1, 2).reshape(B, Sq, D)).masked_fill(~has_key[..., None], 0.0)


class CausalCrossModal(nn.Module):
    """The asymmetric cross-modal layer, causal, on one interleaved sequence (module docstring)."""

    def __init__(self, cfg: CrossModalConfig):
        super().__init__()
        self.cfg = cfg
        inner = AsymmetricCrossModalAttention(cfg)  # the same parameters as the stand-alone module
        self.voice_norm, self.text_norm = inner.voice_norm, inner.text_norm
        self.voice_to_text, self.text_to_voice = inner.voice_to_text, inner.text_to_voice

    def forward(self, h: torch.Tensor, is_voice: torch.Tensor, is_text: torch.Tensor) -> torch.Tensor:
        """``h`` (B, S, D); ``is_voice``/``is_text`` (B, S) -> (B, S, D) with both cross-attentions added."""
        B, S, D = h.shape
        pos = torch.arange(S, device=h.device)
        v, t = self.voice_norm(h), self.text_norm(h)
        # voice queries over the text before them
        to_text = is_voice[:, :, None] & is_text[:, None, :] & (pos[None, None, :] < pos[None, :, None])
        voice_out = masked_attention(v, t, to_text, self.voice_to_text)
        # text queries over the voice before them, pooled over `pool` consecutive voice frames
        order = torch.argsort((~is_voice).long(), dim=1, stable=True)  # (B, S): voice positions first, in order
        voice_mask = is_voice.gather(1, order)
        pooled, pooled_mask = mean_pool(v.gather(1, order[..., None].expand(-1, -1, D)), voice_mask,
                                        self.cfg.pool)  # (B, W, D)
        W = pooled.shape[1]
        last = F.pad(order.masked_fill(~voice_mask, -1), (0, W * self.cfg.pool - S), value=-1)
        last = last.view(B, W, self.cfg.pool).amax(-1)  # (B, W): each window's last voice position
        to_voice = is_text[:, :, None] & pooled_mask[:, None, :] & (last[:, None, :] < pos[None, :, None])
        text_out = masked_attention(t, pooled, to_voice, self.text_to_voice)
        return h + torch.where(is_voice[..., None], voice_out, 0.0) + torch.where(is_text[..., None], text_out, 0.0)


class SeedCSM(CSM):
    """CSM with one of the seed's ideas at backbone block ``layer`` (``variant`` in ``VARIANTS``)."""

    def __init__(self, cfg: CSMConfig, variant: str, layer: int | None = None, pool: int = 4,
                 semantic_slots: int = 16, prosodic_slots: int = 8):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        super().__init__(cfg)
        b = cfg.backbone
        self.variant = variant
        self.layer = b.n_layers // 2 if layer is None else layer
        if not 0 <= self.layer < b.n_layers:
            raise ValueError(f"layer must be in 0..{b.n_layers - 1}, got {self.layer}")
        if variant == "cross_modal":
            self.cross_modal = CausalCrossModal(CrossModalConfig(b.dim, b.n_heads, pool))
        else:
            self.memory = DualMemoryBank(MemoryConfig(b.dim, b.n_heads, semantic_slots, prosodic_slots))

    def num_parameters(self) -> dict[str, int]:
        """``CSM.num_parameters`` plus the seed layer (``seed_layer``, counted in ``total``)."""
        parts = super().num_parameters()
        layer = self.cross_modal if self.variant == "cross_modal" else self.memory
        parts["seed_layer"] = sum(p.numel() for p in layer.parameters())
        parts["total"] += parts["seed_layer"]
        return parts

    def hidden(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The backbone over embeddings ``x`` (B, S, D) of ``mask`` (B, S, K+1), with the variant -> (B, S, D)."""
        bb = self.backbone
        S = x.shape[1]
        if S > bb.cfg.max_seq_len:
            raise ValueError(f"sequence of {S} positions is longer than max_seq_len={bb.cfg.max_seq_len}")
        real = mask.any(-1)  # (B, S)
        cos, sin = bb.rope_cos[None, :S], bb.rope_sin[None, :S]
        allowed = torch.ones(S, S, dtype=torch.bool, device=x.device).tril()[None] & real[:, None, :]
        turns = turn_ids(mask)
        if self.variant == "memory":
            allowed = allowed & (turns[:, :, None] == turns[:, None, :])  # each turn sees itself only
        allowed = allowed | torch.eye(S, dtype=torch.bool, device=x.device)[None]  # padding sees itself
        attn_mask = allowed[:, None]  # (B, 1, S, S)
        h = x
        for i, block in enumerate(bb.layers):
            if i == self.layer:
                h = self._seed_layer(h, mask, real, turns)
            h = block(h, cos, sin, attn_mask)
        return bb.norm(h)

    def _seed_layer(self, h: torch.Tensor, mask: torch.Tensor, real: torch.Tensor, turns: torch.Tensor):
        K = self.cfg.n_codebooks
        if self.variant == "cross_modal":
            return self.cross_modal(h, mask[..., :K].all(-1) & real, mask[..., K] & real)
        state = self.memory.init_state(h.shape[0])
        out = h
        for k in range(int(turns.max()) + 1):
            in_turn = (turns == k) & real  # (B, S)
            read = self.memory.read(h, state, in_turn)  # positions outside the turn pass through unchanged
            out = torch.where(in_turn[..., None], read, out)
            state = self.memory.write(h, state, in_turn)  # then this turn is written for the next one
        return out

    @torch.inference_mode()
    def frames(self, frames: torch.Tensor, mask: torch.Tensor, max_frames: int, temperature: float = 0.9,
               topk: int = 50, seed: int | None = None, stop_at_end: bool = True) -> Iterator[torch.Tensor]:
        """Yield the frames' codes (1, K) after the prompt ``frames``/``mask`` (1, S, K+1), until end of
        speech (not yielded unless ``stop_at_end=False``) or ``max_frames``. Re-runs the whole sequence
        for every frame (no KV cache); ``Generator.frames`` calls it for a ``SeedCSM``."""
        K = self.cfg.n_codebooks
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for _ in range(max_frames):
            h = self.hidden(self.embed_frames(frames, mask), mask)[:, -1]  # (1, D)
            codes = self.sample_frame(h, temperature, topk, generator)  # (1, K)
            if stop_at_end and (codes == 0).all():
                return
            yield codes
            new = torch.zeros(1, 1, K + 1, dtype=torch.long)
            new[0, 0, :K] = codes[0]
            new_mask = torch.zeros_like(new, dtype=torch.bool)
            new_mask[0, 0, :K] = True
            frames, mask = torch.cat([frames, new], dim=1), torch.cat([mask, new_mask], dim=1)

