"""The cascade of the seed's table, "Pipeline (LLM+TTS)": the reply's text is written first, then a
text-to-speech model speaks it *whole*, without the conversation.

    user audio ─▶ ASR ─▶ text LM writes the whole reply ─▶ TTS: all N frames ─▶ codec.decode(N frames)
                                                                               └▶ the first sample

Our TTS is the reference CSM itself, given no context turns: same weights, same fast path
(``Generator``), so the row differs from CSM's only in what the pipeline does: **no streaming**
(every frame is generated, then all are decoded in one call) and **no conversational context**
(it cannot hear how the conversation sounded, which is what chapter 10's quality table prices).

Staging: N sequential frames (each one backbone step and K-1 decoder steps), then one decode.

Explained in chapter 09 (``notebooks/09_latency_table.ipynb``).
"""

from __future__ import annotations

import torch

from csm_lib.generate import Generator


def speak(gen: Generator, text: str, speaker: int, n_frames: int, temperature: float = 0.9, topk: int = 50,
          seed: int | None = 0, stop_at_end: bool = True) -> torch.Tensor:
    """The whole reply's audio ``(T,)``: up to ``n_frames`` frames without context, then one decode."""
    codes = list(gen.frames(text, speaker, [], n_frames * gen.frame_ms, temperature, topk, seed, stop_at_end))
    return gen.decode(codes)
