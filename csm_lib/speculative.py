"""Speculative decoding for CSM: guess several frames, check them all in one backbone pass.

At batch 1 every generated frame costs a backbone pass over one position plus K-1 audio-decoder
steps, and on most hardware those passes are bound by reading the weights, not by arithmetic:
a pass over d positions costs little more than a pass over one. Speculative decoding exploits
that. A cheap *draft* proposes the next d frames; one backbone pass over them gives the states
before each, one teacher-forced audio-decoder pass (batch d) gives every codebook's logits, and
the longest prefix the model agrees with is kept. At the first disagreement the model's own
choice replaces the draft's, and the frame's later codebooks are decoded as usual.

**The draft here is n-gram lookup** ("prompt lookup decoding"): find the last time the
codebook-0 codes of the latest ``ngram`` frames occurred in the conversation so far (context
and reply), and propose the ``d`` frames that followed. It costs nothing to run and is exact
where audio repeats itself (the seed's "common phrases"); it proposes nothing when no match exists.

**Agreement.** Greedy: a drafted code is kept if it is the argmax, so the codes equal plain greedy
decoding (up to float rounding between the batched and the one-position passes). Sampled: a code
``x`` drafted with certainty is kept with probability ``p(x)`` and otherwise replaced by a draw
from ``p`` without ``x``, renormalised, which leaves every code distributed exactly as ``p``
(Leviathan et al., 2023, with a one-hot draft); the random numbers differ from plain sampling, so
the codes do too.

Shapes: K codebooks, V codes per codebook, d drafted frames, D backbone width.

Explained in chapter 08 (``notebooks/08_inference.ipynb``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from csm_lib import frames as Fr
from csm_lib.backbone import KVCache
from csm_lib.inference import FastCSM, LayerCache


def draft_frames(history: list[torch.Tensor], ngram: int, d: int) -> list[torch.Tensor]:
    """Up to ``d`` frames (each (K,)) that followed the latest earlier match of the last ``ngram``
    frames' codebook-0 codes in ``history``; none if there is no match."""
    if d < 1 or len(history) <= ngram:
        return []
    c0 = [int(f[0]) for f in history]
    key = c0[-ngram:]
    for j in range(len(c0) - ngram - 1, -1, -1):  # most recent first
        if c0[j:j + ngram] == key:
            return history[j + ngram: j + ngram + d]
    return []


def distribution(logits: torch.Tensor, temperature: float, topk: int) -> torch.Tensor:
    """``model.sample_topk``'s distribution over codes (V,): softmax of the top-k logits at ``temperature``."""
    values, idx = logits.float().div(temperature).topk(min(topk, logits.shape[-1]))
    return torch.zeros(logits.shape[-1]).scatter_(0, idx, values.softmax(-1))


def agree(logits: torch.Tensor, x: int, temperature: float, topk: int,
          generator: torch.Generator | None) -> tuple[bool, int]:
    """Keep drafted code ``x`` or replace it: (kept, code). Greedy: kept if it is the argmax."""
    if temperature == 0:
        best = int(logits.argmax())
        return best == x, best
    p = distribution(logits, temperature, topk)
    if torch.rand((), generator=generator) < p[x]:
        return True, x
    p[x] = 0
    return False, int(torch.multinomial(p / p.sum(), 1, generator=generator))


@torch.inference_mode()
def verify(fast: FastCSM, h: torch.Tensor, cache: LayerCache, draft: list[torch.Tensor], temperature: float, topk: int,
           generator: torch.Generator | None) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor]:
    """Check ``draft`` (d frames, (K,) each) after backbone state ``h`` (1, D), whose frames are in ``cache``.

    Returns the kept frames, the corrected frame that replaces the first rejected one (or None),
    and the state after the last frame in the cache: after the kept frames, which the cache now
    holds (the corrected frame is not in it yet).
    """
    K = fast.cfg.n_codebooks
    drafted = torch.stack(draft)  # (d, K)
    start = cache.length
    x = fast.audio_table[drafted + fast.offsets].sum(1)[None]  # (1, d, D)
    states = torch.cat([h, fast.backbone(x, cache, fast.attention, last_only=False)[0]])  # (d+1, D): before each
    d = len(draft)
    dec_in = torch.cat([fast.projection(states[:d])[:, None],  # the decoder's inputs, teacher-forced (d, K, Dd)
                        fast.decoder_table[drafted[:, :K - 1] + fast.offsets[:K - 1]]], dim=1)
    out = fast.decoder(dec_in, KVCache(fast.cfg.decoder, d, K, dtype=h.dtype), fast.attention, last_only=False)
    logits = torch.stack([fast.codebook0_head(states[:d])]
                         + [out[:, k] @ fast.audio_head[k - 1] for k in range(1, K)], dim=1)  # (d, K, V)
    for i in range(d):
        for k in range(K):
            kept, code = agree(logits[i, k], int(drafted[i, k]), temperature, topk, generator)
            if not kept:
                prefix = torch.cat([drafted[i, :k], torch.tensor([code])])[None]
                fixed = fast.frame(states[i:i + 1], temperature, topk, generator, prefix=prefix)
                cache.length = start + i  # forget the rejected frames
                return [drafted[j][None] for j in range(i)], fixed, states[i:i + 1]
    return [drafted[j][None] for j in range(d)], None, states[d:]


@torch.inference_mode()
def speculative_frames(fast: FastCSM, frames: torch.Tensor, mask: torch.Tensor, max_frames: int,
                       temperature: float = 0.9, topk: int = 50, seed: int | None = None, draft: int = 4,
                       ngram: int = 2, stats: dict | None = None) -> Iterator[torch.Tensor]:
    """``Generator.frames`` with speculative decoding: frames (1, K) after the prompt ``frames``/``mask``
    (1, S, K+1), until end of speech or ``max_frames``. ``draft=0`` is plain decoding. ``stats`` (a
    dict) receives the drafted and kept frame counts and the number of verification passes."""
    K = fast.cfg.n_codebooks
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    cache = fast.new_cache(1, frames.shape[1] + max_frames + draft)
    h = fast.prefill(frames, mask, cache)
    history = list(frames[0, mask[0, :, :K].all(-1), :K])  # the context's frames, (K,) each
    counts = {"drafted": 0, "kept": 0, "verify_passes": 0, "plain_steps": 0}
    pending, n = None, 0
    while n < max_frames:
        if pending is not None:
            h = fast.feed(pending, cache)
        proposal = draft_frames(history, ngram, min(draft, max_frames - n))
        if proposal:
            kept, fixed, h = verify(fast, h, cache, proposal, temperature, topk, generator)
            counts["verify_passes"] += 1
            counts["drafted"] += len(proposal)
            counts["kept"] += len(kept)
            new, pending = (kept + [fixed], fixed) if fixed is not None else (kept, None)
        else:
            counts["plain_steps"] += 1
            pending = fast.frame(h, temperature, topk, generator)
            new = [pending]
        for codes in new:
            if Fr.is_end_of_speech(codes).item() or n >= max_frames:
                n = max_frames
                break
            history.append(codes[0])
            n += 1
            yield codes
    if stats is not None:
        stats.update(counts, acceptance=round(counts["kept"] / counts["drafted"], 4) if counts["drafted"] else None)
