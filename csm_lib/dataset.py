"""Training data for CSM: corpus -> codec tokens (cached) -> conversation windows -> padded batches.

1. Every turn of the corpus is encoded once by the codec (after ``audio.normalize_loudness``, as
   the codec expects) and its codes ``(K, F)`` cached in ``<corpus>/codes-<codec fingerprint>.npz``;
   a different codec checkpoint gets a different cache file, never a stale one.
2. Each turn becomes its frames (``frames.py``): ``<bos>[speaker]text<eos>``, the audio frames,
   an end-of-speech frame.
3. A training window starts at some turn of a conversation and takes that turn and the turns
   after it while they fit ``max_len`` positions. So every audio frame is trained with whatever
   conversation precedes it inside the window: the first turn with none, later turns with context.
   (A turn longer than the window alone is cut at ``max_len``.)
4. A batch is a list of windows, right-padded (``frames.pad_batch``); padded positions have an
   all-False mask and are neither attended to nor predicted.

Which windows make step ``s``'s batch is a pure function of ``(seed, s)``: a run resumed from a
checkpoint, or split over several processes, sees exactly the batches an uninterrupted run sees.

Explained in chapter 07 (``notebooks/07_training.ipynb``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from csm_lib import audio as A
from csm_lib import checkpoint
from csm_lib import frames as Fr
from csm_lib.checkpoint import fingerprint
from csm_lib.codec import Codec
from csm_lib.progress import progress
from csm_lib.text import AnyTokenizer


@torch.no_grad()
def encode_corpus(folder: str | Path, rows: list[dict], codec: Codec, codec_id: str) -> dict[str, np.ndarray]:
    """Codes ``(K, F)`` int16 of every row's audio, keyed by the wav's stem; computed once, then cached."""
    def encode() -> dict[str, np.ndarray]:
        codes = {}
        for r in progress(rows, desc="encoding corpus"):
            wav = A.normalize_loudness(A.load(r["wav"])[0])
            codes[Path(r["wav"]).stem] = codec.encode(wav[None])[0].numpy().astype(np.int16)
        return codes

    stems = [Path(r["wav"]).stem for r in rows]
    return checkpoint.cached_npz(Path(folder) / f"codes-{codec_id}.npz", stems, encode)


@dataclass
class Turn:
    conversation: str
    turn: int
    speaker: int
    text: str
    frames: torch.Tensor  # (S, K+1): text positions, audio frames, end of speech
    mask: torch.Tensor  # (S, K+1)
    row: dict  # the manifest row (wav path, style, ...)


def tokenize_turns(rows: list[dict], codes: dict[str, np.ndarray], tokenizer: AnyTokenizer) -> list[Turn]:
    """Manifest rows and their codes -> ``Turn``s with their frames, in conversation order."""
    turns = []
    rows = sorted(rows, key=lambda r: (r["conversation"], r["turn"]))
    ids = tokenizer.encode_many([(r["text"], r["speaker"]) for r in rows])
    for r, text_ids in zip(rows, ids, strict=True):
        c = torch.from_numpy(codes[Path(r["wav"]).stem].astype(np.int64))  # (K, F)
        text = Fr.text_frames(text_ids, c.shape[0])
        f, m = Fr.concat([text, Fr.audio_frames(c)])
        turns.append(Turn(r["conversation"], r["turn"], r["speaker"], r["text"], f, m, r))
    return turns


def split_windows(folder: str | Path, rows: list[dict], codec: Codec, codec_path: str | Path,
                  tokenizer: AnyTokenizer, max_len: int) -> dict[str, ConversationWindows]:
    """The corpus's train and valid turns, encoded (cached) and cut into windows of ``max_len`` positions."""
    codes = encode_corpus(folder, rows, codec, fingerprint(codec_path))
    return {split: ConversationWindows(tokenize_turns([r for r in rows if r["split"] == split], codes, tokenizer),
                                       max_len) for split in ("train", "valid")}


class ConversationWindows:
    """Windows of consecutive turns, at most ``max_len`` positions; one window per starting turn."""

    def __init__(self, turns: list[Turn], max_len: int):
        if max_len < 2:
            raise ValueError(f"max_len must be at least 2 positions, got {max_len}")
        self.max_len = max_len
        self.conversations: list[list[Turn]] = []
        for t in turns:
            if not self.conversations or self.conversations[-1][0].conversation != t.conversation:
                self.conversations.append([])
            self.conversations[-1].append(t)
        self.starts = [(c, i) for c, conv in enumerate(self.conversations) for i in range(len(conv))]
        if not self.starts:
            raise ValueError("no turns to make windows from")

    def __len__(self) -> int:
        return len(self.starts)

    def window(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Window ``index``: frames and mask ``(S <= max_len, K+1)``."""
        c, i = self.starts[index]
        parts, used = [], 0
        for t in self.conversations[c][i:]:
            if used + len(t.frames) > self.max_len:
                break
            parts.append((t.frames, t.mask))
            used += len(t.frames)
        if not parts:  # the first turn alone is longer than the window: cut it
            t = self.conversations[c][i]
            parts = [(t.frames[: self.max_len], t.mask[: self.max_len])]
        return Fr.concat(parts)

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows ``indices`` right-padded: frames and mask ``(B, S, K+1)``."""
        return Fr.pad_batch([self.window(i) for i in indices])

    def step_indices(self, step: int, batch_size: int, seed: int) -> list[int]:
        """The windows of training step ``step``: a pure function of ``(seed, step)``."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return torch.randint(len(self), (batch_size,), generator=g).tolist()
