"""CSM: a backbone over interleaved text and audio frames, and an audio decoder within each frame.

Sesame's frame layout (SesameAILabs/csm ``models.py``): every position of the sequence is a
*frame* of ``K + 1`` columns — K audio codebooks and one text column — with a mask saying which
columns are present. A text position has only its text column; an audio position has only its K
codebooks. A position's input embedding is the **sum** of the embeddings of its present columns.

    frames (B, S, K+1) long, mask (B, S, K+1) bool
      -> embeddings summed per position (B, S, D)
      -> backbone (Llama)                 -> hidden h_t (B, S, D)
      -> codebook0_head(h_t)              -> logits of codebook 0 of frame t+1
      -> audio decoder (small Llama) on [proj(h_t), proj(e_0), ..., proj(e_{K-2})] of frame t+1
                                           -> logits of codebooks 1..K-1 of frame t+1

Audio codebook k uses its own slice ``k * audio_vocab_size ...`` of one embedding table. A frame
of all-zero codes ends a turn (the end-of-speech frame of the reference generator).

**Compute amortization.** The backbone and codebook 0 are trained on every audio frame. The
audio decoder, which runs K-1 steps per frame, is trained on a random ``decoder_fraction``
(1/16) of the audio frames only: the big model sees everything, the small one a sample.

Shapes: B batch, S positions, K codebooks, D backbone width, Dd decoder width, V vocabularies.

Explained in chapter 05 (``notebooks/05_audio_decoder.ipynb``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from csm_lib.backbone import KVCache, Transformer, TransformerConfig


@dataclass
class CSMConfig:
    backbone: TransformerConfig = field(default_factory=TransformerConfig)
    decoder: TransformerConfig = field(default_factory=lambda: TransformerConfig(
        dim=128, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=384, max_seq_len=32))
    n_codebooks: int = 8  # K
    audio_vocab_size: int = 1024  # entries per codebook
    text_vocab_size: int = 1024  # the corpus BPE (text.py), special tokens included
    decoder_fraction: float = 1 / 16  # compute amortization
    # training only: dropout on the backbone's input embedding of audio positions (Tacotron's
    # "prenet dropout"). With little data the backbone otherwise learns to recite a memorised
    # turn from its first frames instead of reading the text.
    audio_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.decoder.max_seq_len < self.n_codebooks:
            raise ValueError(f"the audio decoder needs max_seq_len >= n_codebooks ({self.n_codebooks}), "
                             f"got {self.decoder.max_seq_len}")
        if not 0 < self.decoder_fraction <= 1:
            raise ValueError(f"decoder_fraction must be in (0, 1], got {self.decoder_fraction}")


def _cfg(backbone: tuple, decoder: tuple, rope_scaling: tuple | None = None, **kw) -> CSMConfig:
    """(dim, n_layers, n_heads, n_kv_heads, hidden_dim) for the backbone and the decoder."""
    def t(a: tuple, max_len: int) -> TransformerConfig:
        return TransformerConfig(*a, max_seq_len=max_len, rope_scaling=rope_scaling)
    return CSMConfig(backbone=t(backbone, 2048), decoder=t(decoder, 32), **kw)


PRESETS: dict[str, CSMConfig] = {
    # unit tests: seconds on a CPU
    "tiny": _cfg((64, 2, 4, 2, 128), (32, 1, 2, 1, 64), n_codebooks=4, audio_vocab_size=64, text_vocab_size=64),
    # what the workbook trains on 2 CPU cores: our codec's 8 codebooks of 1,024, the corpus BPE
    "reference": _cfg((256, 6, 8, 2, 768), (128, 2, 4, 2, 384)),
    # the seed's 422M model. The seed gives d_model=512, n_layers=12, which cannot reach 422M
    # (about 50M); this is a Llama-style guess at 422M with the seed's 16 codebooks (8 + 8).
    "paper_422m": _cfg((1024, 25, 16, 4, 4096), (512, 4, 8, 2, 2048), n_codebooks=16),
    # Sesame's csm-1b: Llama-3.2-1B backbone, 100M decoder, 32 Mimi codebooks of 2,051, Llama-3 text vocabulary
    "csm_1b": _cfg((2048, 16, 32, 8, 8192), (1024, 4, 8, 2, 8192), n_codebooks=32, audio_vocab_size=2051,
                   text_vocab_size=128_256, rope_scaling=(32.0, 1.0, 4.0, 8192)),
}


class CSM(nn.Module):
    def __init__(self, cfg: CSMConfig):
        super().__init__()
        self.cfg = cfg
        K, D, Dd = cfg.n_codebooks, cfg.backbone.dim, cfg.decoder.dim
        self.text_embeddings = nn.Embedding(cfg.text_vocab_size, D)
        self.audio_embeddings = nn.Embedding(cfg.audio_vocab_size * K, D)
        self.backbone = Transformer(cfg.backbone)
        self.decoder = Transformer(cfg.decoder)
        self.projection = nn.Linear(D, Dd, bias=False)  # backbone width -> decoder width
        self.codebook0_head = nn.Linear(D, cfg.audio_vocab_size, bias=False)
        self.audio_head = nn.Parameter(torch.empty(K - 1, Dd, cfg.audio_vocab_size))  # codebooks 1..K-1
        nn.init.normal_(self.audio_head, std=Dd ** -0.5)

    # --- embeddings -------------------------------------------------------------------------
    def embed_audio(self, codebook: int, codes: torch.Tensor) -> torch.Tensor:
        """Codes of one codebook ``(...)`` -> embeddings ``(..., D)``."""
        return self.audio_embeddings(codes + codebook * self.cfg.audio_vocab_size)

    def embed_frames(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``frames``/``mask`` (B, S, K+1) -> the sum of each position's present embeddings (B, S, D)."""
        K = self.cfg.n_codebooks
        if frames.shape[-1] != K + 1 or mask.shape != frames.shape:
            raise ValueError(f"frames and mask must both be (B, S, {K + 1}); got {tuple(frames.shape)} "
                             f"and {tuple(mask.shape)}")
        offsets = torch.arange(K, device=frames.device) * self.cfg.audio_vocab_size
        audio = self.audio_embeddings(frames[..., :K] + offsets)  # (B, S, K, D)
        text = self.text_embeddings(frames[..., K:])  # (B, S, 1, D)
        return (torch.cat([audio, text], dim=2) * mask[..., None]).sum(dim=2)

    # --- the audio decoder ----------------------------------------------------------------------
    def decoder_logits(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced audio decoder for N frames.

        ``h`` (N, D): backbone state *before* each frame; ``codes`` (N, K): the frame's codes.
        Returns logits (N, K-1, V) for codebooks 1..K-1: position i of the decoder sequence
        ``[h, e_0, ..., e_{K-2}]`` predicts codebook i.
        """
        K = self.cfg.n_codebooks
        embeds = torch.stack([self.embed_audio(k, codes[:, k]) for k in range(K - 1)], dim=1)  # (N, K-1, D)
        seq = self.projection(torch.cat([h[:, None], embeds], dim=1))  # (N, K, Dd)
        out = self.decoder(seq)[:, 1:]  # (N, K-1, Dd)
        return torch.einsum("nkd,kdv->nkv", out, self.audio_head)

    # --- training ---------------------------------------------------------------------------
    def audio_targets(self, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` (B, S, K+1) -> (B, S-1) True where position t+1 is an audio frame, predicted from h_t."""
        return mask[:, 1:, : self.cfg.n_codebooks].all(-1)

    def decoder_frames(self, n_audio: int, fraction: float | None = None) -> int:
        """How many of ``n_audio`` target frames train the audio decoder (compute amortization)."""
        return max(1, round((self.cfg.decoder_fraction if fraction is None else fraction) * n_audio))

    def hidden(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The backbone over a whole sequence's embeddings ``x`` (B, S, D) -> (B, S, D); ``mask`` (B, S, K+1)."""
        return self.backbone(x, padding_mask=mask.any(-1))

    def forward(self, frames: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
                decoder_fraction: float | None = None) -> dict:
        """Losses for a batch of sequences.

        A position t+1 that is an audio frame (all K codebook columns present) is a target: its
        codebook 0 is predicted from the backbone state at t, and — for a random
        ``decoder_fraction`` (default ``cfg.decoder_fraction``) of these frames — codebooks
        1..K-1 by the audio decoder. Returns ``loss`` (c0 + decoder), ``c0_loss``,
        ``decoder_loss`` (means over their frames), the frame counts, the backbone's states
        ``hidden`` (B, S, D) and ``targets`` (B, S-1) (training-only losses build on them: ``alignment.py``).
        """
        K = self.cfg.n_codebooks
        x = self.embed_frames(frames, mask)  # (B, S, D)
        if self.training and self.cfg.audio_dropout > 0:
            is_audio = mask[..., :K].all(-1, keepdim=True)  # (B, S, 1)
            x = torch.where(is_audio, F.dropout(x, self.cfg.audio_dropout, training=True), x)
        h = self.hidden(x, mask)  # (B, S, D)
        target = self.audio_targets(mask)  # (B, S-1)
        h_prev, codes = h[:, :-1][target], frames[:, 1:, :K][target]  # (N, D), (N, K)
        if len(codes) == 0:
            raise ValueError("the batch holds no audio frame after the first position: nothing to predict")
        c0_loss = F.cross_entropy(self.codebook0_head(h_prev).float(), codes[:, 0])
        n_dec = self.decoder_frames(len(codes), decoder_fraction)
        pick = torch.randperm(len(codes), generator=generator, device="cpu")[:n_dec].to(codes.device)
        dec_logits = self.decoder_logits(h_prev[pick], codes[pick])  # (n_dec, K-1, V)
        dec_loss = F.cross_entropy(dec_logits.reshape(-1, self.cfg.audio_vocab_size).float(),
                                   codes[pick, 1:].reshape(-1))
        return {"loss": c0_loss + dec_loss, "c0_loss": c0_loss, "decoder_loss": dec_loss,
                "audio_frames": len(codes), "decoder_frames": n_dec, "hidden": h, "targets": target}

    # --- generation -------------------------------------------------------------------------
    @torch.no_grad()
    def generate_frame(self, frames: torch.Tensor, mask: torch.Tensor, cache: KVCache | None = None,
                       temperature: float = 0.9, topk: int = 50,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """The next audio frame's K codes ``(B, K)`` after the positions ``frames``/``mask`` (B, S, K+1).

        With a backbone ``cache`` only the new positions are passed (the cache holds the rest).
        Codebook 0 comes from the backbone's last state; codebooks 1..K-1 from the audio decoder,
        one at a time, each fed the embedding of the code just sampled (its own KV cache, reset
        per frame). ``temperature=0`` is greedy decoding.
        """
        h = self.backbone(self.embed_frames(frames, mask), cache=cache)[:, -1]  # (B, D)
        return self.sample_frame(h, temperature, topk, generator)

    @torch.no_grad()
    def sample_frame(self, h: torch.Tensor, temperature: float = 0.9, topk: int = 50,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """A frame's K codes ``(B, K)`` from the backbone's last state ``h`` (B, D): codebook 0 from the
        head, codebooks 1..K-1 from the audio decoder."""
        codes = [sample_topk(self.codebook0_head(h), temperature, topk, generator)]
        dec_cache = KVCache(self.cfg.decoder, h.shape[0], max_len=self.cfg.n_codebooks,
                            dtype=h.dtype, device=h.device)
        x = self.projection(torch.stack([h, self.embed_audio(0, codes[0])], dim=1))  # (B, 2, Dd)
        for k in range(1, self.cfg.n_codebooks):
            out = self.decoder(x, cache=dec_cache)[:, -1]  # (B, Dd)
            codes.append(sample_topk(out @ self.audio_head[k - 1], temperature, topk, generator))
            x = self.projection(self.embed_audio(k, codes[-1]))[:, None]  # (B, 1, Dd)
        return torch.stack(codes, dim=1)

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts: backbone, decoder, embeddings, heads (incl. projection), total."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        parts = {"backbone": count(self.backbone), "decoder": count(self.decoder),
                 "embeddings": count(self.text_embeddings) + count(self.audio_embeddings),
                 "heads": count(self.codebook0_head) + self.audio_head.numel() + count(self.projection)}
        parts["total"] = sum(parts.values())
        return parts


def sample_topk(logits: torch.Tensor, temperature: float, topk: int,
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Sample ``(B, V)`` logits among the ``topk`` largest at ``temperature`` -> ``(B,)``; greedy if 0.

    ``noise`` ``(B, min(topk, V))``: Exp(1) draws made beforehand, to sample with instead of drawing
    here (a compiled graph then need not stop at the draw). ``torch.multinomial`` picks one index
    exactly so, argmax(p / q) with q ~ Exp(1) (the Gumbel-max trick, exponentiated): the same
    draws give the same codes (``tests/test_model.py``).
    """
    if temperature == 0:
        return logits.argmax(-1)
    values, idx = logits.float().div(temperature).topk(min(topk, logits.shape[-1]), dim=-1)
    if noise is None:
        choice = torch.multinomial(values.softmax(-1), 1, generator=generator)  # (B, 1)
    else:
        choice = (values.softmax(-1) / noise).argmax(-1, keepdim=True)
    return idx.gather(-1, choice)[:, 0]
