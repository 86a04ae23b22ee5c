"""VALL-E-style text-to-speech (Wang et al., 2023): codebook 0 autoregressively over the whole
utterance, then each further codebook in one non-autoregressive pass over the whole utterance.

    text ─▶ AR  (token_lm.TokenLM): c0_1, c0_2, ..., c0_N, END        N sequential steps
         ─▶ NAR pass 1: text + e(c0)          -> c1 of all N frames    \
         ─▶ NAR pass 2: text + e(c0) + e(c1)  -> c2 of all N frames     } K-1 passes, each over N
         ─▶ ...                                                          /
         ─▶ codec.decode(all K codebooks of all N frames) -> the first sample

**Staging is the lesson**: the first audio sample needs every step above. Pass k needs codebook
k-1 of *every* frame, so nothing can be played until the autoregressive stage has reached the end
of the utterance. Its latency grows with the length of the reply; CSM's does not.

The NAR model is a bidirectional transformer: each frame position's input is the sum of the
embeddings of the codebooks known so far plus an embedding of the pass number; text positions
come first. (Our variant reads no acoustic prompt: it conditions on the text and its
``[speaker]`` prefix only, as the other systems of the table do.)

Shapes: B batch, P text positions, N frames, K codebooks, V codes per codebook, D width.

Explained in chapter 09 (``notebooks/09_latency_table.ipynb``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from csm_lib.backbone import Transformer, TransformerConfig
from csm_lib.baselines.token_lm import TokenLM, TokenLMConfig
from csm_lib.model import sample_topk


@dataclass
class VallEConfig:
    ar: TransformerConfig = field(default_factory=TransformerConfig)
    nar: TransformerConfig = field(default_factory=TransformerConfig)
    n_codebooks: int = 8  # K
    audio_vocab_size: int = 1024  # V
    text_vocab_size: int = 72


class NARDecoder(nn.Module):
    """Codebook k of every frame from the text and codebooks 0..k-1 of every frame, in one pass."""

    def __init__(self, cfg: VallEConfig):
        super().__init__()
        self.cfg = cfg
        K, V, D = cfg.n_codebooks, cfg.audio_vocab_size, cfg.nar.dim
        self.text_embeddings = nn.Embedding(cfg.text_vocab_size, D)
        self.audio_embeddings = nn.Embedding(K * V, D)  # codebook k's codes at k*V ...
        self.stage_embeddings = nn.Embedding(K, D)  # which codebook this pass predicts
        self.body = Transformer(cfg.nar)
        self.heads = nn.Parameter(torch.empty(K - 1, D, V))  # codebooks 1..K-1
        nn.init.normal_(self.heads, std=D ** -0.5)

    def logits(self, text: torch.Tensor, codes: torch.Tensor, stage: torch.Tensor,
               valid: torch.Tensor | None = None) -> torch.Tensor:
        """``text`` (B, P), ``codes`` (B, K, N) (only codebooks < stage are read), ``stage`` (B,) in 1..K-1
        -> logits of codebook ``stage`` at every frame (B, N, V). ``valid`` (B, P+N): False at padding."""
        K, V = self.cfg.n_codebooks, self.cfg.audio_vocab_size
        known = (torch.arange(K, device=codes.device)[None] < stage[:, None])  # (B, K)
        offsets = torch.arange(K, device=codes.device)[None, :, None] * V
        e = self.audio_embeddings(codes + offsets) * known[:, :, None, None]  # (B, K, N, D)
        x = torch.cat([self.text_embeddings(text), e.sum(1)], dim=1)  # (B, P+N, D)
        x = x + self.stage_embeddings(stage)[:, None]
        h = self.body(x, padding_mask=valid, causal=False)[:, text.shape[1]:]  # (B, N, D)
        return torch.einsum("bnd,bdv->bnv", h, self.heads[stage - 1])

    def forward(self, text: torch.Tensor, text_len: torch.Tensor, codes: torch.Tensor, n_frames: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Loss of one random pass per row. ``text`` (B, P) is *left*-padded (row b's ``text_len[b]``
        tokens end at P-1, right against its frames, as at generation); ``codes`` (B, K, N) are
        right-padded after ``n_frames``."""
        B, P = text.shape
        N = codes.shape[2]
        stage = torch.randint(1, self.cfg.n_codebooks, (B,), generator=generator).to(codes.device)
        pos = torch.arange(P + N, device=codes.device)[None]
        valid = torch.where(pos < P, pos >= P - text_len[:, None], pos - P < n_frames[:, None])  # (B, P+N)
        logits = self.logits(text, codes, stage, valid)  # (B, N, V)
        target = codes.gather(1, stage[:, None, None].expand(B, 1, N))[:, 0]  # (B, N)
        use = torch.arange(N, device=codes.device)[None] < n_frames[:, None]
        return F.cross_entropy(logits[use].float(), target[use])

    @torch.inference_mode()
    def fill(self, text: torch.Tensor, c0: torch.Tensor, temperature: float = 0.0, topk: int = 50,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """``text`` (1, P), codebook 0 ``(N,)`` -> all codes ``(1, K, N)``: K-1 passes, each over all frames."""
        K, N = self.cfg.n_codebooks, len(c0)
        codes = torch.zeros(1, K, N, dtype=torch.long, device=c0.device)
        codes[0, 0] = c0
        for k in range(1, K):
            logits = self.logits(text, codes, torch.tensor([k], device=c0.device))[0]  # (N, V)
            codes[0, k] = sample_topk(logits, temperature, topk, generator)
        return codes


class VallE(nn.Module):
    """The two stages together: ``ar`` (text -> codebook 0) and ``nar`` (-> codebooks 1..K-1)."""

    def __init__(self, cfg: VallEConfig):
        super().__init__()
        self.cfg = cfg
        self.ar = TokenLM(TokenLMConfig(cfg.ar, cfg.text_vocab_size, cfg.audio_vocab_size))
        self.nar = NARDecoder(cfg)

    def codes(self, text: torch.Tensor, n_frames: int, temperature: float = 0.9, topk: int = 50,
              seed: int | None = None, stop_at_end: bool = True) -> torch.Tensor:
        """Text ids (1, P) -> the whole utterance's codes (1, K, n <= n_frames): AR stage, then NAR passes."""
        g = torch.Generator(device=text.device).manual_seed(seed) if seed is not None else None
        c0 = self.ar.generate(text, n_frames, temperature, topk, g, stop_at_end)  # (n,)
        if len(c0) == 0:
            return torch.zeros(1, self.cfg.n_codebooks, 0, dtype=torch.long, device=text.device)
        return self.nar.fill(text, c0, 0.0 if temperature == 0 else temperature, topk, g)

    def num_parameters(self) -> dict[str, int]:
        parts = {"ar": self.ar.num_parameters(), "nar": sum(p.numel() for p in self.nar.parameters())}
        parts["total"] = sum(parts.values())
        return parts
