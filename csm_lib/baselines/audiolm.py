"""AudioLM-style text-to-speech (Borsos et al., 2023; text-conditioned as in SPEAR-TTS): three
autoregressive stages, each over the *whole* utterance, each conditioned on the one before.

    text ─▶ semantic: c0_1 ... c0_N, END                                 N steps
         ─▶ coarse:   [c0_1..c0_N] -> c1_1 c2_1 c3_1 c1_2 c2_2 ...       3N steps (codebooks 1-3, flattened)
         ─▶ fine:     [c1..c3 flattened] -> c4_1 c5_1 c6_1 c7_1 c4_2 ... 4N steps (codebooks 4-7, flattened)
         ─▶ codec.decode(all N frames) -> the first sample

**Staging is the lesson**: every stage reads the previous stage's tokens of the whole utterance,
so the first sample waits for N + 3N + 4N = 8N sequential steps (for K = 8), against CSM's one
backbone step and K-1 decoder steps. Flattening makes the sequence long (the fine stage reads 3N
and writes 4N tokens), which is why AudioLM splits audio into windows; at our reply lengths
(< 20 s, N <= 250) one window holds it.

Each stage is a ``token_lm.TokenLM``; codebook 0 is our codec's semantic codebook (chapter 03),
so the semantic stage writes what AudioLM's w2v-BERT tokens would carry.

Shapes: P text positions, N frames, K codebooks (8), V codes per codebook.

Explained in chapter 09 (``notebooks/09_latency_table.ipynb``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from csm_lib.backbone import TransformerConfig
from csm_lib.baselines.token_lm import TokenLM, TokenLMConfig

COARSE = (1, 2, 3)  # codebooks of the coarse acoustic stage
FINE = (4, 5, 6, 7)  # codebooks of the fine acoustic stage


@dataclass
class AudioLMConfig:
    semantic: TransformerConfig = field(default_factory=TransformerConfig)
    coarse: TransformerConfig = field(default_factory=TransformerConfig)
    fine: TransformerConfig = field(default_factory=TransformerConfig)
    n_codebooks: int = 8
    audio_vocab_size: int = 1024
    text_vocab_size: int = 72

    def __post_init__(self) -> None:
        if self.n_codebooks != 1 + len(COARSE) + len(FINE):
            raise ValueError(f"the AudioLM staging here is 1 + {len(COARSE)} + {len(FINE)} codebooks, "
                             f"got n_codebooks={self.n_codebooks}")


def flatten(codes: torch.Tensor) -> torch.Tensor:
    """Codes ``(k, N)`` of k codebooks -> ``(k*N,)`` frame by frame: frame 1's k codes, frame 2's, ..."""
    return codes.T.reshape(-1)


def unflatten(flat: torch.Tensor, k: int) -> torch.Tensor:
    """``(k*N,)`` -> ``(k, N)``, the inverse of ``flatten``."""
    return flat.reshape(-1, k).T


class AudioLM(nn.Module):
    def __init__(self, cfg: AudioLMConfig):
        super().__init__()
        self.cfg = cfg
        V, nc, nf = cfg.audio_vocab_size, len(COARSE), len(FINE)
        self.semantic = TokenLM(TokenLMConfig(cfg.semantic, cfg.text_vocab_size, V))
        self.coarse = TokenLM(TokenLMConfig(cfg.coarse, V, V, period=nc))  # reads c0
        self.fine = TokenLM(TokenLMConfig(cfg.fine, nc * V, V, period=nf))  # reads c1..c3, flattened

    def coarse_prefix(self, codes: torch.Tensor) -> torch.Tensor:
        """The fine stage's prefix: codebooks 1-3 ``(3, N)`` flattened with their codebook offsets."""
        return self.coarse.flat_ids(flatten(codes))

    @torch.inference_mode()
    def codes(self, text: torch.Tensor, n_frames: int, temperature: float = 0.9, topk: int = 50,
              seed: int | None = None, stop_at_end: bool = True) -> torch.Tensor:
        """Text ids (1, P) -> the whole utterance's codes ``(1, K, n <= n_frames)``, stage after stage."""
        g = torch.Generator(device=text.device).manual_seed(seed) if seed is not None else None
        c0 = self.semantic.generate(text, n_frames, temperature, topk, g, stop_at_end)  # (N,)
        N = len(c0)
        if N == 0:
            return torch.zeros(1, self.cfg.n_codebooks, 0, dtype=torch.long, device=text.device)
        coarse = self.coarse.generate(c0[None], len(COARSE) * N, temperature, topk, g, stop_at_end=False)
        coarse = unflatten(coarse, len(COARSE))  # (3, N)
        fine = self.fine.generate(self.coarse_prefix(coarse)[None], len(FINE) * N, temperature, topk, g,
                                  stop_at_end=False)
        return torch.cat([c0[None], coarse, unflatten(fine, len(FINE))])[None]  # (1, K, N)

    def num_parameters(self) -> dict[str, int]:
        parts = {name: getattr(self, name).num_parameters() for name in ("semantic", "coarse", "fine")}
        parts["total"] = sum(parts.values())
        return parts
