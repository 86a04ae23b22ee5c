"""How a conversation becomes the backbone's input: text and audio turns laid out as frames.

Each position of the sequence is a frame of ``K + 1`` columns (K audio codebooks, then one text
column) with a mask of the columns present (``model.py``). A turn — a *segment* — is laid out
as Sesame's reference generator does:

    [<bos>][[spk]][t1][t2]...[<eos>]  [a_1][a_2]...[a_F][EOS frame]
     text positions: text column only  audio positions: K codebooks only

The text of the turn is tokenized as ``[speaker]text`` (``text.py``); its audio as the codec's
codes ``(K, F)``, followed by one **end-of-speech frame** of all-zero codes, which is what the
generator learns to emit when a turn is over. A conversation is its segments one after another;
the turn to generate is its text alone, and the model continues with audio frames.

Shapes: S positions, K codebooks, F codec frames, B batch.

Explained in chapter 06 (``notebooks/06_context_and_memory.ipynb``).
"""

from __future__ import annotations

import torch


def text_frames(tokens: list[int], n_codebooks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids -> frames and mask ``(S, K+1)`` holding them in the text column."""
    frames = torch.zeros(len(tokens), n_codebooks + 1, dtype=torch.long)
    mask = torch.zeros_like(frames, dtype=torch.bool)
    frames[:, -1] = torch.tensor(tokens, dtype=torch.long)
    mask[:, -1] = True
    return frames, mask


def audio_frames(codes: torch.Tensor, end_of_speech: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Codec codes ``(K, F)`` -> frames and mask ``(F (+1), K+1)`` in the audio columns.

    With ``end_of_speech`` an all-zero frame is appended: the turn is over.
    """
    if codes.dim() != 2:
        raise ValueError(f"codes must be (K, F), got {tuple(codes.shape)}")
    K = codes.shape[0]
    codes = codes.T.long()  # (F, K)
    if end_of_speech:
        codes = torch.cat([codes, torch.zeros(1, K, dtype=torch.long)])
    frames = torch.cat([codes, torch.zeros(len(codes), 1, dtype=torch.long)], dim=1)
    mask = torch.zeros_like(frames, dtype=torch.bool)
    mask[:, :K] = True
    return frames, mask


def is_end_of_speech(codes: torch.Tensor) -> torch.Tensor:
    """``(..., K)`` codes -> ``(...)`` True where the frame is the end-of-speech frame."""
    return (codes == 0).all(-1)


def audio_runs(frames: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """The audio a sequence ``(S, K+1)`` holds, as codes ``(K, F_i)`` per turn (end-of-speech frames dropped).

    A turn's audio is a run of consecutive audio positions; text positions and end-of-speech
    frames separate the runs. Decoding each with the codec plays what the backbone reads.
    """
    K = frames.shape[1] - 1
    speech = mask[:, :K].all(-1) & ~is_end_of_speech(frames[:, :K])  # (S,)
    runs, start = [], None
    for i, s in enumerate([*speech.tolist(), False]):
        if s and start is None:
            start = i
        elif not s and start is not None:
            runs.append(frames[start:i, :K].T)
            start = None
    return runs


def concat(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Join ``(frames, mask)`` pieces along the positions."""
    return torch.cat([f for f, _ in parts]), torch.cat([m for _, m in parts])


def pad_batch(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad sequences of ``(S_i, K+1)`` to ``(B, max S_i, K+1)``; padded positions have an all-False mask."""
    S = max(len(f) for f, _ in items)
    frames = torch.zeros(len(items), S, items[0][0].shape[1], dtype=torch.long)
    mask = torch.zeros_like(frames, dtype=torch.bool)
    for i, (f, m) in enumerate(items):
        frames[i, : len(f)], mask[i, : len(m)] = f, m
    return frames, mask
