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

With the corpus's alignments (``aligned=True``, ``alignment.py``) every turn also carries, for each
of its audio positions, the position of the text token being spoken. A training batch may
*regroup* a share of its windows (``regroup``): the other speaker's turns after the first are
dropped at random, so a speaker talks twice or more in a row, or alone: the voice must follow the
speaker id, not the turn order (the corpus's conversations always alternate).

Which windows make step ``s``'s batch is a pure function of ``(seed, s)``: a run resumed from a
checkpoint, or split over several processes, sees exactly the batches an uninterrupted run sees.

Explained in chapter 07a (``notebooks/07a_training.ipynb``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from csm_lib import audio as A
from csm_lib import checkpoint, data
from csm_lib import frames as Fr
from csm_lib.alignment import frame_alignment
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
    align: torch.Tensor | None = None  # (S,): an audio position's aligned text position in the turn, else -1


def turn_alignment(phones: list[tuple[str, float]], tokens: list[str], n_frames: int) -> torch.Tensor:
    """A turn's ``(S,)`` alignment: -1 on its text positions, then each audio frame's aligned text
    position (``alignment.frame_alignment``), then ``<eos>``'s for the end-of-speech frame."""
    speech = frame_alignment(phones, tokens, n_frames)
    return torch.tensor([-1] * len(tokens) + speech + [len(tokens) - 1])


def tokenize_turns(rows: list[dict], codes: dict[str, np.ndarray], tokenizer: AnyTokenizer,
                   phones: dict[str, list[tuple[str, float]]] | None = None) -> list[Turn]:
    """Manifest rows and their codes -> ``Turn``s with their frames, in conversation order.

    With ``phones`` (``data.alignments``; a ``PhoneTokenizer`` only) each turn gets its alignment."""
    if phones is not None and not hasattr(tokenizer, "tokens"):
        raise ValueError("alignments are made for phone tokens: use text_input=phones")
    turns = []
    rows = sorted(rows, key=lambda r: (r["conversation"], r["turn"]))
    ids = tokenizer.encode_many([(r["text"], r["speaker"]) for r in rows])
    for r, text_ids in zip(rows, ids, strict=True):
        stem = Path(r["wav"]).stem
        c = torch.from_numpy(codes[stem].astype(np.int64))  # (K, F)
        text = Fr.text_frames(text_ids, c.shape[0])
        f, m = Fr.concat([text, Fr.audio_frames(c)])
        align = None if phones is None else turn_alignment(phones[stem], [tokenizer.tokens[i] for i in text_ids],
                                                           c.shape[1])
        turns.append(Turn(r["conversation"], r["turn"], r["speaker"], r["text"], f, m, r, align))
    return turns


def split_windows(folder: str | Path, rows: list[dict], codec: Codec, codec_path: str | Path,
                  tokenizer: AnyTokenizer, max_len: int, aligned: bool = False) -> dict[str, ConversationWindows]:
    """The corpus's train and valid turns, encoded (cached) and cut into windows of ``max_len`` positions.

    ``aligned``: each turn also carries its alignment (``data.alignments``)."""
    codes = encode_corpus(folder, rows, codec, fingerprint(codec_path))
    phones = data.alignments(folder) if aligned else None
    return {split: ConversationWindows(tokenize_turns([r for r in rows if r["split"] == split], codes, tokenizer,
                                                      phones), max_len) for split in ("train", "valid")}


def join_turns(turns: list[Turn]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Turns one after another: frames and mask ``(S, K+1)``, and the alignment ``(S,)`` with each turn's
    positions moved to where the turn starts (None unless every turn has one)."""
    frames, mask = Fr.concat([(t.frames, t.mask) for t in turns])
    if any(t.align is None for t in turns):
        return frames, mask, None
    starts = np.cumsum([0] + [len(t.frames) for t in turns[:-1]])
    align = torch.cat([torch.where(t.align >= 0, t.align + int(s), -1) for t, s in zip(turns, starts, strict=True)])
    return frames, mask, align


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

    def turns(self, index: int, regroup: torch.Generator | None = None) -> list[Turn]:
        """The turns of window ``index``: its first turn and those after it that fit ``max_len``.

        ``regroup``: each later turn of the other speaker is dropped with probability 1/2, drawn from it."""
        c, i = self.starts[index]
        first, out, used = self.conversations[c][i], [], 0
        for t in self.conversations[c][i:]:
            if regroup is not None and t.speaker != first.speaker and torch.rand(1, generator=regroup) < 0.5:
                continue
            if used + len(t.frames) > self.max_len:
                break
            out.append(t)
            used += len(t.frames)
        return out

    def window(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Window ``index``: frames and mask ``(S <= max_len, K+1)``."""
        c, i = self.starts[index]
        return self._join(self.turns(index), self.conversations[c][i])[:2]

    def _join(self, turns: list[Turn], first: Turn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if not turns:  # the first turn alone is longer than the window: cut it
            turns = [Turn(first.conversation, first.turn, first.speaker, first.text, first.frames[: self.max_len],
                          first.mask[: self.max_len], first.row,
                          None if first.align is None else first.align[: self.max_len])]
        return join_turns(turns)

    def training_batch(self, indices: list[int], regroup: float = 0.0, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Windows ``indices`` right-padded, a ``regroup`` share of them regrouped (module docstring):
        frames and mask ``(B, S, K+1)``, and the alignment ``(B, S)`` (-1 where none; None without one)."""
        items = []
        for index in indices:
            again = regroup > 0 and float(torch.rand(1, generator=generator)) < regroup
            c, i = self.starts[index]
            items.append(self._join(self.turns(index, generator if again else None), self.conversations[c][i]))
        frames, mask = Fr.pad_batch([(f, m) for f, m, _ in items])
        if any(a is None for _, _, a in items):
            return frames, mask, None
        align = torch.full(frames.shape[:2], -1, dtype=torch.long)
        for b, (_, _, a) in enumerate(items):
            align[b, : len(a)] = a
        return frames, mask, align

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows ``indices`` right-padded: frames and mask ``(B, S, K+1)``."""
        return Fr.pad_batch([self.window(i) for i in indices])

    def step_indices(self, step: int, batch_size: int, seed: int) -> list[int]:
        """The windows of training step ``step``: a pure function of ``(seed, step)``."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return torch.randint(len(self), (batch_size,), generator=g).tolist()
