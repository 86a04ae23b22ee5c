"""A decoder-only language model over one stream: a *prefix* it reads, then *targets* it writes.

This is the one building block of the latency table's baselines (chapter 09) and of its text LM:

* VALL-E's autoregressive stage and AudioLM's semantic stage: prefix = the turn's text tokens,
  targets = codebook 0 of every frame (``valle.py``, ``audiolm.py``);
* AudioLM's coarse and fine stages: prefix = the codes of the previous stage, targets = the next
  codebooks of every frame, *flattened* (frame 1's codebooks, then frame 2's, ...);
* the text LM of the full-turn column: prefix = the user's line, targets = the reply's characters.

    prefix (B, P) -> prefix_embeddings ┐
                                       ├─ one causal Transformer (backbone.py) -> head
    targets (B, N) -> target_embeddings┘

The hidden state at position p predicts the token at p+1: the last prefix position predicts
target 0, target i predicts target i+1, and the last target predicts ``END``.

Flattened targets cycle through ``period`` codebooks: target i belongs to codebook ``i % period``
and is a code of that codebook, so its id is ``(i % period) * codes + code`` and generation only
samples among that codebook's ``codes`` entries.

Shapes: B batch, P prefix positions, N target positions, D width, V target vocabulary (+ END).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from csm_lib.backbone import KVCache, Transformer, TransformerConfig
from csm_lib.model import sample_topk


@dataclass
class TokenLMConfig:
    body: TransformerConfig = field(default_factory=TransformerConfig)
    prefix_vocab: int = 1024
    codes: int = 1024  # entries per codebook (or the text vocabulary)
    period: int = 1  # codebooks the targets cycle through

    @property
    def target_vocab(self) -> int:
        return self.codes * self.period

    @property
    def end(self) -> int:
        """The id that ends the targets."""
        return self.target_vocab


class TokenLM(nn.Module):
    def __init__(self, cfg: TokenLMConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.body.dim
        self.prefix_embeddings = nn.Embedding(cfg.prefix_vocab, D)
        self.target_embeddings = nn.Embedding(cfg.target_vocab, D)
        self.body = Transformer(cfg.body)
        self.head = nn.Linear(D, cfg.target_vocab + 1, bias=False)  # + END

    def flat_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(..., N)`` of codebooks cycling every ``period`` -> target ids (offset by codebook)."""
        cb = torch.arange(codes.shape[-1], device=codes.device) % self.cfg.period
        return codes + cb * self.cfg.codes

    def forward(self, prefix: torch.Tensor, prefix_len: torch.Tensor, targets: torch.Tensor,
                target_len: torch.Tensor, end: bool = True) -> torch.Tensor:
        """Mean cross-entropy of the targets (and ``END`` after them if ``end``).

        ``prefix`` (B, P) right-padded, its lengths ``prefix_len`` (B,); ``targets`` (B, N) target
        ids, lengths ``target_len`` (B,). Each row is laid out ``prefix[:p] targets[:n]`` then padding.
        """
        B, P = prefix.shape
        N = targets.shape[1]
        S = P + N
        # row b: its prefix at 0..p-1, its targets at p..p+n-1 (a gather puts them side by side)
        pos = torch.arange(S, device=prefix.device)[None].expand(B, S)
        is_prefix = pos < prefix_len[:, None]
        ti = (pos - prefix_len[:, None]).clamp(0, N - 1)
        x = torch.where(is_prefix[..., None], self.prefix_embeddings(prefix.gather(1, pos.clamp(max=P - 1))),
                        self.target_embeddings(targets.gather(1, ti)))  # (B, S, D)
        valid = pos < (prefix_len + target_len)[:, None]
        h = self.body(x, padding_mask=valid)  # (B, S, D)
        # the position before target i is prefix_len + i - 1; END is predicted from the last target
        n_pred = target_len + int(end)
        i = torch.arange(N + 1, device=prefix.device)[None].expand(B, N + 1)
        use = i < n_pred[:, None]
        src = (prefix_len[:, None] + i - 1).clamp(max=S - 1)
        want = torch.where(i < target_len[:, None], torch.cat([targets, targets[:, :1]], 1), self.cfg.end)
        logits = self.head(h.gather(1, src[..., None].expand(-1, -1, h.shape[-1])))  # (B, N+1, V+1)
        return F.cross_entropy(logits[use].float(), want[use])

    @torch.inference_mode()
    def generate(self, prefix: torch.Tensor, max_targets: int, temperature: float = 0.9, topk: int = 50,
                 generator: torch.Generator | None = None, stop_at_end: bool = True,
                 on_target=None) -> torch.Tensor:
        """Targets after ``prefix`` (1, P), one step at a time with a KV cache -> codes ``(n,)``.

        Target i is drawn among codebook ``i % period``'s codes (and ``END`` if ``stop_at_end``)
        and returned as its code (the codebook offset removed). ``on_target(i, code)`` is called
        after each one (streaming consumers).
        """
        cfg = self.cfg
        cache = KVCache(cfg.body, 1, max_len=prefix.shape[1] + max_targets, device=prefix.device)
        h = self.body(self.prefix_embeddings(prefix), cache=cache)[:, -1]  # (1, D)
        out = []
        for i in range(max_targets):
            lo = (i % cfg.period) * cfg.codes
            logits = self.head(h)  # (1, V+1)
            allowed = logits[:, lo: lo + cfg.codes]
            if stop_at_end:
                allowed = torch.cat([allowed, logits[:, cfg.end:]], dim=-1)
            pick = sample_topk(allowed, temperature, topk, generator)  # (1,)
            if stop_at_end and pick.item() == cfg.codes:
                break
            out.append(pick)
            if on_target is not None:
                on_target(i, pick)
            if i + 1 < max_targets:
                h = self.body(self.target_embeddings(pick + lo)[:, None], cache=cache)[:, -1]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=prefix.device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
